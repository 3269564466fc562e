"""Row sources: what a source's trigger adds to the cost of the application's inserts.

    python bench/row_sources.py --backends postgresql,mariadb,sqlite
                                [--rows 2000] [--rows-per-tx 1,100] [--runs 3]
                                [--albums 100] [--json OUT]

The application's table is `photos (id, album_id, tag)`; the rows are spread over
`--albums` albums (album_id = i mod albums) with tag NULL, so that each one matches the
source `RowSource(photos, key=photos.c.album_id, when=photos.c.tag.is_(None))` of scope
"bench-rows" (its jobs go to queue `photos:<album_id>`, action "photos", params {"id"}).

For each backend, each transaction shape (`--rows-per-tx`: 1 is one committed
transaction per row, the web application's shape; 100 is transactions of 100 rows) and
each mode, `--rows` rows are inserted, one INSERT statement a row:

- plain: the table without a source (the baseline);
- trigger: the source installed (`install_source`): each row's job is made by the
  trigger, in the inserting transaction;
- create_job: no source; the application calls `Queuetopia(...).create_job("photos:<album>",
  "photos", {"id": id}, connection=conn)` after each insert, in the same transaction: what
  it would write by hand without a source. Its instance shares the application's engine;
  it also follows each commit, reading the transaction's last job back from a thread of
  its own before telling of the jobs (queuetopia_py/_commits.py). That follower's work
  overlaps the timed loop; the seconds it still needs after the loop are shown apart.

Only the inserts are timed (`time.perf_counter`), from the first transaction's begin to
the last one's commit, each transaction on a connection taken from the engine's pool
(already connected), as a request handler would. The application's engine is made by
`queuetopia_py._store.database.create_engine`, the same for every mode: on SQLite that is
WAL, synchronous=NORMAL and BEGIN IMMEDIATE transactions; on MariaDB READ COMMITTED.

Every measurement is a fresh database (bench/benchdb.py): migrated, the photos table
created, the source installed (trigger) and, on PostgreSQL, ANALYZE run, before the clock
starts. `--runs N` repeats the modes alternating (plain, trigger, create_job, plain, ...)
and the table shows medians. After each run the script checks that the table holds the
rows, and, for trigger and create_job, that the scope's pending jobs (list_jobs) and its
queues' pending counts (status) equal the rows inserted, one job per row, in its album's
queue, in insertion order; any mismatch or error is printed and the script exits 1.

Printed: a markdown table per backend and shape of the median rows/s of each mode and
the ratios of those medians (trigger/plain: the share of the plain insert rate kept with
the source; trigger/create_job: above 1, the trigger is faster than enqueueing by hand),
then the command and the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from benchdb import ADMIN, fresh_database

from queuetopia_py import (
    Event,
    EventKind,
    Queuetopia,
    RowSource,
    __version__,
    install_source,
    migrate,
)
from queuetopia_py._store.database import create_engine

SCOPE = "bench-rows"
ACTION = "photos"  # the source's action: its table's name
MODES = ("plain", "trigger", "create_job")
#: Seconds the create_job follower has, after the loop, to tell of every job.
FOLLOW_TIMEOUT = 120.0

metadata = sa.MetaData()
photos = sa.Table(
    "photos",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("album_id", sa.Integer),
    sa.Column("tag", sa.String(50)),
)


class Photos(
    Queuetopia,
    scope=SCOPE,
    source=RowSource(photos, key=photos.c.album_id, when=photos.c.tag.is_(None)),
):
    """The source whose trigger the `trigger` mode installs."""


class BenchError(Exception):
    """A run whose database does not hold what it should."""


@dataclass
class Run:
    """One measurement: `rows` rows in transactions of `per_tx`, on a fresh database."""

    backend: str
    mode: str
    per_tx: int
    run: int
    rows: int
    seconds: float | None = None
    follow_seconds: float | None = None  # create_job: the follower's lag after the loop
    error: str | None = None

    @property
    def rate(self) -> float | None:
        return None if self.seconds is None else self.rows / self.seconds


# -- one run ------------------------------------------------------------------------------


def set_up(url: str, backend: str, mode: str) -> sa.Engine:
    """Migrate the fresh database `url`, create the photos table, install the source
    (trigger mode) and gather statistics (PostgreSQL); return the application's engine,
    its pool holding one open connection."""
    migrate(url)
    engine = create_engine(url)
    metadata.create_all(engine)
    if mode == "trigger":
        install_source(engine, Photos)
    if backend == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    with engine.connect():
        pass
    return engine


class Told:
    """Counts the job_created events of an instance (the follower's tellings)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.expected:
                self.done.set()


def insert_rows(
    engine: sa.Engine, rows: int, per_tx: int, albums: int, queue: Queuetopia | None
) -> float:
    """Insert `rows` photos, `per_tx` a transaction, each followed by `queue.create_job`
    in its transaction unless `queue` is None; the seconds it took."""
    insert = photos.insert()
    started = time.perf_counter()
    for first in range(0, rows, per_tx):
        with engine.begin() as conn:
            for i in range(first, min(first + per_tx, rows)):
                photo_id, album = i + 1, i % albums
                conn.execute(insert, {"id": photo_id, "album_id": album, "tag": None})
                if queue is not None:
                    queue.create_job(f"photos:{album}", ACTION, {"id": photo_id}, connection=conn)
    return time.perf_counter() - started


def check(engine: sa.Engine, rows: int, albums: int, jobs_expected: bool) -> None:
    """Raise `BenchError` unless the table holds `rows` photos and the scope one pending
    job per photo (none without `jobs_expected`), in its album's queue, in id order."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(sa.func.count()).select_from(photos)).scalar_one()
    if found != rows:
        raise BenchError(f"{found} photos in the table, {rows} inserted")
    reader = Queuetopia(repo=engine, scope=SCOPE)
    try:
        jobs = reader.list_jobs(state="pending")
        status = reader.status()
    finally:
        reader.stop()
    expected = rows if jobs_expected else 0
    pending = sum(q.pending for q in status.queues)
    if len(jobs) != expected or pending != expected:
        raise BenchError(
            f"{len(jobs)} pending jobs of scope {SCOPE!r} (list_jobs) and {pending} counted"
            f" in its queues (status), {expected} expected"
        )
    if not jobs_expected:
        return
    queues = min(rows, albums)
    if status.queue_count != queues:
        raise BenchError(f"{status.queue_count} queues with pending work, {queues} expected")
    last: dict[str, tuple[int, int]] = {}  # queue -> (job id, photo id) of its last job
    for job in sorted(jobs, key=lambda j: j.id):
        photo_id = int(job.params["id"])
        wanted = f"photos:{(photo_id - 1) % albums}"
        if job.queue != wanted or job.action != ACTION or set(job.params) != {"id"}:
            raise BenchError(
                f"job {job.id}: queue {job.queue!r}, action {job.action!r}, params"
                f" {job.params!r}; expected queue {wanted!r}, action {ACTION!r}, params"
                f" {{'id': {photo_id}}}"
            )
        previous = last.get(job.queue)
        if previous is not None and previous[1] >= photo_id:
            raise BenchError(
                f"queue {job.queue}: job {job.id} (photo {photo_id}) comes after job"
                f" {previous[0]} (photo {previous[1]})"
            )
        last[job.queue] = (job.id, photo_id)
    if len({int(job.params["id"]) for job in jobs}) != rows:
        raise BenchError("some photo has more than one job")


def one_run(url: str, run: Run, albums: int) -> None:
    """Measure `run` on the fresh database `url`, filling in its figures."""
    engine = set_up(url, run.backend, run.mode)
    queue: Queuetopia | None = None
    try:
        told = Told(run.rows)
        if run.mode == "create_job":
            queue = Queuetopia(repo=engine, scope=SCOPE)
            queue.subscribe(told, [EventKind.JOB_CREATED])
        run.seconds = insert_rows(engine, run.rows, run.per_tx, albums, queue)
        if queue is not None:
            ended = time.perf_counter()
            if not told.done.wait(FOLLOW_TIMEOUT):
                raise BenchError(
                    f"create_job: {told.count}/{run.rows} jobs told of by the commit"
                    f" follower {FOLLOW_TIMEOUT:g} s after the last commit"
                )
            run.follow_seconds = time.perf_counter() - ended
        check(engine, run.rows, albums, jobs_expected=run.mode != "plain")
    finally:
        if queue is not None:
            queue.stop()
        engine.dispose()


# -- report -------------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def cell(value: float | None, fmt: str) -> str:
    return "ERROR" if value is None else format(value, fmt)


def summary(runs: list[Run], backend: str, per_tx: int) -> dict[str, Any]:
    """The medians of one backend's runs of one shape."""
    mine = [r for r in runs if r.backend == backend and r.per_tx == per_tx]
    rates = {mode: median([r.rate for r in mine if r.mode == mode]) for mode in MODES}
    return {
        "backend": backend,
        "per_tx": per_tx,
        "rates": rates,
        "trigger_plain": ratio(rates["trigger"], rates["plain"]),
        "trigger_create_job": ratio(rates["trigger"], rates["create_job"]),
        "follow_seconds": median([r.follow_seconds for r in mine if r.mode == "create_job"]),
    }


def shape(per_tx: int) -> str:
    return "1 row/tx" if per_tx == 1 else f"{per_tx} rows/tx"


def markdown(summaries: list[dict[str, Any]]) -> str:
    header = [
        "backend",
        "shape",
        "plain rows/s",
        "trigger rows/s",
        "create_job rows/s",
        "trigger/plain",
        "trigger/create_job",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for s in summaries:
        rates = s["rates"]
        cells = [
            s["backend"],
            shape(s["per_tx"]),
            *(cell(rates[mode], ",.0f") for mode in MODES),
            cell(s["trigger_plain"], ".2f"),
            cell(s["trigger_create_job"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(backends: list[str]) -> str:
    """The machine's and the databases' facts, on one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = [
        f"{platform.system()} {platform.release()}",
        f"{os.cpu_count()} cores ({cpu})",
        f"python {platform.python_version()}",
        f"sqlalchemy {sa.__version__}",
        f"queuetopia_py {__version__}",
    ]
    queries = {
        "postgresql": (
            "PostgreSQL",
            "SELECT current_setting('server_version') || ', fsync '"
            " || current_setting('fsync') || ', synchronous_commit '"
            " || current_setting('synchronous_commit')",
        ),
        "mariadb": (
            "MariaDB",
            "SELECT CONCAT(VERSION(), ', innodb_flush_log_at_trx_commit ',"
            " @@innodb_flush_log_at_trx_commit, ', log_bin ', @@log_bin)",
        ),
    }
    for backend in backends:
        if backend == "sqlite":
            facts.append(f"SQLite {sqlite3.sqlite_version} (WAL, synchronous NORMAL)")
            continue
        name, query = queries[backend]
        engine = sa.create_engine(ADMIN[backend])
        try:
            with engine.connect() as conn:
                facts.append(f"{name} {conn.exec_driver_sql(query).scalar_one()}")
        except sa.exc.DBAPIError as exc:
            facts.append(f"{name} unavailable ({type(exc).__name__})")
        finally:
            engine.dispose()
    return "; ".join(facts)


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="postgresql,mariadb,sqlite")
    parser.add_argument("--rows", type=int, default=2_000, help="rows inserted per run")
    parser.add_argument(
        "--rows-per-tx",
        default="1,100",
        help="transaction shapes: rows per committed transaction, comma-separated",
    )
    parser.add_argument("--albums", type=int, default=100, help="albums the rows spread over")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode, alternating")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    shapes = [int(n) for n in args.rows_per_tx.split(",")]
    if args.rows < 1 or args.albums < 1 or args.runs < 1 or min(shapes) < 1:
        parser.error("--rows, --albums, --runs and --rows-per-tx must be at least 1")

    runs: list[Run] = []
    shown: set[tuple[str, str, int]] = set()  # a traceback is printed once per kind of run
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for per_tx in shapes:
                for number in range(1, args.runs + 1):
                    for mode in MODES:
                        run = Run(backend, mode, per_tx, number, args.rows)
                        try:
                            with fresh_database(backend, Path(tmp)) as url:
                                one_run(url, run, args.albums)
                        except Exception as exc:
                            run.seconds = None
                            run.error = f"{type(exc).__name__}: {exc}"
                            if (backend, mode, per_tx) not in shown:
                                shown.add((backend, mode, per_tx))
                                traceback.print_exc()
                        runs.append(run)
                        progress = f"ERROR {run.error}" if run.error else f"{run.rate:,.0f} rows/s"
                        print(
                            f"  {backend} {shape(per_tx)} {mode} run {number}: {progress}",
                            file=sys.stderr,
                            flush=True,
                        )

    summaries = [summary(runs, backend, per_tx) for backend in backends for per_tx in shapes]
    print()
    print(markdown(summaries))
    print()
    print(
        f"{args.rows:,} rows over {args.albums} albums, one INSERT a row; median of"
        f" {args.runs} runs, each on a fresh database; ratios are of the rows/s medians"
        " (trigger/plain < 1: the source slows the inserts)."
    )
    lags = [
        f"{s['backend']} {shape(s['per_tx'])} {s['follow_seconds']:.2f} s"
        for s in summaries
        if s["follow_seconds"] is not None
    ]
    if lags:
        print(f"create_job's commit follower, still busy after the loop: {', '.join(lags)}.")
    given = sys.argv[1:] if argv is None else argv
    print(f"command: {shlex.join(['python', 'bench/row_sources.py', *given])}")
    print(f"machine: {machine(backends)}")

    errors = [r for r in runs if r.error]
    for r in errors:
        print(
            f"ERROR ({r.backend}, {shape(r.per_tx)}, {r.mode}, run {r.run}): {r.error}",
            file=sys.stderr,
        )
    if args.json is not None:
        data = {"runs": [asdict(r) for r in runs], "summaries": summaries}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
