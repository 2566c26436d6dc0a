#!/usr/bin/env python3
"""Echo over channels on data sockets: ``serve`` answers every channel of the app ``echo`` by
sending each frame back; ``send`` opens a channel to a peer's ``echo``, sends each line of its
standard input as one frame, half-closes, and prints what comes back.

    echo_channel.py [--data-dir DIR] serve
    echo_channel.py [--data-dir DIR] send PEER [--stream]

PEER is a peer id, a ticket (``p2pctl ticket`` on the other node) or a multiaddr. ``serve``
prints ``ready`` once its session is open, then one line per channel it served. ``--stream``
uses a byte-stream data socket: the lines go as plain bytes and come back the same way. On
failure it prints ``error: <reason>`` to standard error and exits 1.
"""

from __future__ import annotations

import argparse
import sys
import threading

import grpc

import p2pos
from p2pos.app.v1 import app_pb2

APP_ID = "echo"


def echo(node: p2pos.Connection, channel_id: int) -> None:
    """Sends every frame of one channel back, then half-closes after the peer did."""
    with p2pos.Channel.accept(node, APP_ID, channel_id) as channel:
        count = 0
        for frame in channel:
            channel.send(frame)
            count += 1
        channel.close_write()
        channel.wait()
    print(f"served channel {channel_id}: {count} frames", flush=True)


def serve(node: p2pos.Connection) -> int:
    session = node.apps.Session(app_pb2.SessionRequest(app_id=APP_ID))
    for event in session:
        if event.HasField("registered"):
            print("ready", flush=True)
        elif event.HasField("incoming"):
            channel_id = event.incoming.channel_id
            threading.Thread(target=echo, args=(node, channel_id), daemon=True).start()
    return 0


def send(node: p2pos.Connection, peer: str, stream: bool) -> int:
    lines = sys.stdin.buffer.read().splitlines()
    with p2pos.Channel.open(node, APP_ID, peer, stream=stream) as channel:
        if stream:
            channel.socket.sendall(b"".join(line + b"\n" for line in lines))
            channel.close_write()
            with channel.makefile("rb") as echoed:
                sys.stdout.buffer.write(echoed.read())
            channel.wait()
        else:
            for line in lines:
                channel.send(line)
            channel.close_write()
            for frame in channel:
                sys.stdout.buffer.write(frame + b"\n")
            channel.wait()
    sys.stdout.flush()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Echo over P2P OS channels on data sockets.")
    parser.add_argument("--data-dir", help="the node's data directory (its gateway.sock)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="echo every channel of the app 'echo'")
    sending = commands.add_parser("send", help="send standard input's lines to PEER's echo")
    sending.add_argument("peer")
    sending.add_argument("--stream", action="store_true", help="a byte stream, not frames")
    args = parser.parse_args()
    try:
        with p2pos.connect(args.data_dir) as node:
            if args.command == "serve":
                return serve(node)
            return send(node, args.peer, args.stream)
    except (p2pos.TargetError, p2pos.ChannelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"error: {p2pos.describe_error(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
