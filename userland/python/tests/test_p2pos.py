"""Unit tests of the p2pos package and the word-count example, without a node.

    cd userland/python && python3 -m unittest discover -s tests

(run by tests/tests/python.rs with the test environment's python).
"""

import json
import sys
import tempfile
import unittest
from pathlib import Path

import grpc

import p2pos
from p2pos.app.v1 import app_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import provider  # noqa: E402


class Resolve(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_data_dir_gives_the_socket_and_its_token_file(self):
        (self.dir / "gateway.token").write_text("admin-token\n")
        target = p2pos.resolve(self.dir, environ={})
        self.assertEqual(target.grpc_target, f"unix:{self.dir}/gateway.sock")
        self.assertEqual(target.gateway, f"unix:{self.dir}/gateway.sock")
        self.assertEqual(target.token, "admin-token")
        self.assertEqual(target.data_dir, self.dir)

    def test_no_token_yet_on_a_unix_socket_is_read_at_each_call(self):
        target = p2pos.resolve(self.dir, environ={})
        self.assertIsNone(target.token)
        self.assertEqual(target.token_file, self.dir / "gateway.token")
        alone = p2pos.resolve(gateway="unix:/run/x/gateway.sock", environ={})
        self.assertEqual(alone.token_file, Path("/run/x/gateway.token"))
        from p2pos._connect import _BearerToken

        bearer = _BearerToken(None, target.token_file)
        self.assertIsNone(bearer._current())
        (self.dir / "gateway.token").write_text("first\n")
        self.assertEqual(bearer._current(), "first")
        (self.dir / "next").write_text("second\n")
        (self.dir / "next").rename(self.dir / "gateway.token")
        self.assertEqual(bearer._current(), "second", "the node rewrote it at a restart")

    def test_environment_in_order(self):
        env = {"P2POS_DATA_DIR": str(self.dir), "P2POS_TOKEN": "t1"}
        target = p2pos.resolve(environ=env)
        self.assertEqual(target.grpc_target, f"unix:{self.dir}/gateway.sock")
        self.assertEqual(target.token, "t1")
        env["P2POS_GATEWAY"] = "unix:///run/x/gateway.sock"
        target = p2pos.resolve(environ=env)
        self.assertEqual(target.grpc_target, "unix:/run/x/gateway.sock")
        # Arguments win over the environment.
        target = p2pos.resolve(
            "/elsewhere", gateway="http://127.0.0.1:7000/", token="t2", environ=env
        )
        self.assertEqual(target.grpc_target, "127.0.0.1:7000")
        self.assertEqual(target.gateway, "http://127.0.0.1:7000")
        self.assertEqual(target.token, "t2")

    def test_default_data_dir(self):
        target = p2pos.resolve(environ={"XDG_DATA_HOME": str(self.dir)})
        if sys.platform != "darwin":
            self.assertEqual(target.grpc_target, f"unix:{self.dir}/p2pos/gateway.sock")
        self.assertEqual(
            p2pos.default_data_dir({}).name,
            "p2pos" if sys.platform != "darwin" else "org.p2pos.p2pos",
        )

    def test_tcp_needs_a_token(self):
        with self.assertRaisesRegex(p2pos.TargetError, "needs a token"):
            p2pos.resolve(gateway="http://127.0.0.1:1", environ={})
        (self.dir / "gateway.token").write_text("from-file")
        target = p2pos.resolve(self.dir, gateway="http://127.0.0.1:1", environ={})
        self.assertEqual(target.token, "from-file")

    def test_bad_gateways_and_tokens(self):
        for bad in ["unix:", "https://x:1", "http://", "http://a/b", "/tmp/gateway.sock"]:
            with self.assertRaisesRegex(p2pos.TargetError, "invalid gateway address"):
                p2pos.resolve(gateway=bad, environ={})
        with self.assertRaisesRegex(p2pos.TargetError, "printable ASCII"):
            p2pos.resolve(self.dir, token="bad\ttoken", environ={})

    def test_a_node_that_is_not_running_is_unavailable(self):
        with p2pos.connect(self.dir) as node:
            from p2pos.node.v1 import node_pb2

            with self.assertRaises(grpc.RpcError) as caught:
                node.node.GetInfo(node_pb2.GetInfoRequest(), timeout=5)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertTrue(p2pos.describe_error(caught.exception).startswith("UNAVAILABLE: "))


class WordCount(unittest.TestCase):
    def test_counts(self):
        self.assertEqual(provider.count(b""), {"words": 0, "lines": 0, "chars": 0})
        self.assertEqual(provider.count(b"hello big world"), {"words": 3, "lines": 1, "chars": 15})
        self.assertEqual(
            provider.count("héllo  wörld\n\nthird line\n".encode()),
            {"words": 4, "lines": 3, "chars": 25},
        )

    def test_answer_is_json(self):
        call = app_pb2.IncomingCall(call_id=7, payload=b"a b")
        reply = provider.answer(call)
        self.assertEqual(reply.app_id, "wordcount")
        self.assertEqual(reply.call_id, 7)
        self.assertEqual(json.loads(reply.payload), {"words": 2, "lines": 1, "chars": 3})

    def test_invalid_utf8_is_invalid_argument(self):
        reply = provider.answer(app_pb2.IncomingCall(call_id=8, payload=b"ab\xffcd"))
        self.assertEqual(reply.WhichOneof("result"), "error")
        self.assertEqual(reply.error.code, 3)
        self.assertIn("not valid UTF-8 (byte 2", reply.error.message)


if __name__ == "__main__":
    unittest.main()


class Frames(unittest.TestCase):
    def test_frames_come_back_whole_and_in_order(self):
        frames = [b"one", b"", b"three" * 100]
        packed = p2pos.pack_frames(frames)
        self.assertEqual(packed[:7], b"\x00\x00\x00\x03one")
        self.assertEqual(p2pos.unpack_frames(packed), frames)
        self.assertEqual(p2pos.unpack_frames(b""), [])
        message = app_pb2.ChannelInput(frames=packed)
        self.assertEqual(p2pos.unpack_frames(message.frames), frames)

    def test_malformed_batches_and_oversize_frames_are_errors(self):
        packed = p2pos.pack_frames([b"one", b"two"])
        for cut in (1, 5, len(packed) - 1):
            with self.assertRaises(ValueError):
                p2pos.unpack_frames(packed[:cut])
        with self.assertRaises(ValueError):
            p2pos.pack_frames([bytes(1024 * 1024 + 1)])
