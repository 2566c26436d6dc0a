"""Channels over data sockets: a channel's frames on a plain local socket, its gRPC call kept
as the channel's control (``peer_closed``, then the final status).

    import p2pos

    with p2pos.connect() as node:
        with p2pos.Channel.open(node, "chat", peer_ticket) as channel:
            channel.send(b"hello")
            channel.close_write()            # half-close: the peer still answers
            for frame in channel:            # until the peer half-closes
                print(frame)

:meth:`Channel.open`, :meth:`Channel.accept` (a channel announced on the app's session) and
:meth:`Channel.open_service` return a :class:`Channel` once the node has opened it and the data
socket is connected. ``recv()`` gives the peer's next frame, ``None`` once the peer has
half-closed; a channel that broke raises :class:`ChannelError` with the node's reason. With
``stream=True`` the socket carries a plain byte stream instead of frames: use ``channel.socket``
(or ``channel.makefile()``) directly, then :meth:`Channel.wait` for how the channel ended.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Iterator, Optional

import grpc

HEADER = struct.Struct(">I")
# Largest frame an app may send.
MAX_FRAME = 1024 * 1024
# Largest frame the node passes on from a peer.
_MAX_PEER_FRAME = MAX_FRAME + 64
# Frames this small are joined to their length in one write.
_JOIN_BELOW = 64 * 1024
_ACCEPTED = 0


class ChannelError(Exception):
    """The channel broke, or the node refused it: ``code`` is the gRPC status code (or
    ``None`` for a refused data socket), the message the node's reason."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.code = code


def _transport(stream: bool) -> int:
    from p2pos.app.v1 import app_pb2

    return (
        app_pb2.CHANNEL_TRANSPORT_SOCKET_BYTES if stream else app_pb2.CHANNEL_TRANSPORT_SOCKET_FRAMES
    )


class Channel:
    """An open channel whose bytes travel over its data socket."""

    def __init__(self, call, opened, sock: socket.socket, stream: bool) -> None:
        self._call = call
        #: The node's ``ChannelOpened``: ``channel_id``, ``peer_id``, ``app_id``, ``group``.
        self.opened = opened
        #: The data socket: frames (4-byte big-endian length, then the bytes) or, with
        #: ``stream=True``, a plain byte stream.
        self.socket = sock
        self.stream = stream
        self._reader = sock.makefile("rb", buffering=256 * 1024)
        # The peer half-closed (`peer_closed` came), or how the channel broke.
        self._ended = False
        self._error: Optional[ChannelError] = None

    # Opening.

    @classmethod
    def open(
        cls, node, app_id: str, peer: str, *, group: str = "", stream: bool = False
    ) -> "Channel":
        """A channel to ``app_id`` on ``peer`` (peer id, ticket, multiaddr or ``NAME@GROUP``),
        once the peer's app has accepted it."""
        from p2pos.app.v1 import app_pb2

        first = app_pb2.ChannelInput(
            open=app_pb2.OpenChannel(
                app_id=app_id, peer=peer, group=group, transport=_transport(stream)
            )
        )
        return cls._start(node.apps.Channel, first, stream)

    @classmethod
    def accept(cls, node, app_id: str, channel_id: int, *, stream: bool = False) -> "Channel":
        """Takes the channel ``channel_id`` announced on the app's session."""
        from p2pos.app.v1 import app_pb2

        first = app_pb2.ChannelInput(
            accept=app_pb2.AcceptChannel(
                app_id=app_id, channel_id=channel_id, transport=_transport(stream)
            )
        )
        return cls._start(node.apps.Channel, first, stream)

    @classmethod
    def open_service(
        cls,
        node,
        app_id: str,
        service: str,
        *,
        peer: str = "",
        group: str = "",
        stream: bool = False,
    ) -> "Channel":
        """A channel to a provider of ``service`` (``name/version``)."""
        from p2pos.service.v1 import service_pb2

        first = service_pb2.ServiceChannelInput(
            open=service_pb2.OpenServiceChannel(
                app_id=app_id,
                service=service,
                peer=peer,
                group=group,
                transport=_transport(stream),
            )
        )
        return cls._start(node.services.Channel, first, stream)

    @classmethod
    def _start(cls, method, first, stream: bool) -> "Channel":
        # The call's input is the first message alone: the node ignores its end.
        call = method(iter([first]))
        try:
            output = next(call)
        except grpc.RpcError as err:
            raise ChannelError(_describe(err), err.code()) from None
        except StopIteration:
            raise ChannelError("the channel ended before it opened") from None
        if not output.HasField("opened") or not output.opened.HasField("data_socket"):
            call.cancel()
            raise ChannelError(f"the node did not offer a data socket: {output}")
        opened = output.opened
        try:
            sock = _connect(opened.data_socket)
        except BaseException:
            call.cancel()
            raise
        return cls(call, opened, sock, stream)

    # Frames.

    def send(self, frame: bytes) -> None:
        """Sends one frame (at most 1 MiB)."""
        if self.stream:
            raise ChannelError("a byte-stream channel has no frames: write to channel.socket")
        if len(frame) > MAX_FRAME:
            raise ValueError(f"a frame of {len(frame)} bytes exceeds the {MAX_FRAME}-byte limit")
        header = HEADER.pack(len(frame))
        try:
            if len(frame) < _JOIN_BELOW:
                self.socket.sendall(header + frame)
            else:
                self.socket.sendall(header)
                self.socket.sendall(frame)
        except OSError as err:
            raise self._broken(err) from None

    def recv(self) -> Optional[bytes]:
        """The peer's next frame; ``None`` once the peer has half-closed. Raises
        :class:`ChannelError` if the channel broke."""
        if self.stream:
            raise ChannelError("a byte-stream channel has no frames: read channel.socket")
        if self._error is not None:
            raise self._error
        if self._ended:
            return None
        try:
            header = self._reader.read(HEADER.size)
        except OSError as err:
            raise self._broken(err) from None
        if len(header) < HEADER.size:
            if header:
                raise self._broken(None)
            self.wait_peer_closed()
            return None
        (length,) = HEADER.unpack(header)
        if length > _MAX_PEER_FRAME:
            raise ChannelError(f"the node sent a frame of {length} bytes")
        try:
            frame = self._reader.read(length)
        except OSError as err:
            raise self._broken(err) from None
        if len(frame) < length:
            raise self._broken(None)
        return frame

    def __iter__(self) -> Iterator[bytes]:
        while True:
            frame = self.recv()
            if frame is None:
                return
            yield frame

    def makefile(self, mode: str = "rb", **kwargs):
        """A file object on the socket, for a byte-stream channel."""
        return self.socket.makefile(mode, **kwargs)

    # Ends.

    def close_write(self) -> None:
        """Half-closes: the peer's reads end cleanly once it has everything; its frames still
        come."""
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait_peer_closed(self) -> None:
        """After the socket's end: returns if the peer half-closed, raises
        :class:`ChannelError` with the node's reason if the channel broke (again on every later
        ``recv``)."""
        if self._error is not None:
            raise self._error
        if self._ended:
            return
        try:
            for output in self._call:
                if output.HasField("peer_closed"):
                    self._ended = True
                    return
            self._error = ChannelError("the channel ended without peer_closed")
        except grpc.RpcError as err:
            self._error = ChannelError(_describe(err), err.code())
        raise self._error

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits until the channel has ended both ways: returns if it ended cleanly, raises
        :class:`ChannelError` otherwise (or if it has not ended within ``timeout`` seconds)."""
        if self._error is not None:
            raise self._error
        failed: list = []

        def drain() -> None:
            # The call's status comes only after its outputs have been read.
            try:
                for _ in self._call:
                    pass
            except grpc.RpcError as err:
                failed.append(err)

        if timeout is None:
            drain()
        else:
            waiter = threading.Thread(target=drain, daemon=True)
            waiter.start()
            waiter.join(timeout)
            if waiter.is_alive():
                raise ChannelError(f"the channel did not end within {timeout} s")
        if failed:
            self._error = ChannelError(_describe(failed[0]), failed[0].code())
            raise self._error

    def close(self, timeout: float = 5.0) -> None:
        """Closes the channel cleanly: half-closes, lets the peer's last frames go by (unread),
        and waits up to ``timeout`` seconds for the channel's end; then lets go of the socket
        and the call (a peer still sending then sees the channel break)."""
        try:
            self.close_write()
            if self._error is None:
                self.socket.settimeout(timeout)
                while self._reader.read(256 * 1024):
                    pass
                self.wait(timeout)
        except (OSError, ChannelError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Lets go of the socket and the call at once: the peer sees the channel break unless
        it had ended."""
        try:
            self._reader.close()
            self.socket.close()
        finally:
            if self._call is not None:
                self._call.cancel()

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _broken(self, err: Optional[OSError]) -> ChannelError:
        """The error of a socket that broke: the call's status says why."""
        try:
            self.wait_peer_closed()
        except ChannelError as status:
            return status
        self._error = ChannelError(f"the data socket broke: {err or 'it ended inside a frame'}")
        return self._error

    def __repr__(self) -> str:
        return (
            f"<p2pos.Channel {self.opened.channel_id} {self.opened.app_id}@{self.opened.peer_id}>"
        )


def _connect(data_socket) -> socket.socket:
    """Connects to a data socket and presents its secret; the node's refusal is an error."""
    if data_socket.unix_path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = data_socket.unix_path
    elif data_socket.tcp_address:
        host, _, port = data_socket.tcp_address.rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        address = (host.strip("[]"), int(port))
    else:
        raise ChannelError("the node offered a data socket with no address")
    try:
        sock.connect(address)
        sock.sendall(data_socket.secret)
        answer = sock.recv(1)
        if answer != bytes([_ACCEPTED]):
            why = b""
            while len(why) < 1024:
                more = sock.recv(1024)
                if not more:
                    break
                why += more
            raise ChannelError(
                "the node refused the data socket: "
                + (why.decode("utf-8", "replace") or "it closed the connection")
            )
    except OSError as err:
        sock.close()
        raise ChannelError(f"cannot connect to the data socket {address}: {err}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _describe(err: grpc.RpcError) -> str:
    from p2pos._connect import describe_error

    return describe_error(err)
