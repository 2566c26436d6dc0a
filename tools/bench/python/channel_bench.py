#!/usr/bin/env python3
"""The Python side of ``p2pos-bench --python``: the same Python code moving a channel's frames
over gRPC messages (``Apps.Channel`` data), over a data socket (``p2pos.Channel``), and over a
plain unix socket to the bench's own responder (the floor: the client's own cost, no node).

    channel_bench.py --data-dir DIR --peer PEER --floor PATH [--bulk-mib N] [--messages N]
                     [--echoes N]

The far end of every pipe is the bench's responder (``tools/bench/src/pipe.rs``): its first
frame names the job, ``e`` (echo each frame) or ``s`` + big-endian u64 N (swallow N frames,
answer their byte count). Prints one JSON object: for each of ``grpc``, ``socket`` and
``floor``, ``bulk_mib_s``, ``rate_msg_s`` (64-byte frames, one write each) and ``echo_p50_us``
/ ``echo_p99_us`` (64-byte round trips).
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import struct
import sys
import time

import p2pos
from p2pos.app.v1 import app_pb2

U64 = struct.Struct(">Q")
CHUNK = 64 * 1024
SMALL = 64
WARMUP = 200


class GrpcPipe:
    """Frames as ``data`` messages of an ``Apps.Channel`` call, one message per frame."""

    def __init__(self, node, app_id: str, peer: str) -> None:
        self._input: queue.SimpleQueue = queue.SimpleQueue()
        first = app_pb2.ChannelInput(
            open=app_pb2.OpenChannel(
                app_id=app_id, peer=peer, transport=app_pb2.CHANNEL_TRANSPORT_GRPC
            )
        )
        self._input.put(first)
        self._call = node.apps.Channel(iter(self._input.get, None))
        opened = next(self._call)
        assert opened.HasField("opened"), opened

    def send(self, frame: bytes) -> None:
        self._input.put(app_pb2.ChannelInput(data=frame))

    def recv(self) -> bytes:
        return next(self._call).data

    def close(self) -> None:
        self._input.put(None)
        self._call.cancel()


class FloorPipe(p2pos.Channel):
    """``p2pos.Channel``'s own frame code on a plain unix socket to the bench's responder."""

    def __init__(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        super().__init__(None, None, sock, False)

    def close(self, timeout: float = 0.0) -> None:
        self.socket.close()


def bulk(pipe, total: int) -> float:
    frames = total // CHUNK
    data = b"\x5a" * CHUNK
    start = time.perf_counter()
    pipe.send(b"s" + U64.pack(frames))
    for _ in range(frames):
        pipe.send(data)
    (got,) = U64.unpack(pipe.recv())
    secs = time.perf_counter() - start
    assert got == frames * CHUNK, f"the far end got {got} bytes"
    return got / (1024 * 1024) / secs


def rate(pipe, count: int) -> float:
    message = b"\x17" * SMALL
    start = time.perf_counter()
    pipe.send(b"s" + U64.pack(count))
    for _ in range(count):
        pipe.send(message)
    (got,) = U64.unpack(pipe.recv())
    assert got == count * SMALL, f"the far end got {got} bytes"
    return count / (time.perf_counter() - start)


def echo(pipe, count: int) -> tuple[float, float]:
    message = b"\x42" * SMALL
    pipe.send(b"e")
    times = []
    for i in range(WARMUP + count):
        start = time.perf_counter()
        pipe.send(message)
        back = pipe.recv()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
        assert len(back) == SMALL
    times.sort()
    return times[len(times) // 2] * 1e6, times[min(len(times) - 1, len(times) * 99 // 100)] * 1e6


def figures(open_pipe, args, messages: int) -> dict:
    out = {}
    for name, run in (
        ("bulk_mib_s", lambda pipe: bulk(pipe, args.bulk_mib * 1024 * 1024)),
        ("rate_msg_s", lambda pipe: rate(pipe, messages)),
    ):
        pipe = open_pipe()
        out[name] = run(pipe)
        pipe.close()
    pipe = open_pipe()
    out["echo_p50_us"], out["echo_p99_us"] = echo(pipe, args.echoes)
    pipe.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--floor", required=True)
    parser.add_argument("--bulk-mib", type=int, default=128)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--echoes", type=int, default=2000)
    args = parser.parse_args()
    results = {}
    with p2pos.connect(args.data_dir) as node:
        # One gRPC message per frame is an order of magnitude slower: a tenth of the count.
        results["grpc"] = figures(
            lambda: GrpcPipe(node, "bench", args.peer), args, max(args.messages // 10, 1000)
        )
        results["socket"] = figures(
            lambda: p2pos.Channel.open(node, "bench-socket", args.peer), args, args.messages
        )
    results["floor"] = figures(lambda: FloorPipe(args.floor), args, args.messages)
    json.dump(results, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
