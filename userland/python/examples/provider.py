#!/usr/bin/env python3
"""Word-count provider: offers the service ``wordcount/1`` on its node and answers each call.

A call's payload is UTF-8 text; the answer is JSON ``{"words": N, "lines": N, "chars": N}``
(words split on whitespace, lines as ``str.splitlines`` counts them, chars in code points).
Text that is not valid UTF-8 is refused with ``INVALID_ARGUMENT``.

    provider.py [--data-dir DIR]

It opens a session for the app ``wordcount`` (``Apps.Session``), registers the service
(``Services.Register``), prints ``serving wordcount/1 as <peer id>``, then answers every
``SessionEvent.call`` with ``Services.Reply`` until stopped (Ctrl-C or SIGTERM: exit 0). The
service lives as long as the session: if the node goes away, it prints an error and exits 1.
Without ``--data-dir`` the node is found from ``P2POS_GATEWAY``/``P2POS_TOKEN``/``P2POS_DATA_DIR``
or the default data directory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import grpc

import p2pos
from p2pos.app.v1 import app_pb2
from p2pos.service.v1 import service_pb2

APP_ID = "wordcount"
SERVICE = "wordcount/1"
DESCRIPTION = 'Counts words, lines and characters of UTF-8 text; answers {"words","lines","chars"}'


def count(payload: bytes) -> dict:
    """The counts of UTF-8 text; raises ``UnicodeDecodeError`` on anything else."""
    text = payload.decode("utf-8")
    return {"words": len(text.split()), "lines": len(text.splitlines()), "chars": len(text)}


def answer(call: app_pb2.IncomingCall) -> service_pb2.ReplyRequest:
    """The reply to one call: the counts, or an ``INVALID_ARGUMENT`` error.

    ``RESOURCE_EXHAUSTED`` is for declining a call not acted on (busy) only: the caller's node
    then sends the same call to another provider.
    """
    try:
        counts = count(call.payload)
    except UnicodeDecodeError as err:
        return service_pb2.ReplyRequest(
            app_id=APP_ID,
            call_id=call.call_id,
            error=service_pb2.ReplyError(
                code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                message=f"the text is not valid UTF-8 (byte {err.start}: {err.reason})",
            ),
        )
    return service_pb2.ReplyRequest(
        app_id=APP_ID, call_id=call.call_id, payload=json.dumps(counts).encode()
    )


def serve(node: p2pos.Connection) -> int:
    session = node.apps.Session(app_pb2.SessionRequest(app_id=APP_ID))
    stopping = False

    def stop(_signum, _frame):
        nonlocal stopping
        stopping = True
        session.cancel()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for event in session:
            kind = event.WhichOneof("kind")
            if kind == "registered":
                node.services.Register(
                    service_pb2.RegisterRequest(
                        app_id=APP_ID, service=SERVICE, description=DESCRIPTION
                    ),
                    timeout=10,
                )
                print(f"serving {SERVICE} as {event.registered.peer_id}", flush=True)
            elif kind == "call":
                call = event.call
                reply = answer(call)
                try:
                    node.services.Reply(reply, timeout=10)
                except grpc.RpcError as err:
                    # The caller gave up (deadline passed) or went away: keep serving others.
                    print(
                        f"call {call.call_id}: reply not delivered: {p2pos.describe_error(err)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                outcome = "refused" if reply.HasField("error") else reply.payload.decode()
                print(
                    f"call {call.call_id} from {call.from_app}@{call.from_peer}: {outcome}",
                    flush=True,
                )
            elif kind == "incoming":
                # Service channels are not offered by this example; unaccepted, they time out.
                print(f"ignoring channel {event.incoming.channel_id}", file=sys.stderr, flush=True)
    except grpc.RpcError as err:
        if stopping and err.code() == grpc.StatusCode.CANCELLED:
            return 0
        print(f"error: {p2pos.describe_error(err)}", file=sys.stderr)
        return 1
    if stopping:
        return 0
    print("error: the node ended the session", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Offers the word-count service wordcount/1.")
    parser.add_argument("--data-dir", help="the node's data directory (its gateway.sock)")
    args = parser.parse_args()
    try:
        node = p2pos.connect(args.data_dir)
    except p2pos.TargetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    with node:
        return serve(node)


if __name__ == "__main__":
    sys.exit(main())
