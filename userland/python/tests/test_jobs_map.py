"""The jobs-map example across a real group: a hundred Collatz jobs submitted on one member run
on the two others, which lend to the group, and every result is exact.

Starts three ``p2posd`` (A, B, C: on 127.0.0.1, mDNS off, temporary data directories), connects
them, forms a group of the three with ``p2pctl`` (A creates it and invites, B and C join), has B
and C lend to the group (``resources share --to-group``), waits until A finds both lending, then
runs ``examples/jobs_map.py`` on A over ``1-100``. It needs the workspace's binaries:
``P2POS_BIN_DIR`` names the directory that holds ``p2posd`` and ``p2pctl`` (without it the test
is skipped).

    cd userland/python && P2POS_BIN_DIR=../../target/debug python3 -m unittest tests.test_jobs_map

(run by tests/tests/python.rs, which sets P2POS_BIN_DIR).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from tests.test_group_chat import BIN_DIR, Node, wait_for

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "jobs_map.py"
# The example's own bound: a hundred jobs, a few seconds each at worst on a loaded machine.
RUN_DEADLINE = 300.0


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


@unittest.skipUnless(BIN_DIR, "needs P2POS_BIN_DIR: the directory of the p2posd and p2pctl binaries")
class JobsMap(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="p2pos-py-")
        self.addCleanup(self.tmp.cleanup)
        root = Path(self.tmp.name)
        self.a, self.b, self.c = (self._node(root, name) for name in ("a", "b", "c"))

    def _node(self, root: Path, name: str) -> Node:
        node = Node(root, name)
        self.addCleanup(node.stop)
        return node

    def _lenders(self, group: str):
        """The peers A finds lending in the group, or None when the look-up fails."""
        try:
            found = json.loads(self.a.ctl("resources", "find", "--group", group, "--json"))
        except (AssertionError, ValueError):
            return None
        return {m["offer"]["peer_id"] for m in found["matches"]}

    def test_a_hundred_jobs_run_on_the_two_lenders_with_exact_results(self):
        a, b, c = self.a, self.b, self.c
        for other in (b, c):
            a.ctl("dial", other.ctl("ticket"))
        group = a.ctl("groups", "create", "crunchers").split()[0]
        for member in (b, c):
            member.ctl("groups", "join", a.ctl("groups", "invite", group))
        everyone = {a.peer_id, b.peer_id, c.peer_id}
        for node in (a, b, c):
            wait_for("three members listed", lambda n=node: n.members(group) == everyone or None)
        for lender in (b, c):
            lender.ctl("resources", "share", "--cpu", "1", "--memory", "1GiB", "--to-group", group)
        lenders = {b.peer_id, c.peer_id}
        wait_for("A to find B and C lending", lambda: self._lenders(group) == lenders or None)

        # The example's default: 16 jobs in flight, more than a lender serves resource asks
        # from one peer at once (4): the submitting node places a few at a time and asks again.
        out = subprocess.run(
            [sys.executable, str(EXAMPLE), "--data-dir", str(a.dir), "--group", "crunchers"]
            + ["1-100"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_DEADLINE,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        report = f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
        self.assertEqual(out.returncode, 0, report)
        lines = out.stdout.splitlines()
        self.assertEqual(len(lines), 100, report)
        runners = set()
        for n, line in zip(range(1, 101), lines):
            self.assertEqual(line.split("\t")[:2], [str(n), str(collatz_steps(n))], report)
            runners.add(line.split("\t")[2])
        self.assertEqual(runners, {b.peer_id[-8:], c.peer_id[-8:]}, report)
        self.assertRegex(
            out.stderr.strip(), r"^100 jobs, 100 done, 0 failed, on 2 runners in \d+\.\ds$"
        )
        self.assertEqual(collatz_steps(27), 111)
