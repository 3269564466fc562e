"""The peers' side of bench/compare.py: pgqueuer 1.6 and procrastinate 3.10 workers and
producers (PostgreSQL only), and their untimed set-up (schema install, pre-enqueue).

Run by compare.py, one fresh interpreter per measured run:

    python peers.py pgqueuer|procrastinate throughput --url URL --queues Q --per-queue N
                    [--mode ordered|unordered] [--concurrency 10] [--timeout 300]
    python peers.py pgqueuer|procrastinate enqueue --url URL [--single 2000] [--bulk 50000]
    python peers.py pgqueuer|procrastinate latency-worker --url URL --jobs 300 --queues 10
    python peers.py pgqueuer|procrastinate latency-producer --url URL --jobs 300 --queues 10

How each peer keeps a queue in order:

- pgqueuer: one entrypoint per queue, named after it, with `concurrency_limit=1` (a job of
  an entrypoint is picked only when none of it is picked; picks go by id). Its unordered
  mode (`--mode unordered`) is one entrypoint "noop" without a limit. The worker is a
  `QueueManager` over one asyncpg connection with its default run settings (dequeue_timeout
  30 s, LISTEN/NOTIFY wake-ups; batch_size 10 unless --batch-size); it records completions
  through its buffered log (flushed every ~0.1 s or each `batch_size` jobs).
- procrastinate: every job of queue q is deferred with `lock=q` (a job runs only when no
  earlier job of its lock is waiting or running), in procrastinate's "default" queue, by
  a worker of `concurrency` (default 10) over its psycopg connector (a pool of
  `concurrency` connections), LISTEN/NOTIFY on. A NOTIFY comes only when a job is
  inserted: a job whose lock was busy when the worker last looked waits for the next
  poll (`--poll-interval`, default 5 s, procrastinate's own default).

The throughput worker counts a job when its task/entrypoint returns, then waits until
the database shows every job recorded (pgqueuer: its queue table empty, a done job being
moved to its log; procrastinate: no job 'todo' or 'doing') and times from just before it
opens its connections until then. The order of each queue is checked as in ours.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import asyncpg
import psycopg
import sqlalchemy as sa
from pgqueuer import AsyncpgDriver, Job, QueueManager
from pgqueuer.queries import Queries
from procrastinate import App, PsycopgConnector
from procrastinate import jobs as proc_jobs
from workerio import (
    OrderLog,
    Stopwatch,
    add_worker_arguments,
    emit,
    expected_interleaved,
    expected_spread,
    interleaved,
    queue_name,
    ready,
    spread,
    throughput_result,
)

PEERS = ("pgqueuer", "procrastinate")
TASK = "noop"
PROC_QUEUE = "default"
PREPARE_BATCH = 5_000
#: Sleep between two reads of the database while waiting for the last records.
RECORD_POLL = 0.005


def dsn(url: str) -> str:
    """A libpq URL from the SQLAlchemy URL of benchdb.fresh_database."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def payload(queue: str, i: int) -> bytes:
    return json.dumps({"q": queue, "i": i}).encode()


class Progress:
    """Performed jobs: the order log, start times, and an event once `total` ran."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.log = OrderLog()
        self.started: dict[int, float] = {}
        self.all_performed = asyncio.Event()

    def performed(self, queue: str, i: int) -> None:
        self.started[i] = time.time()
        if self.log.record(queue, i) >= self.total:
            self.all_performed.set()


async def wait_recorded(url: str, sql: str, deadline: float) -> bool:
    """Poll `sql` (a count) on a connection of its own until it is 0 or the deadline."""
    async with await psycopg.AsyncConnection.connect(dsn(url), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = await (await conn.execute(sql)).fetchone()
            if row is not None and row[0] == 0:
                return True
            await asyncio.sleep(RECORD_POLL)
    return False


# -- pgqueuer -------------------------------------------------------------------------------


async def pgq_install(url: str) -> None:
    conn = await asyncpg.connect(dsn(url))
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def pgq_enqueue(conn: asyncpg.Connection, items: list[tuple[str, str, int]]) -> None:
    """Enqueue (entrypoint, queue, i) items, in chunks of one query each."""
    queries = Queries(AsyncpgDriver(conn))
    for start in range(0, len(items), PREPARE_BATCH):
        chunk = items[start : start + PREPARE_BATCH]
        await queries.enqueue(
            [e for e, _, _ in chunk], [payload(q, i) for _, q, i in chunk], [0] * len(chunk)
        )


async def pgq_prepare(url: str, queues: int, per_queue: int, ordered: bool) -> None:
    await pgq_install(url)
    conn = await asyncpg.connect(dsn(url))
    try:
        items = [(q if ordered else TASK, q, i) for q, i in interleaved(queues, per_queue)]
        await pgq_enqueue(conn, items)
    finally:
        await conn.close()


def pgq_manager(conn: asyncpg.Connection, names: list[str], limit: int, on_job: Any) -> Any:
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    async def handler(job: Job) -> None:
        body = json.loads(job.payload or b"{}")
        on_job(body["q"], body["i"])

    for name in names:
        qm.entrypoint(name, concurrency_limit=limit)(handler)
    return qm


async def pgq_throughput(args: argparse.Namespace) -> dict[str, Any]:
    ordered = args.mode == "ordered"
    total = args.queues * args.per_queue
    progress = Progress(total)
    watch = Stopwatch()
    deadline = time.monotonic() + args.timeout
    conn = await asyncpg.connect(dsn(args.url))
    names = [queue_name(q) for q in range(args.queues)] if ordered else [TASK]
    qm = pgq_manager(conn, names, 1 if ordered else 0, progress.performed)
    run = asyncio.create_task(qm.run(batch_size=args.batch_size))
    try:
        await asyncio.wait_for(progress.all_performed.wait(), deadline - time.monotonic())
        table = qm.queries.qbe.settings.queue_table
        recorded = await wait_recorded(args.url, f"SELECT count(*) FROM {table}", deadline)
    except TimeoutError:
        recorded = False
    seconds = watch.elapsed() if recorded else None
    elapsed, done = watch.elapsed(), progress.log.count
    qm.shutdown.set()
    with suppress(Exception):
        await asyncio.wait_for(run, 30)
    await conn.close()
    settings = {
        "batch_size": args.batch_size,
        "entrypoints": len(names),
        "concurrency_limit": int(ordered),
    }
    if seconds is None:
        return throughput_result(total, None, None, done=done, elapsed=elapsed, **settings)
    order = progress.log.problems(expected_interleaved(args.queues, args.per_queue))
    return throughput_result(total, seconds, order if ordered else None, **settings)


async def pgq_enqueue_rate(args: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn(args.url))
    queries = Queries(AsyncpgDriver(conn))
    for queue, i in spread(10, args.queues):
        await queries.enqueue(queue, payload(queue, i))
    watch = Stopwatch()
    for queue, i in spread(args.single, args.queues):
        await queries.enqueue(queue, payload(queue, i))
    single = watch.elapsed()
    items = list(spread(args.bulk, args.queues))
    watch = Stopwatch()
    for start in range(0, len(items), args.batch):
        chunk = items[start : start + args.batch]
        await queries.enqueue(
            [q for q, _ in chunk], [payload(q, i) for q, i in chunk], [0] * len(chunk)
        )
    bulk = watch.elapsed()
    await conn.close()
    return {
        "single_rate": args.single / single,
        "bulk_rate": args.bulk / bulk,
        "single_api": "Queries.enqueue(entrypoint, payload)",
        "bulk_api": f"Queries.enqueue(lists), {args.batch} a call",
    }


async def pgq_latency_worker(args: argparse.Namespace) -> dict[str, Any]:
    progress = Progress(args.jobs)
    conn = await asyncpg.connect(dsn(args.url))
    names = [queue_name(q) for q in range(args.queues)]
    qm = pgq_manager(conn, names, 1, progress.performed)
    run = asyncio.create_task(qm.run())
    await asyncio.sleep(0.5)
    ready()
    result = await latency_result(args, progress)
    qm.shutdown.set()
    with suppress(Exception):
        await asyncio.wait_for(run, 30)
    await conn.close()
    return result


async def pgq_latency_producer(args: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn(args.url))
    queries = Queries(AsyncpgDriver(conn))

    async def create(queue: str, i: int) -> None:
        await queries.enqueue(queue, payload(queue, i))

    created = await produce(args, create)
    await conn.close()
    return created


# -- procrastinate ------------------------------------------------------------------------


def proc_app(url: str, pool_size: int, on_job: Any = None) -> App:
    app = App(connector=PsycopgConnector(conninfo=dsn(url), min_size=pool_size, max_size=pool_size))

    @app.task(name=TASK, queue=PROC_QUEUE)
    async def noop(q: str, i: int) -> None:
        if on_job is not None:
            on_job(q, i)

    return app


def proc_job(queue: str, i: int) -> proc_jobs.Job:
    return proc_jobs.Job(
        queue=PROC_QUEUE,
        lock=queue,
        queueing_lock=None,
        task_name=TASK,
        task_kwargs={"q": queue, "i": i},
    )


async def proc_install(url: str) -> None:
    async with proc_app(url, 1).open_async() as app:
        await app.schema_manager.apply_schema_async()


async def proc_prepare(url: str, queues: int, per_queue: int) -> None:
    await proc_install(url)
    async with proc_app(url, 1).open_async() as app:
        items = list(interleaved(queues, per_queue))
        for start in range(0, len(items), PREPARE_BATCH):
            chunk = items[start : start + PREPARE_BATCH]
            await app.job_manager.batch_defer_jobs_async([proc_job(q, i) for q, i in chunk])


async def proc_run_worker(app: App, args: argparse.Namespace) -> asyncio.Task[None]:
    return asyncio.create_task(
        app.run_worker_async(
            concurrency=args.concurrency,
            fetch_job_polling_interval=args.poll_interval,
            install_signal_handlers=False,
            wait=True,
        )
    )


async def proc_stop_worker(worker: asyncio.Task[None]) -> None:
    worker.cancel()
    with suppress(BaseException):
        await asyncio.wait_for(worker, 30)


async def proc_throughput(args: argparse.Namespace) -> dict[str, Any]:
    total = args.queues * args.per_queue
    progress = Progress(total)
    watch = Stopwatch()
    deadline = time.monotonic() + args.timeout
    app = proc_app(args.url, args.concurrency, progress.performed)
    async with app.open_async():
        worker = await proc_run_worker(app, args)
        try:
            await asyncio.wait_for(progress.all_performed.wait(), deadline - time.monotonic())
            recorded = await wait_recorded(
                args.url,
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
                deadline,
            )
        except TimeoutError:
            recorded = False
        seconds = watch.elapsed() if recorded else None
        elapsed, done = watch.elapsed(), progress.log.count
        await proc_stop_worker(worker)
    settings = {"concurrency": args.concurrency, "poll_interval": args.poll_interval}
    if seconds is None:
        return throughput_result(total, None, None, done=done, elapsed=elapsed, **settings)
    order = progress.log.problems(expected_interleaved(args.queues, args.per_queue))
    return throughput_result(total, seconds, order, **settings)


async def proc_enqueue_rate(args: argparse.Namespace) -> dict[str, Any]:
    async with proc_app(args.url, 2).open_async() as app:
        task = app.tasks[TASK]
        for queue, i in spread(10, args.queues):
            await task.configure(lock=queue).defer_async(q=queue, i=i)
        watch = Stopwatch()
        for queue, i in spread(args.single, args.queues):
            await task.configure(lock=queue).defer_async(q=queue, i=i)
        single = watch.elapsed()
        items = list(spread(args.bulk, args.queues))
        watch = Stopwatch()
        for start in range(0, len(items), args.batch):
            chunk = items[start : start + args.batch]
            await app.job_manager.batch_defer_jobs_async([proc_job(q, i) for q, i in chunk])
        bulk = watch.elapsed()
    return {
        "single_rate": args.single / single,
        "bulk_rate": args.bulk / bulk,
        "single_api": "task.configure(lock=q).defer_async",
        "bulk_api": (
            f"job_manager.batch_defer_jobs_async, {args.batch} a call (what batch_defer "
            "runs; batch_defer itself gives every job of a call the same lock)"
        ),
    }


async def proc_latency_worker(args: argparse.Namespace) -> dict[str, Any]:
    progress = Progress(args.jobs)
    app = proc_app(args.url, args.concurrency, progress.performed)
    async with app.open_async():
        worker = await proc_run_worker(app, args)
        await asyncio.sleep(0.5)
        ready()
        result = await latency_result(args, progress)
        await proc_stop_worker(worker)
    return result


async def proc_latency_producer(args: argparse.Namespace) -> dict[str, Any]:
    async with proc_app(args.url, 1).open_async() as app:
        task = app.tasks[TASK]

        async def create(queue: str, i: int) -> None:
            await task.configure(lock=queue).defer_async(q=queue, i=i)

        return await produce(args, create)


# -- shared ----------------------------------------------------------------------------


async def latency_result(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    result: dict[str, Any] = {}
    try:
        await asyncio.wait_for(progress.all_performed.wait(), args.timeout)
    except TimeoutError:
        result["error"] = f"timeout: {progress.log.count}/{args.jobs} jobs performed"
    else:
        order = progress.log.problems(expected_spread(args.jobs, args.queues))
        if order:
            result["error"] = "order violated: " + "; ".join(order)
    result["started"] = {str(i): t for i, t in progress.started.items()}
    return result


async def produce(
    args: argparse.Namespace, create: Callable[[str, int], Awaitable[None]]
) -> dict[str, Any]:
    created: dict[str, float] = {}
    start = time.monotonic()
    for queue, i in spread(args.jobs, args.queues):
        await asyncio.sleep(max(0.0, start + i * args.spacing - time.monotonic()))
        created[str(i)] = time.time()
        await create(queue, i)
    return {"created": created}


def install(impl: str, url: str) -> None:
    """Install `impl`'s schema in a fresh database."""
    asyncio.run(pgq_install(url) if impl == "pgqueuer" else proc_install(url))


def prepare(impl: str, url: str, queues: int, per_queue: int, ordered: bool = True) -> None:
    """Install `impl`'s schema in a fresh database and enqueue Q x N jobs, interleaved."""
    if impl == "pgqueuer":
        asyncio.run(pgq_prepare(url, queues, per_queue, ordered))
    else:
        asyncio.run(proc_prepare(url, queues, per_queue))


ROLES: dict[tuple[str, str], Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    ("pgqueuer", "throughput"): pgq_throughput,
    ("pgqueuer", "enqueue"): pgq_enqueue_rate,
    ("pgqueuer", "latency-worker"): pgq_latency_worker,
    ("pgqueuer", "latency-producer"): pgq_latency_producer,
    ("procrastinate", "throughput"): proc_throughput,
    ("procrastinate", "enqueue"): proc_enqueue_rate,
    ("procrastinate", "latency-worker"): proc_latency_worker,
    ("procrastinate", "latency-producer"): proc_latency_producer,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("impl", choices=PEERS)
    add_worker_arguments(parser)
    parser.add_argument("--mode", choices=["ordered", "unordered"], default="ordered")
    parser.add_argument("--batch-size", type=int, default=10, help="pgqueuer's batch_size")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        help="procrastinate's fetch_job_polling_interval (default 5 s, its default)",
    )
    args = parser.parse_args()
    emit(asyncio.run(ROLES[args.impl, args.role](args)))


if __name__ == "__main__":
    main()
