"""``p2pos.Channel`` between two real nodes: frames over data sockets, whole and in order, a
half-close each way, and a peer that goes away seen as an error, not as an end.

Starts two ``p2posd`` like ``test_group_chat`` (``P2POS_BIN_DIR`` names the directory of the
binaries; without it the test is skipped).

    cd userland/python && P2POS_BIN_DIR=../../target/debug python3 -m unittest tests.test_channel

(run by tests/tests/python.rs).
"""

from __future__ import annotations

import queue
import tempfile
import threading
import unittest
from pathlib import Path

import p2pos
from p2pos.app.v1 import app_pb2
from tests.test_group_chat import BIN_DIR, DEADLINE, Node

APP = "pychannel"


def numbered(i: int) -> bytes:
    return i.to_bytes(4, "big") * (i % 20 + 1)


@unittest.skipUnless(BIN_DIR, "needs P2POS_BIN_DIR: the directory of the p2posd and p2pctl binaries")
class Channels(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="p2pos-py-")
        root = Path(self.tmp.name)
        self.a = Node(root, "a")
        self.addCleanup(self.a.stop)
        self.b = Node(root, "b")
        self.addCleanup(self.b.stop)
        self.node_a = p2pos.connect(self.a.dir)
        self.node_b = p2pos.connect(self.b.dir)
        self.addCleanup(self.node_a.close)
        self.addCleanup(self.node_b.close)
        # B's session: each announced channel's id, in order.
        self.incoming: "queue.Queue[int]" = queue.Queue()
        registered = threading.Event()
        session = self.node_b.apps.Session(app_pb2.SessionRequest(app_id=APP))
        self.addCleanup(session.cancel)

        def follow():
            try:
                for event in session:
                    if event.HasField("registered"):
                        registered.set()
                    elif event.HasField("incoming"):
                        self.incoming.put(event.incoming.channel_id)
            except Exception:  # the session is cancelled at the end
                pass

        threading.Thread(target=follow, daemon=True).start()
        self.assertTrue(registered.wait(DEADLINE), "B's session registered")
        self.ticket = self.b.ctl("ticket")

    def tearDown(self):
        self.doCleanups()
        self.tmp.cleanup()

    def pair(self):
        """A channel from A to B: (A's end, B's end)."""
        opened: list = []
        opener = threading.Thread(
            target=lambda: opened.append(p2pos.Channel.open(self.node_a, APP, self.ticket))
        )
        opener.start()
        channel_id = self.incoming.get(timeout=DEADLINE)
        b = p2pos.Channel.accept(self.node_b, APP, channel_id)
        opener.join(DEADLINE)
        self.assertEqual(len(opened), 1, "A's channel opened")
        self.assertIsNotNone(opened[0].opened.data_socket.secret)
        return opened[0], b

    def test_frames_arrive_whole_and_in_order_with_a_half_close_each_way(self):
        a, b = self.pair()
        big = bytes(i % 251 for i in range(1024 * 1024))
        sender = threading.Thread(
            target=lambda: (
                [a.send(numbered(i)) for i in range(10_000)],
                a.send(b""),
                a.send(big),
                a.close_write(),
            )
        )
        sender.start()
        for i in range(10_000):
            self.assertEqual(b.recv(), numbered(i), f"frame {i}")
        self.assertEqual(b.recv(), b"")
        self.assertEqual(b.recv(), big, "the 1 MiB frame arrives exact")
        self.assertIsNone(b.recv(), "A's half-close is B's clean end")
        sender.join(DEADLINE)
        b.send(b"after your close")
        b.close_write()
        self.assertEqual(a.recv(), b"after your close")
        self.assertIsNone(a.recv())
        a.wait(DEADLINE)
        b.wait(DEADLINE)
        a.close()
        b.close()

    def test_a_peer_that_goes_away_is_an_error_not_an_end(self):
        a, b = self.pair()
        a.send(b"hello")
        self.assertEqual(b.recv(), b"hello")
        b.abort()
        with self.assertRaises(p2pos.ChannelError) as broke:
            a.recv()
        self.assertIn("UNAVAILABLE", str(broke.exception))
        with self.assertRaises(p2pos.ChannelError):
            a.recv()  # and it stays broken
        a.abort()

    def test_a_frame_over_1_mib_is_refused_before_it_leaves(self):
        a, b = self.pair()
        with self.assertRaises(ValueError):
            a.send(bytes(1024 * 1024 + 1))
        a.send(b"fine")
        self.assertEqual(b.recv(), b"fine")
        a.abort()
        b.abort()


if __name__ == "__main__":
    unittest.main()
