"""Fairness: blocked queues must not starve flowing ones.

    python bench/fairness.py [--backends sqlite,postgresql,mariadb] [--runs 3]
                             [--queues 100] [--per-queue 30] [--blocked 1000] [--behind 2]
                             [--blocked-backoff SECONDS] [--analyze] [--timeout 600]
                             [--json OUT]

One node with the default options (max_concurrency 10, poll_interval 60 s) and a
performer that does nothing, except for the blocked queues' jobs, where it raises. The
flowing work is 100 queues x 30 jobs, created with one `create_jobs` call (job 0 of every
queue, then job 1, ...) while the node runs, and timed from just before that call until
the last success is recorded (the attempt_succeeded event):

- alone: the node is started on an empty table, then the flowing jobs are created;
- beside: 1,000 blocked queues are created first, each a head job that always fails and
  2 jobs behind it; the node is started and left until every blocked head has failed at
  least once (attempt_failed events), then the flowing jobs are created.

`--blocked-backoff` sets the delay before a failed blocked head's next attempt: with it
(3600, say) the blocked queues are ones that have been failing for a while, whose heads
are not due during the run and must cost nothing; without it they retry after the
default backoff (2 s, 3 s, 5 s...), heads that have just begun to fail, whose retries
during the run are work the flowing queues share the node with.

`--analyze` gathers the database's statistics once set up (beside: with the blocked
queues' jobs in the tables), as autovacuum would have on a server that runs it: without
statistics, PostgreSQL may reach a queue's row and jobs through the scope's indexes,
and the blocked queues' rows slow every record (docs/performance.md).

Both runs time the same path (jobs created for a running node), so that the ratio
beside / alone (target: at most 1.2) is the cost of the blocked queues alone. Each run is
a fresh database (bench/benchdb.py); `--runs N` alternates alone and beside runs, and
the table shows medians.

Printed per backend: alone s, beside s, their ratio, the wait of the first flowing job
(its job_created event to its attempt_started event, alone and beside), the attempts
started on blocked queues during the flowing run, and how long the blocked heads took
to fail once (set-up). Every run checks, from the attempt_started events, that each
flowing queue started its jobs in creation order, each once; a violation is printed and
the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchdb import fresh_database
from status import analyze
from workerio import OrderLog, expected_interleaved, interleaved

from queuetopia_py import Event, EventKind, Job, Performer, Queuetopia, migrate

SCOPE = "bench"
FLOWING_ACTION = "noop"
BLOCKED_ACTION = "fail"


class FailBlocked(Performer):
    """Does nothing for flowing jobs; raises for the blocked queues' jobs, which are
    retried after `backoff` seconds (None: the default backoff)."""

    def __init__(self, backoff: float | None) -> None:
        self.blocked_backoff = backoff

    def perform(self, job: Job) -> object:
        if job.action == BLOCKED_ACTION:
            raise RuntimeError("fairness bench: this queue stays blocked")
        return None

    def backoff(self, job: Job) -> timedelta:
        if self.blocked_backoff is None:
            return super().backoff(job)
        return timedelta(seconds=self.blocked_backoff)


class Probe:
    """What one run learns from the node's events (thread-safe: runners emit them).

    Flowing jobs are told from blocked ones by their action.
    """

    def __init__(self, blocked: int, flowing: int) -> None:
        self.lock = threading.Lock()
        self.blocked = blocked
        self.flowing = flowing
        self.failed_queues: set[str] = set()
        self.blocked_failed = threading.Event()  # every blocked head failed at least once
        self.order = OrderLog()
        self.first_created: tuple[int, datetime] | None = None  # first flowing job, when
        self.started_at: dict[int, datetime] = {}  # flowing job id -> attempt started
        self.succeeded = 0
        self.finished_at: float | None = None  # perf_counter of the last flowing success
        self.flowing_done = threading.Event()
        self.window = False  # counting the blocked queues' attempts
        self.blocked_attempts = 0

    def on_event(self, event: Event) -> None:
        job = event.job
        if job is None:
            return
        with self.lock:
            if job.action == BLOCKED_ACTION:
                self._on_blocked(event, job)
            else:
                self._on_flowing(event, job)

    def _on_blocked(self, event: Event, job: Job) -> None:
        if event.kind is EventKind.ATTEMPT_STARTED and self.window:
            self.blocked_attempts += 1
        elif event.kind is EventKind.ATTEMPT_FAILED:
            self.failed_queues.add(job.queue)
            if len(self.failed_queues) == self.blocked:
                self.blocked_failed.set()

    def _on_flowing(self, event: Event, job: Job) -> None:
        if event.kind is EventKind.JOB_CREATED and self.first_created is None:
            self.first_created = (job.id, event.at)
        elif event.kind is EventKind.ATTEMPT_STARTED:
            self.started_at.setdefault(job.id, event.at)
            self.order.record(job.queue, int(job.params["i"]))
        elif event.kind is EventKind.ATTEMPT_SUCCEEDED:
            self.succeeded += 1
            if self.succeeded == self.flowing:
                self.finished_at = time.perf_counter()
                self.window = False
                self.flowing_done.set()

    def first_wait(self) -> float | None:
        """Seconds from the first flowing job's creation to the start of its attempt."""
        if self.first_created is None:
            return None
        job_id, created = self.first_created
        started = self.started_at.get(job_id)
        return None if started is None else (started - created).total_seconds()


def blocked_items(queues: int, behind: int) -> list[dict[str, Any]]:
    """The blocked queues' jobs: each queue's failing head, then `behind` jobs."""
    return [
        {"queue": f"blocked{q}", "action": BLOCKED_ACTION, "params": {"i": i}}
        for q in range(queues)
        for i in range(1 + behind)
    ]


def one_run(url: str, backend: str, args: argparse.Namespace, beside: bool) -> dict[str, Any]:
    """One measured run on the fresh database `url` of `backend`; its figures as a dict."""
    flowing = args.queues * args.per_queue
    blocked = args.blocked if beside else 0
    probe = Probe(blocked, flowing)
    node = Queuetopia(repo=url, scope=SCOPE, performer=FailBlocked(args.blocked_backoff))
    node.subscribe(probe.on_event)
    result: dict[str, Any] = {"kind": "beside" if beside else "alone", "blocked": blocked}
    try:
        if blocked:
            node.create_jobs(blocked_items(blocked, args.behind))
        set_up = time.perf_counter()
        node.start()
        if blocked:
            if not probe.blocked_failed.wait(args.timeout):
                failed = len(probe.failed_queues)
                return {**result, "error": f"only {failed}/{blocked} blocked heads failed"}
            result["set_up_seconds"] = time.perf_counter() - set_up
        if args.analyze:
            analyze(url, backend)
        items = [
            {"queue": queue, "action": FLOWING_ACTION, "params": {"i": i}}
            for queue, i in interleaved(args.queues, args.per_queue)
        ]
        probe.window = True
        started = time.perf_counter()
        node.create_jobs(items)
        if not probe.flowing_done.wait(args.timeout):
            return {**result, "error": f"timeout: {probe.succeeded}/{flowing} flowing jobs done"}
    finally:
        node.stop(timeout=30)
    assert probe.finished_at is not None
    return {
        **result,
        "seconds": probe.finished_at - started,
        "first_wait": probe.first_wait(),
        "blocked_attempts": probe.blocked_attempts,
        "order_problems": probe.order.problems(expected_interleaved(args.queues, args.per_queue)),
    }


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summary(backend: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of a backend's runs."""
    alone = [r for r in runs if r["kind"] == "alone"]
    beside = [r for r in runs if r["kind"] == "beside"]
    alone_s, beside_s = median_of(alone, "seconds"), median_of(beside, "seconds")
    return {
        "backend": backend,
        "alone_seconds": alone_s,
        "beside_seconds": beside_s,
        "ratio": beside_s / alone_s if alone_s and beside_s else None,
        "first_wait_alone": median_of(alone, "first_wait"),
        "first_wait_beside": median_of(beside, "first_wait"),
        "blocked_attempts": median_of(beside, "blocked_attempts"),
        "set_up_seconds": median_of(beside, "set_up_seconds"),
        "errors": [r["error"] for r in runs if r.get("error")],
        "order_problems": [p for r in runs for p in r.get("order_problems", [])],
        "runs": runs,
    }


def cell(value: float | None, fmt: str, width: int, scale: float = 1.0) -> str:
    return f"{'-' if value is None else format(value * scale, fmt):>{width}}"


def print_row(s: dict[str, Any]) -> None:
    print(
        f"{s['backend']:<11}"
        + cell(s["alone_seconds"], ".2f", 9)
        + cell(s["beside_seconds"], ".2f", 10)
        + cell(s["ratio"], ".2f", 8)
        + cell(s["first_wait_alone"], ".1f", 15, 1000)
        + cell(s["first_wait_beside"], ".1f", 16, 1000)
        + cell(s["blocked_attempts"], ".0f", 18)
        + cell(s["set_up_seconds"], ".1f", 10)
        + ("  ORDER VIOLATED" if s["order_problems"] else "")
        + ("  ERROR" if s["errors"] else ""),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=3, help="alone/beside pairs")
    parser.add_argument("--queues", type=int, default=100, help="flowing queues")
    parser.add_argument("--per-queue", type=int, default=30, help="jobs per flowing queue")
    parser.add_argument("--blocked", type=int, default=1_000, help="blocked queues")
    parser.add_argument("--behind", type=int, default=2, help="jobs behind each blocked head")
    parser.add_argument(
        "--blocked-backoff",
        type=float,
        default=None,
        help="seconds before a blocked head's next attempt (default: the default backoff)",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="gather the database's statistics once set up, before the flowing jobs",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds, per wait")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    # Thousands of failed attempts would each log a warning.
    logging.getLogger("queuetopia_py").setLevel(logging.ERROR)

    backoff = (
        "the default backoff"
        if args.blocked_backoff is None
        else f"a {args.blocked_backoff:g} s backoff"
    )
    print(
        f"python {sys.version.split()[0]}; {args.queues}x{args.per_queue} flowing jobs, "
        f"beside {args.blocked} blocked queues (head + {args.behind}, retried after "
        f"{backoff}); one node, default options; median of {args.runs} runs; target "
        "ratio <= 1.2"
    )
    print(
        f"{'backend':<11}{'alone s':>9}{'beside s':>10}{'ratio':>8}"
        f"{'wait alone ms':>15}{'wait beside ms':>16}{'blocked attempts':>18}{'set-up s':>10}"
    )
    summaries = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            runs = []
            for _ in range(args.runs):
                for beside in (False, True):
                    with fresh_database(backend, Path(tmp)) as url:
                        migrate(url)
                        runs.append(one_run(url, backend, args, beside))
            summaries.append(summary(backend, runs))
            print_row(summaries[-1])
    failed = False
    for s in summaries:
        for problem in s["order_problems"]:
            print(f"ORDER VIOLATED ({s['backend']}): {problem}", file=sys.stderr)
        for error in s["errors"]:
            print(f"ERROR ({s['backend']}): {error}", file=sys.stderr)
        failed = failed or bool(s["order_problems"] or s["errors"])
    if args.json is not None:
        args.json.write_text(json.dumps(summaries, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
