"""queuetopia_py's side of bench/compare.py: the worker and producer processes it runs,
and the untimed set-up it calls in its own process (migrate, pre-enqueue, history fill).

Run by compare.py, one fresh interpreter per measured run:

    python ours.py throughput --url URL --queues Q --per-queue N [--concurrency 10]
                              [--poll-interval 60] [--timeout 300] [--performer async]
    python ours.py enqueue --url URL [--single 2000] [--bulk 50000] [--batch 1000]
    python ours.py latency-worker --url URL --jobs 300 --queues 10 [--concurrency 10]
                                  [--poll-interval 60] [--timeout 120]
    python ours.py latency-producer --url URL --jobs 300 --queues 10 [--spacing 0.02]

Each prints one result line (see workerio.py). The throughput worker counts a job once
its success is recorded (`Performer.handle_succeeded_job`) and times from just before
the node is made and started until the last job is recorded; `perform` logs each
queue's order, checked against the enqueue order.
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from workerio import (
    OrderLog,
    Stopwatch,
    add_worker_arguments,
    emit,
    expected_interleaved,
    expected_spread,
    interleaved,
    ready,
    spread,
    throughput_result,
)

from queuetopia_py import Job, Performer, Queuetopia, migrate

#: The scope every node of the benchmark uses (and the history fill writes).
SCOPE = "bench"
ACTION = "noop"
#: Jobs per create_jobs call when pre-enqueueing.
PREPARE_BATCH = 5_000


class Recorder(Performer):
    """A no-op performer that logs each queue's order, notes when each attempt started
    (`time.time()`, for latencies), and counts recorded successes."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.log = OrderLog()
        self.started: dict[int, float] = {}
        self.lock = threading.Lock()
        self.recorded = 0
        self.finished_at: float | None = None
        self.done = threading.Event()

    def perform(self, job: Job) -> object:
        return self.note(job)

    def handle_succeeded_job(self, job: Job) -> None:
        self.count()

    def note(self, job: Job) -> None:
        """An attempt started: its time, and its place in its queue's order."""
        now = time.time()
        i = int(job.params["i"])
        self.started[i] = now
        self.log.record(job.queue, i)

    def count(self) -> None:
        """A success was recorded."""
        with self.lock:
            self.recorded += 1
            if self.recorded == self.total:
                self.finished_at = time.perf_counter()
                self.done.set()


class AsyncRecorder(Recorder):
    """The same no-op performer, written with `async def` (`--performer async`): its
    attempts run as tasks of the node's event loop."""

    async def perform(self, job: Job) -> object:  # type: ignore[override]
        return self.note(job)

    async def handle_succeeded_job(self, job: Job) -> None:  # type: ignore[override]
        self.count()


#: The no-op performers `--performer` chooses from.
RECORDERS: dict[str, type[Recorder]] = {"sync": Recorder, "async": AsyncRecorder}


# -- set-up, called in compare.py's process (untimed) ------------------------------------


def prepare(url: str, queues: int, per_queue: int) -> None:
    """Migrate a fresh database and enqueue Q x N jobs, interleaved, in bulk."""
    migrate(url)
    enqueue_interleaved(url, queues, per_queue)


def enqueue_interleaved(
    url: str, queues: int, per_queue: int, batch_size: int = PREPARE_BATCH
) -> None:
    """Enqueue Q x N jobs, interleaved, with `create_jobs`, `batch_size` a call."""
    node = Queuetopia(repo=url, scope=SCOPE)
    batch: list[dict[str, Any]] = []
    for queue, i in interleaved(queues, per_queue):
        batch.append({"queue": queue, "action": ACTION, "params": {"i": i}})
        if len(batch) == batch_size:
            node.create_jobs(batch)
            batch = []
    if batch:
        node.create_jobs(batch)
    node.stop()


def fill_history(url: str, backend: str, rows: int, queues: int) -> float:
    """Add `rows` done jobs of SCOPE over `queues` queues (q0, q1, ...: the measured
    queues have history too), as completed attempts look (state "done", done_at set).
    Returns the seconds it took. Done jobs have no place in the queues table: nothing
    to fill there."""
    # status.py owns the bulk loader (INSERT ... SELECT over a generated series).
    from status import Dialect, insert_series, job_values

    from queuetopia_py._schema import build_tables

    watch = Stopwatch()
    jobs = build_tables().jobs
    d = Dialect(backend, datetime.now(UTC))
    # Job n (1..rows) was scheduled and attempted `rows + 1 - n` seconds ago and done a
    # second later (no negative term: MariaDB's series is unsigned).
    start = rows + 1
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if backend == "sqlite":
            conn.exec_driver_sql("PRAGMA cache_size = -1000000")
        insert_series(
            conn,
            d,
            jobs,
            rows,
            job_values(
                d,
                scope=f"'{SCOPE}'",
                queue=d.cat("'q'", f"n % {queues}"),
                first=0,
                rows=start,
                attempts="1",
                attempted_at=d.ago(f"{start} - n"),
                attempted_by="'history-node'",
                done_at=d.ago(f"{rows} - n"),
                result="NULL",
                state="'done'",
            ),
        )
    engine.dispose()
    return watch.elapsed()


# -- worker and producer processes --------------------------------------------------------


def _node(args: argparse.Namespace, recorder: Recorder) -> Queuetopia:
    """A started node of the benchmark's scope with the worker's settings."""
    node = Queuetopia(
        repo=args.url,
        scope=SCOPE,
        performer=recorder,
        max_concurrency=args.concurrency,
        poll_interval=args.poll_interval,
    )
    node.start()
    return node


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    total = args.queues * args.per_queue
    recorder = RECORDERS[args.performer](total)
    watch = Stopwatch()
    node = _node(args, recorder)
    finished = recorder.done.wait(args.timeout)
    seconds = recorder.finished_at - watch.started if recorder.finished_at else None
    elapsed, done = watch.elapsed(), recorder.recorded
    node.stop(timeout=30)
    if not finished:
        return throughput_result(total, None, None, done=done, elapsed=elapsed)
    order = recorder.log.problems(expected_interleaved(args.queues, args.per_queue))
    return throughput_result(total, seconds, order)


def run_enqueue(args: argparse.Namespace) -> dict[str, Any]:
    node = Queuetopia(repo=args.url, scope=SCOPE)
    for queue, i in spread(10, args.queues):  # warm-up: connections, caches
        node.create_job(queue, ACTION, {"i": i})
    watch = Stopwatch()
    for queue, i in spread(args.single, args.queues):
        node.create_job(queue, ACTION, {"i": i})
    single = watch.elapsed()
    items = [
        {"queue": queue, "action": ACTION, "params": {"i": i}}
        for queue, i in spread(args.bulk, args.queues)
    ]
    watch = Stopwatch()
    for start in range(0, len(items), args.batch):
        node.create_jobs(items[start : start + args.batch])
    bulk = watch.elapsed()
    node.stop()
    return {
        "single_rate": args.single / single,
        "bulk_rate": args.bulk / bulk,
        "single_api": "create_job",
        "bulk_api": f"create_jobs, {args.batch} a call",
    }


def run_latency_worker(args: argparse.Namespace) -> dict[str, Any]:
    recorder = RECORDERS[args.performer](args.jobs)
    node = _node(args, recorder)
    ready()
    finished = recorder.done.wait(args.timeout)
    node.stop(timeout=30)
    result: dict[str, Any] = {"started": {str(i): t for i, t in recorder.started.items()}}
    if not finished:
        result["error"] = f"timeout: {recorder.recorded}/{args.jobs} jobs done"
    order = recorder.log.problems(expected_spread(args.jobs, args.queues))
    if finished and order:
        result["error"] = "order violated: " + "; ".join(order)
    return result


def run_latency_producer(args: argparse.Namespace) -> dict[str, Any]:
    node = Queuetopia(repo=args.url, scope=SCOPE)
    with node.engine.connect():  # open the pool's connection before the first job
        pass
    created: dict[str, float] = {}
    start = time.monotonic()
    for queue, i in spread(args.jobs, args.queues):
        time.sleep(max(0.0, start + i * args.spacing - time.monotonic()))
        created[str(i)] = time.time()
        node.create_job(queue, ACTION, {"i": i})
    node.stop()
    return {"created": created}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_worker_arguments(parser)
    parser.add_argument("--poll-interval", type=float, default=60.0)
    parser.add_argument(
        "--performer",
        choices=("sync", "async"),
        default="sync",
        help="the no-op performer: def perform, or async def perform (default sync)",
    )
    args = parser.parse_args()
    run = {
        "throughput": run_throughput,
        "enqueue": run_enqueue,
        "latency-worker": run_latency_worker,
        "latency-producer": run_latency_producer,
    }[args.role]
    emit(run(args))


if __name__ == "__main__":
    main()
