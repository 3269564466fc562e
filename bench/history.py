"""History: operator reads cost what they return, not what the history holds.

    python bench/history.py [--backends postgresql[,mariadb,sqlite]] [--done-rows 10000000]
                            [--queues 1000] [--pending 1000] [--pending-queues 100]
                            [--repeat 20] [--page-size 100] [--deep-page 9000]
                            [--plans history-plans.txt] [--json OUT]

For each backend, on a fresh database (bench/benchdb.py), it seeds the jobs table with
bulk SQL (INSERT ... SELECT over a generated series: PostgreSQL's generate_series,
MariaDB's seq_1_to_N; the loaders of status.py and ours.py): `--done-rows` completed jobs
(state "done", done_at set) of one scope over `--queues` queues, then `--pending` pending
jobs over the first `--pending-queues` of those queues (all due), and fills the queues
table from them (status.fill_queues: the scheduler and status() read that table). Seeding
refuses a table that already holds jobs, so it never doubles a history; it prints its
duration, then that of the statistics (PostgreSQL: VACUUM ANALYZE; MariaDB: ANALYZE
TABLE).

Then it times each read (the median and p95 of `--repeat` calls, in ms, after one
warm-up call, the reads taking turns) and counts the rows it returns:

- poll: the scheduler's poll of the due queues (internal hook: `scheduler_reads`);
- claim: one claim of a pending queue's lock and head, given back at once (hook too);
- status(), known_scopes();
- done, first page by key: `list_jobs(state="done", limit=--page-size)`, the first page
  of a keyset listing (no total counted);
- done, page 1: `paginate_jobs(state="done")`, `--page-size` a page, with its total;
- done, page N: `paginate_jobs(state="done", page_number=--deep-page)`;
- done, keyset page N: the same page through a keyset cursor, `list_jobs(state="done",
  after=<id of the last job before it>, limit=--page-size)`; it must return the same
  jobs as the offset page (checked once before the timing: the script exits 1 if not).

and writes the plan of every statement each read sends to `--plans`: PostgreSQL
EXPLAIN (ANALYZE, BUFFERS), captured by auto_explain as the statements run; MariaDB
ANALYZE (r_rows: rows actually read) and SQLite EXPLAIN QUERY PLAN of each statement
captured, run again in a transaction rolled back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from benchdb import fresh_databases
from ours import SCOPE, fill_history
from sqlalchemy import event
from status import Dialect, analyze, explain, fill_queues, insert_pending, p95
from workerio import Stopwatch

from queuetopia_py import Job, Queuetopia
from queuetopia_py._schema import build_tables

#: Queues a poll lists: the scheduler asks for its free runners (10) + 1,000.
POLL_LIMIT = 1_010
#: The queue claimed (and given back): one of the queues with pending jobs.
CLAIMED_QUEUE = "q0"
#: auto_explain's settings: every statement, with the actual rows, times and buffers,
#: sent to the client as a NOTICE.
AUTO_EXPLAIN = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_level = notice",
)

#: A read: a callable returning how many rows (queues, jobs, scopes) it read back.
Read = Callable[[], int]


# -- seeding ------------------------------------------------------------------------------


def seed(url: str, backend: str, args: argparse.Namespace) -> float:
    """Fill the empty jobs table of `url` with the history and the pending backlog;
    the seconds it took. Refuses a table that already holds jobs."""
    watch = Stopwatch()
    jobs = build_tables().jobs
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if conn.execute(sa.select(jobs.c.id).limit(1)).first() is not None:
                raise SystemExit(f"{backend}: the jobs table is not empty; seed a fresh database")
        fill_history(url, backend, args.done_rows, args.queues)
        d = Dialect(backend, datetime.now(UTC))
        with engine.begin() as conn:
            insert_pending(
                conn,
                d,
                jobs,
                args.pending,
                scope=SCOPE,
                queues=args.pending_queues,
                first=0,
                rows=args.pending,
            )
            fill_queues(conn)
    finally:
        engine.dispose()
    return watch.elapsed()


# -- the reads ----------------------------------------------------------------------------


def scheduler_reads(ops: Queuetopia) -> dict[str, Read]:
    """The scheduler's poll, and one claim given back at once, on `ops`'s database.

    INTERNAL HOOK, the only place this script reaches inside the engine: today they are
    `ClaimStore(db, scope, node).poll(limit)` and `.claim(queue)`
    (queuetopia_py/_store/claims.py), and `.locks.give_back(claim)` (_store/locks.py).
    Re-point them here when the engine changes.
    """
    from queuetopia_py._store.claims import ClaimStore
    from queuetopia_py._store.locks import Claim

    claims = ClaimStore(ops._db, ops.scope, "history-bench")

    def poll() -> int:
        return len(claims.poll(POLL_LIMIT).queues)

    def claim() -> int:
        claim = claims.claim(CLAIMED_QUEUE)
        if not isinstance(claim, Claim):
            raise RuntimeError(f"claim of {CLAIMED_QUEUE}: {claim!r}, not a claim")
        claims.locks.give_back(claim)
        return 1

    return {"poll": poll, "claim + give back": claim}


def keyset_page(ops: Queuetopia, cursor: Job, page_size: int) -> list[Job]:
    """The page of done jobs after `cursor` (the last job of the page before), through
    the keyset cursor `after=`."""
    return ops.list_jobs(state="done", after=cursor.id, limit=page_size)


def keyset_cursor(ops: Queuetopia, args: argparse.Namespace) -> tuple[Job, bool]:
    """The last done job before the deep page (the keyset cursor), and whether the
    keyset page after it holds the same jobs as the deep page read by offset."""
    size, deep = args.page_size, args.deep_page
    (cursor,) = ops.list_jobs(state="done", limit=1, offset=(deep - 1) * size - 1)
    keyset = keyset_page(ops, cursor, size)
    offset = ops.paginate_jobs(size, deep, state="done").items
    return cursor, [j.id for j in keyset] == [j.id for j in offset]


def reads(ops: Queuetopia, args: argparse.Namespace, cursor: Job) -> dict[str, Read]:
    """Every read measured, by name; `cursor` is the last done job before the deep
    page."""
    size, deep = args.page_size, args.deep_page
    return {
        **scheduler_reads(ops),
        "status()": lambda: len(ops.status().queues),
        "known_scopes()": lambda: len(ops.known_scopes()),
        "done, first page by key": lambda: len(ops.list_jobs(state="done", limit=size)),
        "done, page 1": lambda: len(ops.paginate_jobs(size, 1, state="done").items),
        f"done, page {deep:,}": lambda: len(ops.paginate_jobs(size, deep, state="done").items),
        f"done, keyset page {deep:,}": lambda: len(keyset_page(ops, cursor, size)),
    }


def time_reads(named: dict[str, Read], repeat: int) -> dict[str, dict[str, float]]:
    """Median and p95 (ms) of `repeat` calls of each read, taking turns after a warm-up
    call of each, and the rows each returned."""
    rows = {name: read() for name, read in named.items()}
    times: dict[str, list[float]] = {name: [] for name in named}
    for _ in range(repeat):
        for name, read in named.items():
            watch = Stopwatch()
            read()
            times[name].append(watch.elapsed() * 1000)
    return {
        name: {"median_ms": statistics.median(t), "p95_ms": p95(t), "rows": rows[name]}
        for name, t in times.items()
    }


# -- plans --------------------------------------------------------------------------------


@contextmanager
def postgresql_planner(url: str) -> Iterator[tuple[sa.Engine, list[str]]]:
    """An engine whose connections report the plan of every statement they run
    (auto_explain, as NOTICEs), and the list the plans are appended to."""
    engine = sa.create_engine(url)
    plans: list[str] = []

    @event.listens_for(engine, "connect")
    def explain_everything(dbapi: Any, _record: Any) -> None:
        dbapi.add_notice_handler(lambda notice: plans.append(notice.message_primary))
        with dbapi.cursor() as cursor:
            for statement in AUTO_EXPLAIN:
                cursor.execute(statement)
        dbapi.commit()  # SET is transactional

    try:
        yield engine, plans
    finally:
        engine.dispose()


def postgresql_plans(url: str, args: argparse.Namespace, cursor: Job) -> dict[str, str]:
    """Each read run once more, with the plans auto_explain reports for its statements."""
    out = {}
    with postgresql_planner(url) as (engine, plans):
        ops = Queuetopia(repo=engine, scope=SCOPE)
        for name, read in reads(ops, args, cursor).items():
            plans.clear()
            read()
            out[name] = "\n\n".join(plans)
    return out


def captured_plans(url: str, backend: str, args: argparse.Namespace, cursor: Job) -> dict[str, str]:
    """Each read run once more, its statements captured, then explained (status.explain:
    MariaDB ANALYZE, SQLite EXPLAIN QUERY PLAN) in a transaction rolled back."""
    engine = sa.create_engine(url)
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    ops = Queuetopia(repo=engine, scope=SCOPE)
    out = {}
    try:
        for name, read in reads(ops, args, cursor).items():
            sent.clear()
            event.listen(engine, "before_cursor_execute", capture)
            try:
                read()
            finally:
                event.remove(engine, "before_cursor_execute", capture)
            parts = []
            with engine.connect() as conn:
                for statement, parameters in sent:
                    try:
                        plan = "\n".join(explain(conn, backend, statement, parameters))
                    except sa.exc.DBAPIError as exc:
                        plan = f"(not explained: {str(exc.orig).splitlines()[0]})"
                    parts.append(f"{' '.join(statement.split())}\n{plan}")
                conn.rollback()
            out[name] = "\n\n".join(parts)
    finally:
        engine.dispose()
    return out


# -- report -------------------------------------------------------------------------------


def run_backend(url: str, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    seeded = seed(url, backend, args)
    watch = Stopwatch()
    analyze(url, backend)
    analyzed = watch.elapsed()
    print(
        f"{backend}: seeded {args.done_rows:,} done + {args.pending:,} pending jobs in "
        f"{seeded:.1f} s; statistics in {analyzed:.1f} s",
        flush=True,
    )
    ops = Queuetopia(repo=url, scope=SCOPE)
    try:
        cursor, same = keyset_cursor(ops, args)
        timings = time_reads(reads(ops, args, cursor), args.repeat)
    finally:
        ops.stop()
    plans = (
        postgresql_plans(url, args, cursor)
        if backend == "postgresql"
        else captured_plans(url, backend, args, cursor)
    )
    return {
        "backend": backend,
        "seed_seconds": seeded,
        "analyze_seconds": analyzed,
        "reads": timings,
        "keyset_page_same": same,
        "plans": plans,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'backend':<11}{'read':<28}{'median ms':>10}{'p95 ms':>10}{'rows':>7}")
    for name, t in result["reads"].items():
        print(
            f"{result['backend']:<11}{name:<28}{t['median_ms']:>10.2f}{t['p95_ms']:>10.2f}"
            f"{t['rows']:>7}"
        )
    same = "=" if result["keyset_page_same"] else "!="
    print(f"(keyset page {same} offset page)\n", flush=True)


def write_plans(path: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    lines = []
    for r in results:
        lines.append(
            f"==== {r['backend']}: {args.done_rows:,} done jobs over {args.queues:,} queues, "
            f"{args.pending:,} pending over {args.pending_queues:,} ===="
        )
        for name, plan in r["plans"].items():
            lines += [f"\n--- {name} ({r['reads'][name]['median_ms']:.2f} ms) ---", plan]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="postgresql", help="postgresql, mariadb, sqlite")
    parser.add_argument("--done-rows", type=int, default=10_000_000, help="done jobs")
    parser.add_argument("--queues", type=int, default=1_000, help="queues of the history")
    parser.add_argument("--pending", type=int, default=1_000, help="pending jobs")
    parser.add_argument("--pending-queues", type=int, default=100, help="their queues")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls of each read")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--deep-page", type=int, default=9_000, help="page number")
    parser.add_argument("--plans", type=Path, default=Path("history-plans.txt"))
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.pending_queues > args.queues:
        parser.error("--pending-queues must be at most --queues")
    if not 2 <= args.deep_page <= args.done_rows // args.page_size:
        parser.error("--deep-page must be from 2 to the last full page of --done-rows")

    print(
        f"python {sys.version.split()[0]}, sqlalchemy {sa.__version__}; scope {SCOPE!r}: "
        f"{args.done_rows:,} done jobs over {args.queues:,} queues, {args.pending:,} pending "
        f"over {args.pending_queues:,}; median of {args.repeat} calls; pages of "
        f"{args.page_size}\n",
        flush=True,
    )
    results = []
    for backend, url in fresh_databases(args.backends):
        results.append(run_backend(url, backend, args))
        print_table(results[-1])
    write_plans(args.plans, results, args)
    print(f"plans written to {args.plans}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["keyset_page_same"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
