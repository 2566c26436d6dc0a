#!/usr/bin/env python3
"""Word-count client: calls the service ``wordcount/1``, wherever in the network it is provided.

    client.py [--data-dir DIR] [--timeout SECS] [--retry-for SECS] [TEXT...]

Sends the TEXT arguments joined by spaces (none: standard input, as bytes) with
``Services.Call`` as the app ``wordcount-client``, and prints the JSON answer, e.g.
``{"words": 3, "lines": 1, "chars": 15}``. Each call has a gRPC deadline of ``--timeout``
(10 s). While no provider is found yet (``NOT_FOUND``: the DHT look-up has not found one) or
none is reachable (``UNAVAILABLE``), it tries again for up to ``--retry-for`` seconds (15). On
failure it prints ``error: <CODE>: <message>`` to standard error and exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc

import p2pos
from p2pos.service.v1 import service_pb2

APP_ID = "wordcount-client"
SERVICE = "wordcount/1"
RETRY = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
RETRY_PAUSE = 0.5


def call(node: p2pos.Connection, payload: bytes, timeout: float, retry_for: float) -> bytes:
    """One ``Services.Call``, tried again on ``RETRY`` codes until ``retry_for`` has passed."""
    give_up = time.monotonic() + retry_for
    request = service_pb2.CallRequest(app_id=APP_ID, service=SERVICE, payload=payload)
    while True:
        try:
            return node.services.Call(request, timeout=timeout).payload
        except grpc.RpcError as err:
            if err.code() not in RETRY or time.monotonic() + RETRY_PAUSE > give_up:
                raise
        time.sleep(RETRY_PAUSE)


def main() -> int:
    parser = argparse.ArgumentParser(description="Calls the word-count service wordcount/1.")
    parser.add_argument("--data-dir", help="the node's data directory (its gateway.sock)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, s")
    parser.add_argument(
        "--retry-for",
        type=float,
        default=15.0,
        help="keep retrying NOT_FOUND/UNAVAILABLE this long, s",
    )
    parser.add_argument("text", nargs="*", help="the text to count (none: read standard input)")
    args = parser.parse_args()
    # surrogateescape: arguments that are not UTF-8 are sent as the bytes they were given as.
    payload = (
        " ".join(args.text).encode("utf-8", "surrogateescape")
        if args.text
        else sys.stdin.buffer.read()
    )
    try:
        with p2pos.connect(args.data_dir) as node:
            answer = call(node, payload, args.timeout, args.retry_for)
    except p2pos.TargetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"error: {p2pos.describe_error(err)}", file=sys.stderr)
        return 1
    print(answer.decode("utf-8", errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
