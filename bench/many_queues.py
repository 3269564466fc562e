"""Many queues: one node runs 100,000 distinct queues of one job each to completion.

    python bench/many_queues.py [--backends sqlite,postgresql,mariadb] [--queues 100000]
                                [--batch 5000] [--analyze] [--timeout 1800] [--json OUT]

For each backend, on a fresh database (bench/benchdb.py): the jobs are enqueued with
`create_jobs`, `--batch` a call (one job in each of the queues q0, q1, ...); then ONE node
(default options: max_concurrency 10) with a performer that does nothing runs them all,
in a subprocess of its own so that its peak RSS is its own (VmHWM, read from
/proc/<pid>/status while it runs).

Printed per backend:

- enqueue s: the `create_jobs` calls;
- run s and jobs/s: in the node, from start() until the last success is recorded;
- peak RSS of the node process, MB;
- the scheduler's poll: how many polls ran, and the p50 / p95 / max of their duration
  (timed inside the node process through an internal hook: `time_polls`);
- page s, status s and CLI s: `status(limit=100)` (a page, blocked queues first),
  `status()` (every queue) and the command `queuetopia queues --repo URL` (a page of 100;
  a subprocess: its Python start-up included), from this process once the node has
  recorded half of the jobs (or at the timeout), with the count of queues status() saw
  pending; they share the machine with the running node, as an operator's would.

`--analyze` gathers the database's statistics once the jobs are enqueued (untimed), as
autovacuum would have on a server that runs it.

A run that has not finished after `--timeout` seconds is stopped, and the fraction of
jobs done is reported instead.

The node process is this script run with `--node-url URL` (an internal option).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchdb import fresh_databases
from ours import SCOPE, enqueue_interleaved
from status import analyze, p95
from workerio import RESULT_PREFIX, Stopwatch, emit

from queuetopia_py import Event, Job, Performer, Queuetopia

#: The node prints this line once half of the jobs are recorded as done.
HALF_LINE = "BENCH-HALF"
#: Seconds the node has to stop after its timeout, and to report, before it is killed.
STOP_GRACE = 120.0


# -- the node process ---------------------------------------------------------------------


def time_polls(durations: list[float]) -> None:
    """Append the duration (s) of each of the scheduler's polls in this process to
    `durations`.

    INTERNAL HOOK, the only place this script reaches inside the engine: today the poll
    is `ClaimStore.poll(limit)` (queuetopia_py/_store/claims.py: one read of the queues
    table), called by `Scheduler._poll` (scheduler.py). Re-point this wrapper when the
    engine changes.
    """
    from queuetopia_py._store.claims import ClaimStore, PollResult

    poll = ClaimStore.poll

    @functools.wraps(poll)
    def timed(self: ClaimStore, limit: int) -> PollResult:
        started = time.perf_counter()
        try:
            return poll(self, limit)
        finally:
            durations.append(time.perf_counter() - started)

    ClaimStore.poll = timed  # type: ignore[method-assign]


class NoOp(Performer):
    def perform(self, job: Job) -> object:
        return None


class Progress:
    """Counts recorded successes (attempt_succeeded events); says when half are done
    (HALF_LINE on stdout) and when all are."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.lock = threading.Lock()
        self.done = 0
        self.finished_at: float | None = None
        self.all_done = threading.Event()

    def on_success(self, _event: Event) -> None:
        with self.lock:
            self.done += 1
            done = self.done
        if done == self.total // 2:
            print(HALF_LINE, flush=True)
        if done == self.total:
            self.finished_at = time.perf_counter()
            self.all_done.set()


def run_node(url: str, total: int, timeout: float) -> None:
    """The node process: run every job (or until `timeout`), then report one result line."""
    polls: list[float] = []
    time_polls(polls)
    progress = Progress(total)
    node = Queuetopia(repo=url, scope=SCOPE, performer=NoOp())
    node.subscribe(progress.on_success, kinds=["attempt_succeeded"])
    watch = Stopwatch()
    node.start()
    finished = progress.all_done.wait(timeout)
    elapsed = watch.elapsed()
    node.stop(timeout=30)
    emit(
        {
            "done": progress.done,
            "seconds": progress.finished_at - watch.started if finished else None,
            "elapsed": elapsed,
            "polls": polls,
        }
    )


# -- the parent ---------------------------------------------------------------------------


class NodeProcess:
    """The node subprocess: its output read on a thread, its peak RSS sampled."""

    def __init__(self, url: str, total: int, timeout: float) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [
                *(sys.executable, __file__),
                *("--node-url", url, "--queues", str(total), "--timeout", str(timeout)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.half = threading.Event()  # half of the jobs done, or the node ended
        self.result: dict[str, Any] | None = None
        self.peak_kb: int | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.sample_rss()
            if line.startswith(HALF_LINE):
                self.half.set()
            elif line.startswith(RESULT_PREFIX):
                self.result = json.loads(line[len(RESULT_PREFIX) :])
        self.half.set()

    def sample_rss(self) -> None:
        """Read the process's peak resident set (Linux: VmHWM) while it lives."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_kb = max(self.peak_kb or 0, int(line.split()[1]))

    def wait(self) -> dict[str, Any] | str:
        """Its result; or why there is none (it did not report in time and was killed,
        or it failed)."""
        deadline = time.monotonic() + self.timeout + STOP_GRACE
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.sample_rss()
            time.sleep(0.5)
        killed = self.proc.poll() is None
        if killed:
            self.proc.kill()
        code = self.proc.wait()
        self.reader.join(10)
        if self.result is not None:
            return self.result
        return "node did not report in time; killed" if killed else f"node failed (exit {code})"


def time_cli(url: str) -> float:
    """Seconds `queuetopia queues --repo URL` takes, start-up included."""
    beside = Path(sys.executable).with_name("queuetopia")
    script = str(beside) if beside.exists() else shutil.which("queuetopia") or "queuetopia"
    started = time.perf_counter()
    subprocess.run([script, "queues", "--repo", url], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_backend(url: str, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Enqueue, run the node, and read the table mid-run; the figures as a dict."""
    watch = Stopwatch()
    enqueue_interleaved(url, args.queues, 1, args.batch)
    out: dict[str, Any] = {"backend": backend, "jobs": args.queues, "enqueue": watch.elapsed()}
    if args.analyze:
        analyze(url, backend)
    ops = Queuetopia(repo=url, scope=SCOPE)
    try:
        node = NodeProcess(url, args.queues, args.timeout)
        node.half.wait(args.timeout)
        if node.proc.poll() is None:
            watch = Stopwatch()
            ops.status(limit=100)
            out["status_page"] = watch.elapsed()
            watch = Stopwatch()
            status = ops.status()
            out["status"] = watch.elapsed()
            out["pending_at_status"] = status.queue_count
            out["cli"] = time_cli(url)
        result = node.wait()
        out["peak_rss_mb"] = None if node.peak_kb is None else node.peak_kb / 1024
        if isinstance(result, str):  # no report: count what it did from the table
            done = ops.paginate_jobs(page_size=1, state="done").total
            return {**out, "done": done, "error": result}
    finally:
        ops.stop()
    polls = result["polls"]
    out.update(
        done=result["done"],
        run=result["seconds"],
        polls=len(polls),
        poll_p50=statistics.median(polls) if polls else None,
        poll_p95=p95(polls) if polls else None,
        poll_max=max(polls, default=None),
    )
    if result["seconds"] is None:
        out["error"] = f"timeout after {result['elapsed']:.0f} s"
    return out


def fmt(value: float | None, spec: str, width: int, scale: float = 1.0) -> str:
    return f"{'-' if value is None else format(value * scale, spec):>{width}}"


def print_row(r: dict[str, Any]) -> None:
    run = r.get("run")
    rate = r["jobs"] / run if run else None
    print(
        f"{r['backend']:<11}{r['jobs']:>9,}"
        + fmt(r["enqueue"], ".1f", 11)
        + fmt(run, ".1f", 8)
        + fmt(rate, ",.0f", 8)
        + fmt(r.get("peak_rss_mb"), ".0f", 9)
        + f"{r.get('polls', '-'):>7}"
        + fmt(r.get("poll_p50"), ".1f", 9, 1000)
        + fmt(r.get("poll_p95"), ".1f", 9, 1000)
        + fmt(r.get("poll_max"), ".1f", 9, 1000)
        + fmt(r.get("status_page"), ".3f", 8)
        + fmt(r.get("status"), ".2f", 10)
        + fmt(r.get("cli"), ".2f", 7)
        + f"{r.get('pending_at_status', '-'):>9}"
        + (f"  {r['error']}: {r['done'] / r['jobs']:.1%} done" if r.get("error") else ""),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--queues", type=int, default=100_000, help="queues, one job each")
    parser.add_argument("--batch", type=int, default=5_000, help="jobs per create_jobs call")
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="gather the database's statistics once the jobs are enqueued",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--node-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.getLogger("queuetopia_py").setLevel(logging.WARNING)
    if args.node_url is not None:
        run_node(args.node_url, args.queues, args.timeout)
        return 0

    print(
        f"python {sys.version.split()[0]}; {args.queues:,} queues of one job; one node "
        f"(default options) in a subprocess; status and CLI taken at half the jobs done"
    )
    print(
        f"{'backend':<11}{'jobs':>9}{'enqueue s':>11}{'run s':>8}{'jobs/s':>8}{'RSS MB':>9}"
        f"{'polls':>7}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'page s':>8}{'status s':>10}"
        f"{'CLI s':>7}{'queues':>9}"
    )
    results = []
    for backend, url in fresh_databases(args.backends):
        results.append(run_backend(url, backend, args))
        print_row(results[-1])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
