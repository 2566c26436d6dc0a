"""Finding and connecting to the local P2P OS node, as the Rust client (``p2pos-client``) does.

Precedence, for each of gateway, token and data directory: the explicit argument, then the
environment (``P2POS_GATEWAY``, ``P2POS_TOKEN``, ``P2POS_DATA_DIR``), then the node's data
directory (default ``~/.local/share/p2pos``), which holds the gateway socket ``gateway.sock`` and
the admin token ``gateway.token``. The node refuses every call without a token, on the unix
socket too: without one given, the admin token is read from the token file (that of the data
directory, or the one beside a unix socket named alone) and read again whenever the node rewrote
it (at each start).
"""

from __future__ import annotations

import collections
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import grpc

GATEWAY_ENV = "P2POS_GATEWAY"
TOKEN_ENV = "P2POS_TOKEN"
DATA_DIR_ENV = "P2POS_DATA_DIR"
SOCKET_FILE = "gateway.sock"
TOKEN_FILE = "gateway.token"

PathLike = Union[str, "os.PathLike[str]"]


class TargetError(ValueError):
    """The node's address or token is malformed or missing."""


def default_data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The node's default data directory (the daemon uses the same):
    ``$XDG_DATA_HOME/p2pos`` or ``~/.local/share/p2pos`` on Linux,
    ``~/Library/Application Support/org.p2pos.p2pos`` on macOS."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "org.p2pos.p2pos"
    xdg = environ.get("XDG_DATA_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "p2pos"
    return Path.home() / ".local" / "share" / "p2pos"


@dataclass(frozen=True)
class Target:
    """Where the node's gateway is and what to present to it."""

    #: The gateway as written in ``P2POS_GATEWAY``: ``unix:/path`` or ``http://127.0.0.1:PORT``.
    gateway: str
    #: The same as a gRPC target: ``unix:/path`` or ``127.0.0.1:PORT``.
    grpc_target: str
    #: Sent as ``authorization: Bearer <token>`` on every call: the one given, or the one the
    #: token file held when resolved; ``None`` if there is none yet.
    token: Optional[str] = field(default=None, repr=False)
    #: The data directory the target came from, if known.
    data_dir: Optional[Path] = None
    #: Without a given token, the node's token file: each call presents the token it holds then.
    token_file: Optional[Path] = None


def parse_gateway(gateway: str) -> tuple[str, str]:
    """``unix:/p`` or ``unix:///p`` → (``unix:/p``, ``unix:/p``);
    ``http://H:P`` → (``http://H:P``, ``H:P``). Anything else: :class:`TargetError`."""
    s = gateway.strip()
    if s.startswith("unix:"):
        path = s[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if path:
            return f"unix:{path}", f"unix:{path}"
    elif s.startswith("http://"):
        authority = s[len("http://") :].rstrip("/")
        if authority and "/" not in authority:
            return f"http://{authority}", authority
    raise TargetError(
        f"invalid gateway address {gateway!r}: expected unix:/path/to/gateway.sock "
        "or http://127.0.0.1:PORT"
    )


def resolve(
    data_dir: Optional[PathLike] = None,
    *,
    gateway: Optional[str] = None,
    token: Optional[str] = None,
    environ: Mapping[str, str] = os.environ,
) -> Target:
    """Resolves the arguments, then the environment, then the data directory.

    With a gateway (argument or ``P2POS_GATEWAY``) the token file is read only from a data
    directory that was named (argument or ``P2POS_DATA_DIR``). A TCP gateway needs a token."""

    def given(value: Optional[str], env: str) -> Optional[str]:
        for candidate in (value, environ.get(env)):
            if candidate is not None and candidate.strip():
                return candidate.strip()
        return None

    gateway = given(gateway, GATEWAY_ENV)
    token = given(token, TOKEN_ENV)
    token_file = None
    named_dir = given(os.fspath(data_dir) if data_dir is not None else None, DATA_DIR_ENV)
    directory = Path(named_dir).expanduser() if named_dir else None
    if gateway is not None:
        written, grpc_target = parse_gateway(gateway)
    else:
        directory = directory or default_data_dir(environ)
        written = grpc_target = f"unix:{directory / SOCKET_FILE}"
    if token is None:
        if directory is not None:
            token_file = directory / TOKEN_FILE
        elif written.startswith("unix:"):
            token_file = Path(written[len("unix:") :]).parent / TOKEN_FILE
        if token_file is not None:
            token = _read_token_file(token_file)
    if token is not None and not (token.isascii() and token.isprintable()):
        raise TargetError("the token is not valid: it must be printable ASCII")
    if token is None and not written.startswith("unix:"):
        raise TargetError(
            f"the gateway at {written} needs a token: set {TOKEN_ENV} or name the node's data "
            "directory"
        )
    return Target(
        gateway=written,
        grpc_target=grpc_target,
        token=token,
        data_dir=directory,
        token_file=token_file,
    )


def _read_token_file(path: Path) -> Optional[str]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call: the token given, or the one the
    token file holds at the time of the call (read again only when the file changed)."""

    def __init__(self, token: Optional[str], token_file: Optional[Path] = None) -> None:
        self._token = token
        self._file = token_file
        self._stamp = None

    def _current(self) -> Optional[str]:
        if self._file is None:
            return self._token
        try:
            st = os.stat(self._file)
        except OSError:
            return self._token  # the node is restarting: the last token read
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._token = _read_token_file(self._file) or self._token
            self._stamp = stamp
        return self._token

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = list(details.metadata or [])
        token = self._current()
        if token is not None:
            metadata.append(("authorization", f"Bearer {token}"))
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def _stub_modules():
    try:
        from p2pos.app.v1 import app_pb2_grpc
        from p2pos.group.v1 import group_pb2_grpc
        from p2pos.monitor.v1 import monitor_pb2_grpc
        from p2pos.node.v1 import node_pb2_grpc
        from p2pos.overlay.v1 import overlay_pb2_grpc
        from p2pos.service.v1 import service_pb2_grpc
        from p2pos.tasks.v1 import tasks_pb2_grpc
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("p2pos."):
            raise ImportError(
                "the p2pos gRPC stubs are not generated: run `python3 userland/python/generate.py` "
                "(needs grpcio-tools), or install the package with pip"
            ) from err
        raise
    return (
        app_pb2_grpc,
        group_pb2_grpc,
        monitor_pb2_grpc,
        node_pb2_grpc,
        overlay_pb2_grpc,
        service_pb2_grpc,
        tasks_pb2_grpc,
    )


class Connection:
    """A gRPC channel to the node and a stub per service, each call presenting the token.

    Use it as a context manager, or call :meth:`close`. Calls that fail raise ``grpc.RpcError``
    (see :func:`p2pos.describe_error`); a node that is not running gives ``UNAVAILABLE``."""

    def __init__(self, target: Target, options: Optional[list] = None) -> None:
        apps, group, monitor, node, overlay, service, tasks = _stub_modules()
        self.target = target
        self._raw = grpc.insecure_channel(target.grpc_target, options=list(options or []))
        self.channel = (
            grpc.intercept_channel(self._raw, _BearerToken(target.token, target.token_file))
            if target.token or target.token_file
            else self._raw
        )
        self.node = node.NodeStub(self.channel)
        self.overlay = overlay.OverlayStub(self.channel)
        self.apps = apps.AppsStub(self.channel)
        self.services = service.ServicesStub(self.channel)
        self.tasks = tasks.TasksStub(self.channel)
        self.monitor = monitor.MonitorStub(self.channel)
        self.groups = group.GroupsStub(self.channel)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<p2pos.Connection {self.target.gateway}>"


def connect(
    data_dir: Optional[PathLike] = None,
    *,
    gateway: Optional[str] = None,
    token: Optional[str] = None,
) -> Connection:
    """Connects to the local node found by :func:`resolve`. The channel connects lazily: a
    node that is not running shows as ``UNAVAILABLE`` on the first call."""
    return Connection(resolve(data_dir, gateway=gateway, token=token))


def describe_error(err: grpc.RpcError) -> str:
    """``CODE: message`` of a failed call, e.g. ``NOT_FOUND: nobody provides wordcount/1``."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else None
    code = code if code is not None else grpc.StatusCode.UNKNOWN
    meaning = (
        "not supported by this node" if code == grpc.StatusCode.UNIMPLEMENTED else code.value[1]
    )
    return f"{code.name}: {(details or '').strip() or meaning}"
