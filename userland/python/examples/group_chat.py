#!/usr/bin/env python3
"""Group chat: every line typed goes to every member of a group; theirs are printed as they come.

    group_chat.py [--data-dir DIR] [--room NAME] GROUP

GROUP is a group this node is a member of (its id, or its name on this node: see
``p2pctl groups list``). Lines are published with ``Groups.Publish`` on the topic NAME (default
``room``) of the app ``chat`` in the group: the same room as ``p2p-chat --group GROUP``, so both
can talk. A thread follows the topic with ``Groups.Subscribe``, asking first for the messages the
node holds from the last hour, and prints each member's lines as ``<last 8 characters of the
sender's peer id>> text``, those sent before it started marked ``[earlier]``. Its own lines are
not printed back: the node hands a node's posts to its own followers too, so a message of this
node whose number (``PublishReply.seq``) this program got back is skipped.

It prints ``* joined room "NAME"`` once the node follows the topic for it. It exits 0 when
standard input ends (every line published), 130 on Ctrl-C, and 1 with ``error: <CODE>: <message>``
on standard error when the node refuses (not a member, no such group) or the subscription ends.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Dict, Optional, Set

import grpc

import p2pos
from p2pos.group.v1 import group_pb2
from p2pos.node.v1 import node_pb2

APP_ID = "chat"
DEFAULT_ROOM = "room"
# The node keeps a topic's messages for an hour.
REPLAY_MS = 60 * 60 * 1000
# A deadline for each Publish.
PUBLISH_TIMEOUT = 10.0


class RoomError(Exception):
    """The room cannot be opened."""


def now_ms() -> int:
    return int(time.time() * 1000)


def short(peer_id: str) -> str:
    """The end of a peer id: every ed25519 peer id starts with the same ``12D3KooW``."""
    return peer_id[-8:]


def one_line(data: bytes) -> str:
    """The data as text on one line: bytes that are not UTF-8 replaced, control characters
    escaped."""
    text = data.decode("utf-8", errors="replace")
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


class Room:
    """What is printed: each member's lines once, in order, without this program's own."""

    def __init__(self, own_id: str, started_ms: int) -> None:
        self.own_id = own_id
        self.started_ms = started_ms
        self._cond = threading.Condition()
        self._publishing = False
        # The numbers Publish returned here: this program's own lines.
        self._own: Set[int] = set()
        # The highest number handled per sender (a sender's messages come in order).
        self._last: Dict[str, int] = {}

    def publishing(self) -> None:
        with self._cond:
            self._publishing = True

    def published(self, seq: Optional[int]) -> None:
        with self._cond:
            if seq is not None:
                self._own.add(seq)
            self._publishing = False
            self._cond.notify_all()

    def line(self, message: group_pb2.TopicMessage) -> Optional[str]:
        """The line to print for ``message``, or None."""
        with self._cond:
            if message.sender == self.own_id and message.seq not in self._own:
                # It may be the line being published: wait for Publish's answer.
                self._cond.wait_for(lambda: not self._publishing, timeout=PUBLISH_TIMEOUT + 5)
            if message.seq <= self._last.get(message.sender, 0):
                return None
            self._last[message.sender] = message.seq
            if message.sender == self.own_id and message.seq in self._own:
                return None
        mark = "[earlier] " if message.sent_ms < self.started_ms else ""
        return f"{mark}{short(message.sender)}> {one_line(message.data)}"


def fail(text: str) -> None:
    """Prints ``error: text`` and ends the whole program (from any thread) with status 1."""
    sys.stdout.flush()
    print(f"error: {text}", file=sys.stderr, flush=True)
    os._exit(1)


def follow(call, room: Room, stopping: threading.Event) -> None:
    """Prints what the subscription brings until it ends; an end not asked for is an error."""
    try:
        for message in call:
            text = room.line(message)
            if text is not None:
                print(text, flush=True)
        reason = "the node ended it"
    except grpc.RpcError as err:
        if stopping.is_set():
            return
        reason = p2pos.describe_error(err)
    if not stopping.is_set():
        fail(f"the subscription ended: {reason}")


def chat(node: p2pos.Connection, group: str, topic: str) -> int:
    own_id = node.node.GetInfo(node_pb2.GetInfoRequest(), timeout=10).peer_id
    members = node.groups.Members(group_pb2.GroupRef(group=group), timeout=10)
    if not members.group.member:
        raise RoomError(f"this node is no longer a member of group {members.group.name}")
    group_id = members.group.id
    started_ms = now_ms()
    room = Room(own_id, started_ms)
    print(
        f'* room "{topic}" of group {members.group.name} ({len(members.members)} members), '
        f"as {short(own_id)}",
        flush=True,
    )
    call = node.groups.Subscribe(
        group_pb2.SubscribeRequest(
            group=group_id, app=APP_ID, topic=topic, since_ms=started_ms - REPLAY_MS
        )
    )
    # The node answers once it follows the topic for us (or refuses).
    call.initial_metadata()
    if call.done() and call.code() != grpc.StatusCode.OK:
        raise call
    print(f'* joined room "{topic}"', flush=True)
    stopping = threading.Event()
    threading.Thread(target=follow, args=(call, room, stopping), daemon=True).start()
    try:
        for raw in sys.stdin.buffer:
            text = raw.rstrip(b"\r\n")
            if not text:
                continue
            room.publishing()
            seq = None
            try:
                seq = node.groups.Publish(
                    group_pb2.PublishRequest(group=group_id, app=APP_ID, topic=topic, data=text),
                    timeout=PUBLISH_TIMEOUT,
                ).seq
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                print(f"* not sent ({p2pos.describe_error(err)})", flush=True)
            finally:
                room.published(seq)
    finally:
        stopping.set()
        call.cancel()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Talks in a group's room (the chat app's topic).")
    parser.add_argument("--data-dir", help="the node's data directory (its gateway.sock)")
    parser.add_argument("--room", default=DEFAULT_ROOM, help="the room (topic), default: room")
    parser.add_argument("group", help="the group: its id, or its name on this node")
    args = parser.parse_args()
    if not args.room.strip():
        print("error: --room is empty", file=sys.stderr)
        return 1
    try:
        with p2pos.connect(args.data_dir) as node:
            return chat(node, args.group, args.room)
    except KeyboardInterrupt:
        return 130
    except (p2pos.TargetError, RoomError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"error: {p2pos.describe_error(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
