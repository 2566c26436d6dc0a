"""The group-chat example between two real nodes in a group: a line typed on one appears on the
other, and not back on the first.

Starts two ``p2posd`` (on 127.0.0.1, mDNS off, temporary data directories), connects them and
forms a group with ``p2pctl`` (``dial``, ``groups create``, ``invite``, ``join``), then runs
``examples/group_chat.py`` on each. It needs the workspace's binaries: ``P2POS_BIN_DIR`` names
the directory that holds ``p2posd`` and ``p2pctl`` (without it the test is skipped).

    cd userland/python && P2POS_BIN_DIR=../../target/debug python3 -m unittest tests.test_group_chat

(run by tests/tests/python.rs, which sets P2POS_BIN_DIR).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import grpc

import p2pos
from p2pos.group.v1 import group_pb2
from p2pos.node.v1 import node_pb2

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "group_chat.py"
BIN_DIR = os.environ.get("P2POS_BIN_DIR", "").strip()
DEADLINE = 30.0


def wait_for(what: str, check, deadline: float = DEADLINE):
    """Calls ``check`` until it returns something other than None; fails after ``deadline``."""
    until = time.monotonic() + deadline
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > until:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.05)


class Node:
    """A ``p2posd`` with its own data directory; stopped by :meth:`stop`."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.log = root / f"{name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(Path(BIN_DIR) / "p2posd"),
                    "--listen",
                    "/ip4/127.0.0.1/tcp/0",
                    "--no-mdns",
                    "--data-dir",
                    str(self.dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "P2POS_LOG": "info,libp2p=warn,sled=warn"},
            )
        self.peer_id = wait_for(f"{name} to answer", self._peer_id)

    def _peer_id(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"p2posd exited: {self.log.read_text()}")
        try:
            with p2pos.connect(self.dir) as node:
                return node.node.GetInfo(node_pb2.GetInfoRequest(), timeout=2).peer_id
        except grpc.RpcError:
            return None

    def ctl(self, *args: str) -> str:
        out = subprocess.run(
            [str(Path(BIN_DIR) / "p2pctl"), "--data-dir", str(self.dir), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise AssertionError(f"p2pctl {args}: {out.stderr}")
        return out.stdout.strip()

    def members(self, group: str):
        try:
            with p2pos.connect(self.dir) as node:
                reply = node.groups.Members(group_pb2.GroupRef(group=group), timeout=2)
                return {m.peer_id for m in reply.members}
        except grpc.RpcError:
            return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Example:
    """``group_chat.py`` on a node, its output read on threads."""

    def __init__(self, node: Node, group: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--data-dir", str(node.dir), group],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: list = []
        self.errors: list = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors.append)),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe, put) -> None:
        with pipe:
            for raw in pipe:
                put(raw.decode("utf-8", errors="replace").rstrip("\n"))

    def expect(self, needle: str) -> str:
        until = time.monotonic() + DEADLINE
        while True:
            left = until - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no line containing {needle!r}; printed {self.seen}, stderr {self.errors}"
                ) from None
            self.seen.append(line)
            if needle in line:
                return line

    def type(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        for reader in self.readers:
            reader.join(timeout=DEADLINE)


@unittest.skipUnless(BIN_DIR, "needs P2POS_BIN_DIR: the directory of the p2posd and p2pctl binaries")
class GroupChat(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="p2pos-py-")
        root = Path(self.tmp.name)
        self.a = self._node(root, "a")
        self.b = self._node(root, "b")

    def _node(self, root: Path, name: str) -> Node:
        node = Node(root, name)
        self.addCleanup(node.stop)
        return node

    def _example(self, node: Node, group: str) -> Example:
        example = Example(node, group)
        self.addCleanup(example.kill)
        return example

    def tearDown(self):
        self.doCleanups()
        self.tmp.cleanup()

    def test_a_line_typed_on_one_member_appears_on_the_other(self):
        a, b = self.a, self.b
        a.ctl("dial", b.ctl("ticket"))
        group = a.ctl("groups", "create", "pals").split()[0]
        b.ctl("groups", "join", a.ctl("groups", "invite", group))
        both = {a.peer_id, b.peer_id}
        for node in (a, b):
            wait_for("both members listed", lambda n=node: n.members(group) == both or None)

        chat_a = self._example(a, "pals")
        chat_b = self._example(b, group)
        chat_a.expect('* joined room "room"')
        chat_b.expect('* joined room "room"')

        chat_a.type("hello from python on A")
        line = chat_b.expect("hello from python on A")
        self.assertEqual(line, f"{a.peer_id[-8:]}> hello from python on A")
        chat_b.type("héllo back from B")
        line = chat_a.expect("back from B")
        self.assertEqual(line, f"{b.peer_id[-8:]}> héllo back from B")
        # A's own line was not printed back to it (it would have come before B's).
        self.assertFalse([l for l in chat_a.seen if "from python on A" in l], chat_a.seen)

        self.assertEqual(chat_a.finish(), 0, chat_a.errors)
        self.assertEqual(chat_b.finish(), 0, chat_b.errors)

    def test_a_group_this_node_is_not_in_is_one_error_line(self):
        out = subprocess.run(
            [sys.executable, str(EXAMPLE), "--data-dir", str(self.a.dir), "nosuch"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertEqual(len(out.stderr.splitlines()), 1, out.stderr)
        self.assertTrue(out.stderr.startswith("error: NOT_FOUND: no group"), out.stderr)


if __name__ == "__main__":
    unittest.main()
