#!/usr/bin/env python3
"""Jobs map: runs a function compiled to WebAssembly on each of many inputs, across the peers of
a group that lend, and prints the results in input order.

    jobs_map.py [--data-dir DIR] --group GROUP [--module PATH] [--jobs N] [--deterministic]
                INPUT...

Each INPUT is a whole number (``27``) or an inclusive range (``1-100``); they are taken in the
order given. For each number N it submits one job (``Jobs.Submit``) running the module PATH
(default ``../../jobs/collatz.wat`` beside this script: the number of Collatz steps from N to 1)
with the one argument N, placed on the members of GROUP that lend (``Placement.group``: the
resource manager finds them; see ``p2pctl resources share --to-group``), each within 16 MiB of
memory and a quarter of a core. At most N jobs (``--jobs``, default 16) are in flight at once,
each followed on a thread until its last event, which carries its result. ``--deterministic``
runs them without a clock and with seeded random numbers.

It prints one line per input, in input order, as soon as that input and those before it are
done: ``N<TAB>RESULT<TAB>RUNNER``, RESULT being the job's standard output on one line and RUNNER
the last 8 characters of the peer id that ran it. A job that failed (its reason, e.g.
``NO_RUNNER``, ``TIMED_OUT``), was cancelled, or whose program exited non-zero prints
``N<TAB>error: REASON: message`` instead. Then, on standard error:
``100 jobs, 100 done, 0 failed, on 2 runners in 3.4s``.

It exits 0 when every job is done with exit code 0; 1 when one failed (the others still run), or
with ``error: <CODE>: <message>`` on standard error when the node refuses a call (no such group,
a spec out of bounds...) and then cancels the jobs in flight; 2 on bad usage (an input that is
not a number or a range, a module that cannot be read or is over 16 MiB); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set

import grpc

import p2pos
from p2pos.jobs.v1 import jobs_pb2, jobs_pb2_grpc

DEFAULT_MODULE = Path(__file__).resolve().parent.parent.parent / "jobs" / "collatz.wat"
DEFAULT_IN_FLIGHT = 16
MAX_IN_FLIGHT = 256
# At most this many inputs: one job each, and every result is held until printed.
MAX_INPUTS = 100_000
MEMORY_BYTES = 16 << 20
CPU = 0.25
# The node refuses larger modules (JobSpec.module).
MAX_MODULE_BYTES = 16 << 20


class UsageError(Exception):
    """The command line is wrong (exit 2)."""


class NodeError(Exception):
    """A call failed with a gRPC status: ``CODE: message``."""


def short(peer_id: str) -> str:
    """The end of a peer id: every ed25519 peer id starts with the same ``12D3KooW``."""
    return peer_id[-8:]


def one_line(data: bytes) -> str:
    """The output as text on one line: its trailing newline dropped, bytes that are not UTF-8
    replaced, control characters escaped."""
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def parse_inputs(words: List[str]) -> List[int]:
    """``["5", "1-3"]`` → ``[5, 1, 2, 3]``: whole numbers, and inclusive ranges ``A-B``."""
    numbers: List[int] = []
    for word in words:
        low, dash, high = word.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise UsageError(f"{word!r} is not a number or a range such as 1-100")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise UsageError(f"the range {word!r} is empty")
        if len(numbers) + (last - first + 1) > MAX_INPUTS:
            raise UsageError(f"more than {MAX_INPUTS} inputs")
        numbers.extend(range(first, last + 1))
    return numbers


@dataclass
class Outcome:
    """What one input gave: its result line's text, and who ran it."""

    text: str
    ok: bool
    runner: str = ""


def outcome(job: Optional[jobs_pb2.Job]) -> Outcome:
    """The outcome of a job's last snapshot."""
    if job is None:
        return Outcome("error: the node ended the job's stream without an event", False)
    runner = job.runs[-1].runner if job.runs else ""
    if job.state == jobs_pb2.DONE:
        result = job.result
        if result.exit_code != 0:
            why = one_line(result.stderr) or one_line(result.stdout)
            return Outcome(f"error: exit code {result.exit_code}: {why}", False, runner)
        return Outcome(one_line(result.stdout), True, runner)
    if job.state == jobs_pb2.FAILED:
        return Outcome(f"error: {jobs_pb2.Reason.Name(job.reason)}: {job.message}", False, runner)
    if job.state == jobs_pb2.CANCELLED:
        return Outcome(f"error: CANCELLED: {job.message}", False, runner)
    state = jobs_pb2.State.Name(job.state)
    return Outcome(f"error: the job's stream ended while it was {state}", False, runner)


class Mapper:
    """Submits the jobs and follows each; the first call the node refuses stops them all."""

    def __init__(self, jobs: jobs_pb2_grpc.JobsStub, template: jobs_pb2.JobSpec) -> None:
        self.jobs = jobs
        self.template = template
        self._lock = threading.Lock()
        self._calls: Set[object] = set()
        self.stopped: Optional[str] = None

    def run(self, n: int) -> Outcome:
        """Submits the job for ``n`` and follows it to its end (this thread's whole work)."""
        spec = jobs_pb2.JobSpec()
        spec.CopyFrom(self.template)
        spec.args.append(str(n))
        with self._lock:
            if self.stopped is not None:
                return Outcome("error: not submitted", False)
            call = self.jobs.Submit(jobs_pb2.SubmitRequest(spec=spec))
            self._calls.add(call)
        last = None
        try:
            for event in call:
                last = event.job
        except grpc.RpcError as err:
            self.stop(p2pos.describe_error(err))
            return Outcome("error: not completed", False)
        finally:
            with self._lock:
                self._calls.discard(call)
        return outcome(last)

    def stop(self, why: str) -> None:
        """Ends every call in flight, which cancels their jobs (they are not detached)."""
        with self._lock:
            if self.stopped is None:
                self.stopped = why
            calls = list(self._calls)
        for call in calls:
            call.cancel()


def map_jobs(node: p2pos.Connection, args: argparse.Namespace, inputs: List[int]) -> int:
    try:
        module = Path(args.module).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read the module {args.module}: {err.strerror}") from None
    if len(module) > MAX_MODULE_BYTES:
        raise UsageError(f"the module {args.module} is larger than 16 MiB")
    template = jobs_pb2.JobSpec(
        module=module,
        name=Path(args.module).stem[:64] or "job",
        placement=jobs_pb2.Placement(group=args.group),
        limits=jobs_pb2.Limits(memory_bytes=MEMORY_BYTES, cpu=CPU),
        deterministic=args.deterministic,
    )
    mapper = Mapper(jobs_pb2_grpc.JobsStub(node.channel), template)
    started = time.monotonic()
    done = failed = 0
    runners: Set[str] = set()
    pool = ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="job")
    try:
        futures = [pool.submit(mapper.run, n) for n in inputs]
        for n, future in zip(inputs, futures):
            result = future.result()
            if mapper.stopped is not None:
                raise NodeError(mapper.stopped)
            if result.ok:
                done += 1
                runners.add(result.runner)
                print(f"{n}\t{result.text}\t{short(result.runner)}", flush=True)
            else:
                failed += 1
                print(f"{n}\t{result.text}", flush=True)
    finally:
        mapper.stop(mapper.stopped or "the map was interrupted")
        pool.shutdown(wait=True, cancel_futures=True)
    took = time.monotonic() - started
    print(
        f"{len(inputs)} jobs, {done} done, {failed} failed, on {len(runners)} runners "
        f"in {took:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    return 0 if failed == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Maps a WebAssembly function over inputs across a group's peers that lend."
    )
    parser.add_argument("--data-dir", help="the node's data directory (its gateway.sock)")
    parser.add_argument("--group", required=True, help="the group: its id, or its name here")
    parser.add_argument(
        "--module",
        default=str(DEFAULT_MODULE),
        help="the WebAssembly module or text to run (default: userland/jobs/collatz.wat)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_IN_FLIGHT,
        help=f"jobs in flight at once (default {DEFAULT_IN_FLIGHT}, at most {MAX_IN_FLIGHT})",
    )
    parser.add_argument(
        "--deterministic", action="store_true", help="no clock, seeded random numbers"
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="a number, or a range A-B")
    args = parser.parse_args()
    try:
        if not 1 <= args.jobs <= MAX_IN_FLIGHT:
            raise UsageError(f"--jobs is 1 to {MAX_IN_FLIGHT}")
        if not args.group.strip():
            raise UsageError("--group is empty")
        inputs = parse_inputs(args.inputs)
        with p2pos.connect(args.data_dir) as node:
            return map_jobs(node, args, inputs)
    except KeyboardInterrupt:
        return 130
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (p2pos.TargetError, NodeError) as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
