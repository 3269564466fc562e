"""Cost of `Queuetopia.status()` on a large jobs table, against two peers on the same data.

    python bench/status.py [--backends sqlite,postgresql,mariadb] [--rows 1000000]
                           [--pending 10000] [--queues 1000] [--calls 20] [--no-vary]
                           [--plans first|all|none]

Checks the claim "status() is cheap enough to call every second on a table of a million
rows". For each backend and each data set it creates a fresh database (SQLite: a file;
PostgreSQL and MariaDB: a new database, dropped afterwards), migrates it and bulk-loads
the jobs table with INSERT ... SELECT from a generated series. The shape:

- the completed history (state "done", done_at set): every row not listed below, spread
  over `--queues` queues and three scopes, half of it in the measured scope "bench";
- `--pending` pending jobs of "bench" over its `--queues` queues (all due), among whose
  heads a few are running under a live lock, retrying or blocked; two expired locks. The
  queues table is filled from them (`fill_queues`, the statement of migration v3), the
  locks set on its rows;
- 1,000 jobs of "bench" that ended without success (given up, dead-lettered, cancelled);
- 1,000 pending jobs of another scope; one suspended queue.

Then it gathers statistics (SQLite and MariaDB: ANALYZE; PostgreSQL: VACUUM ANALYZE, what
autovacuum does to a table this size anyway) and, after a warm-up, times `status()` side by
side (interleaved, same engine, same data) with two peers:

- count(*): the naive `SELECT count(*) FROM jobs WHERE scope = 'bench'`, over the scope's
  whole history;
- list(100): `list_jobs(available=True, limit=100)`, the first page of pending jobs.

It prints the median and p95 of `--calls` calls of each, the ratios of the medians, and
the query plans of the status statements (captured as status() sends them): PostgreSQL
`EXPLAIN (ANALYZE, BUFFERS)`, MariaDB `ANALYZE` (r_rows: rows actually read), SQLite
`EXPLAIN QUERY PLAN`. Unless --no-vary, it also runs the same shape with ten times the
pending jobs and with a fifth of the rows (same pending jobs): status() reads the queues
table, so it should follow the queues with pending work, neither the pending jobs nor the
history.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from benchdb import fresh_database
from sqlalchemy import event

from queuetopia_py import Queuetopia, defaults, migrate
from queuetopia_py._schema import Tables, build_tables
from queuetopia_py._store.database import create_engine
from queuetopia_py.migrations.v003_queues import queues_backfill

SCOPE = "bench"
OTHER_SCOPES = ("billing", "reports")
FAILED = 1_000  # jobs of SCOPE ended without success
OTHER_PENDING = 1_000  # pending jobs of another scope
NODE = "node-1"
RUNNING = range(0, 8)  # queues whose head runs under a live lock
EXPIRED = range(20, 22)  # queues with an expired lock
RETRYING = range(10, 15)  # queues whose head failed and waits for its retry
BLOCKED = range(15, 17)  # queues whose head waits for an operator
SUSPENDED = "q3"
WARMUP = 3
STATEMENT_RUNS = 10  # runs of each status statement alone


# -- databases -------------------------------------------------------------------------


# -- bulk load -------------------------------------------------------------------------


class Dialect:
    """The few SQL spellings that differ between the databases, for INSERT ... SELECT."""

    def __init__(self, name: str, base: datetime) -> None:
        self.name = name
        self.base = base.astimezone(UTC).replace(tzinfo=None, microsecond=0)

    def series(self, count: int) -> tuple[str, str]:
        """(prefix, FROM clause) of a series of `count` integers named `n`, from 1."""
        if self.name == "postgresql":
            return "", f"generate_series(1, {count}) AS s(n)"
        if self.name == "sqlite":
            cte = (
                "WITH RECURSIVE s(n) AS "
                f"(SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) "
            )
            return cte, "s"
        # MariaDB's SEQUENCE engine.
        return "", f"(SELECT seq AS n FROM seq_1_to_{count}) AS s"

    def cat(self, *parts: str) -> str:
        """String concatenation of SQL expressions."""
        if self.name == "mariadb":
            return f"CONCAT({', '.join(parts)})"
        return "(" + " || ".join(f"({p})" for p in parts) + ")"

    def div(self, a: str, b: str) -> str:
        """Integer division."""
        return f"({a} DIV {b})" if self.name == "mariadb" else f"({a} / {b})"

    def ago(self, seconds: str) -> str:
        """The instant `seconds` (an SQL integer expression) before the base instant, in
        the form the library stores (SQLite: its DATETIME text with microseconds)."""
        base = self.base.isoformat(sep=" ")
        if self.name == "postgresql":
            return f"(TIMESTAMPTZ '{base}+00' - ({seconds}) * INTERVAL '1 second')"
        if self.name == "mariadb":
            return f"(CAST('{base}' AS DATETIME(6)) - INTERVAL ({seconds}) SECOND)"
        return (
            f"(strftime('%Y-%m-%d %H:%M:%S', '{base}', '-' || ({seconds}) || ' seconds')"
            " || '.000000')"
        )

    def json(self, text: str) -> str:
        return f"CAST({text} AS json)" if self.name == "postgresql" else text


def insert_series(
    conn: sa.Connection, d: Dialect, table: sa.Table, count: int, values: dict[str, str]
) -> None:
    """INSERT INTO table SELECT `values` (SQL over n = 1..count) FROM a generated series."""
    if count <= 0:
        return
    prefix, source = d.series(count)
    columns = ", ".join(values)
    select = ", ".join(values.values())
    sql = f"INSERT INTO {table.name} ({columns}) SELECT {select} FROM {source}"
    if prefix:  # SQLite: the WITH clause goes before INSERT
        sql = prefix + sql
    conn.execute(sa.text(sql))


def job_values(
    d: Dialect, *, scope: str, queue: str, first: int, rows: int, **overrides: str
) -> dict[str, str]:
    """Column expressions of a generated job, a due pending one unless `overrides` say
    otherwise (`state` and its columns). Job `first + n` is scheduled `rows - first - n`
    seconds before the base instant, so that ids follow scheduled_at."""
    at = d.ago(f"{rows - first} - n")
    values = {
        "scope": scope,
        "queue": queue,
        "action": "'send_mail'",
        "params": d.json(d.cat('\'{"to": "user\'', "n", "'@example.com\"}'")),
        "timeout_us": str(60_000_000),
        "max_backoff_us": str(3_600_000_000),
        "max_attempts": "5",
        "attempts": "0",
        "attempted_at": "NULL",
        "attempted_by": "NULL",
        "next_attempt_at": at,
        "scheduled_at": at,
        "done_at": "NULL",
        "error": "NULL",
        "inserted_at": at,
        "state": "'pending'",
        "on_failure": "'give_up'",
        "round_start": "0",
        "failing_since": "NULL",
    }
    values.update(overrides)
    return values


def insert_pending(
    conn: sa.Connection,
    d: Dialect,
    table: sa.Table,
    count: int,
    *,
    scope: str,
    queues: int,
    first: int,
    rows: int,
) -> None:
    """`count` due pending jobs of `scope`, job n in queue `q<n % queues>` (numbered as
    in `job_values`)."""
    values = job_values(
        d, scope=f"'{scope}'", queue=d.cat("'q'", f"n % {queues}"), first=first, rows=rows
    )
    insert_series(conn, d, table, count, values)


@dataclass(frozen=True)
class Shape:
    rows: int
    pending: int
    queues: int

    @property
    def done(self) -> int:
        return self.rows - self.pending - FAILED - OTHER_PENDING

    def label(self) -> str:
        return f"{self.rows:,} rows, {self.pending:,} pending"


def load(url: str, backend: str, shape: Shape) -> None:
    """Fill the jobs table with `shape` (ids in scheduled order: history, ended, pending),
    then the queues table from its pending jobs (see `decorate_heads`)."""
    if shape.done < 0:
        raise SystemExit(f"--rows must be at least pending + {FAILED + OTHER_PENDING}")
    tables = build_tables()
    jobs = tables.jobs
    engine = create_engine(url)
    now = datetime.now(UTC)
    d = Dialect(backend, now)
    qn = shape.queues
    # Blocks of `queues` consecutive jobs, one job a queue, go to the scopes in turn.
    block = d.div("n", str(qn))
    scope = (
        f"CASE {block} % 4 WHEN 2 THEN '{OTHER_SCOPES[0]}' "
        f"WHEN 3 THEN '{OTHER_SCOPES[1]}' ELSE '{SCOPE}' END"
    )
    first = 0
    with engine.begin() as conn:
        if backend == "sqlite":  # room for the indexes while they are built
            conn.exec_driver_sql("PRAGMA cache_size = -1000000")
        done_at = d.ago(f"{shape.rows} - n - 1")
        insert_series(
            conn,
            d,
            jobs,
            shape.done,
            job_values(
                d,
                scope=scope,
                queue=d.cat("'q'", f"n % {qn}"),
                first=first,
                rows=shape.rows,
                attempts="1",
                attempted_at=d.ago(f"{shape.rows} - n"),
                attempted_by=f"'{NODE}'",
                done_at=done_at,
                result="NULL",
                state="'done'",
            ),
        )
        first += shape.done
        state = (
            "CASE n % 10 WHEN 0 THEN 'cancelled' WHEN 1 THEN 'dead_lettered' ELSE 'given_up' END"
        )
        insert_series(
            conn,
            d,
            jobs,
            FAILED,
            job_values(
                d,
                scope=f"'{SCOPE}'",
                queue=d.cat("'q'", f"n % {qn}"),
                first=first,
                rows=shape.rows,
                attempts="5",
                attempted_at=d.ago(f"{shape.rows - first} - n"),
                attempted_by=f"'{NODE}'",
                next_attempt_at="NULL",
                error="'SMTP 550: mailbox unavailable'",
                ended_at=d.ago(f"{shape.rows - first} - n"),
                state=state,
                failing_since=d.ago(f"{shape.rows - first} - n"),
            ),
        )
        first += FAILED
        other = OTHER_SCOPES[0]
        insert_pending(
            conn, d, jobs, OTHER_PENDING, scope=other, queues=qn, first=first, rows=shape.rows
        )
        first += OTHER_PENDING
        insert_pending(
            conn, d, jobs, shape.pending, scope=SCOPE, queues=qn, first=first, rows=shape.rows
        )
        decorate_heads(conn, tables, now)
    engine.dispose()
    queue = Queuetopia(repo=url, scope=SCOPE)
    queue.suspend(SUSPENDED, by="operator", reason="bench: maintenance")
    queue.stop()


def decorate_heads(conn: sa.Connection, tables: Tables, now: datetime) -> None:
    """Running, retrying and blocked heads; then the queues table, filled from the
    pending jobs (`fill_queues`: the decorated heads' due times and failures included);
    then live and expired locks on the queues' rows."""
    jobs, queues = tables.jobs, tables.queues

    def head(queue: str) -> int | None:
        # Ids follow scheduled_at: the first pending job by id is the head.
        return conn.execute(
            sa.select(sa.func.min(jobs.c.id)).where(
                jobs.c.scope == SCOPE, jobs.c.queue == queue, jobs.c.state == "pending"
            )
        ).scalar()

    running: dict[str, datetime] = {}
    for i in RUNNING:
        started = running[f"q{i}"] = now - timedelta(seconds=5 + i)
        conn.execute(
            jobs.update()
            .where(jobs.c.id == head(f"q{i}"))
            .values(
                attempts=1,
                attempted_at=started,
                attempted_by=NODE,
                progress_message="sending",
                progress_fraction=0.5,
                progress_at=now,
            )
        )
    for i in [*RETRYING, *BLOCKED]:
        blocked = i in BLOCKED
        conn.execute(
            jobs.update()
            .where(jobs.c.id == head(f"q{i}"))
            .values(
                attempts=5 if blocked else 2,
                attempted_at=now - timedelta(minutes=1),
                attempted_by=NODE,
                error="SMTP 421: try again later",
                failing_since=now - timedelta(minutes=10),
                next_attempt_at=None if blocked else now + timedelta(minutes=5),
                on_failure="block" if blocked else "give_up",
            )
        )
    fill_queues(conn, tables.prefix)
    expired = now - timedelta(hours=2)
    locks = {**running, **{f"q{i}": expired for i in EXPIRED}}
    for queue, started in locks.items():
        token = uuid.uuid4().hex
        until = now + timedelta(minutes=5) if queue in running else started + timedelta(minutes=5)
        conn.execute(
            queues.update()
            .where(queues.c.scope == SCOPE, queues.c.queue == queue)
            .values(
                token=token,
                locked_by=NODE,
                locked_at=started,
                locked_until=until,
                locked_job=queues.c.head_id,
            )
        )
        if queue in running:  # the attempt's claim, as a claim stamps its job
            conn.execute(jobs.update().where(jobs.c.id == head(queue)).values(claim_token=token))


def fill_queues(conn: sa.Connection, prefix: str = defaults.TABLE_PREFIX) -> None:
    """Fill the empty queues table from the pending jobs loaded by hand (one row a queue:
    its pending count and head): the scheduler and status() read that table, not the
    jobs."""
    conn.execute(queues_backfill(prefix))


def analyze(url: str, backend: str) -> None:
    engine = create_engine(url)
    if backend == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    elif backend == "mariadb":
        with engine.begin() as conn:
            for table in build_tables().metadata.sorted_tables:
                conn.execute(sa.text(f"ANALYZE TABLE {table.name}")).all()
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    engine.dispose()


# -- measurement -----------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def fetch_all(conn: sa.Connection, statement: str, parameters: Any) -> float:
    started = time.perf_counter()
    conn.exec_driver_sql(statement, parameters).all()
    return time.perf_counter() - started


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class Statement:
    sql: str
    median_s: float
    plan: list[str]


@dataclass
class Result:
    backend: str
    shape: Shape
    load_s: float
    times: dict[str, list[float]]
    summary: str
    statements: list[Statement]


def measure(url: str, backend: str, shape: Shape, calls: int, plans: bool) -> Result:
    started = time.perf_counter()
    load(url, backend, shape)
    analyze(url, backend)
    load_s = time.perf_counter() - started
    engine = create_engine(url)
    queue = Queuetopia(repo=engine, scope=SCOPE)
    jobs = build_tables().jobs
    naive = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.scope == SCOPE)

    def count() -> int:
        with engine.begin() as conn:
            return int(conn.execute(naive).scalar_one())

    peers: dict[str, Callable[[], object]] = {
        "status": queue.status,
        "count(*)": count,
        "list(100)": lambda: queue.list_jobs(available=True, limit=100),
    }
    for _ in range(WARMUP):
        for fn in peers.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(calls):
        for name, fn in peers.items():
            times[name].append(timed(fn))

    status = queue.status()
    pending = sum(q.pending for q in status.queues)
    failed = sum(q.failed for q in status.queues)
    blocked = sum(q.blocked for q in status.queues)
    running = sum(len(r) for r in status.nodes.values())
    summary = (
        f"status(): {len(status.queues)} queues, {pending:,} pending, {failed} failed, "
        f"{blocked} blocked, {running} running, "
        f"{sum(q.suspended is not None for q in status.queues)} suspended; "
        f"count(*) = {count():,}"
    )
    if pending != shape.pending:
        raise RuntimeError(f"status() counted {pending} pending jobs, not {shape.pending}")
    sent = status_statements(engine, queue)
    statements = run_statements(engine, backend, sent, STATEMENT_RUNS, plans)
    queue.stop()
    engine.dispose()
    return Result(backend, shape, load_s, times, summary, statements)


def status_statements(engine: sa.Engine, queue: Queuetopia) -> list[tuple[str, Any]]:
    """The statements (and parameters) status() sends, as it sends them."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if re.search(r"\bFROM\b", statement, re.IGNORECASE):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        queue.status()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent


def run_statements(
    engine: sa.Engine, backend: str, sent: list[tuple[str, Any]], runs: int, plans: bool
) -> list[Statement]:
    """Time each statement alone at the driver level (execute and fetch all rows, no
    result processing) and, if `plans`, explain it."""
    out = []
    with engine.connect() as conn:
        for statement, parameters in sent:
            times = [fetch_all(conn, statement, parameters) for _ in range(runs)]
            plan = explain(conn, backend, statement, parameters) if plans else []
            out.append(Statement(statement, statistics.median(times), plan))
        conn.rollback()
    return out


def explain(conn: sa.Connection, backend: str, statement: str, parameters: Any) -> list[str]:
    if backend == "postgresql":
        sql = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " + statement
        return [r[0] for r in conn.exec_driver_sql(sql, parameters)]
    if backend == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        depth: dict[int, int] = {0: 0}
        lines = []
        for node, parent, _, detail in rows:
            depth[node] = depth.get(parent, 0) + 1
            lines.append("  " * (depth[node] - 1) + detail)
        return lines
    result = conn.exec_driver_sql("ANALYZE " + statement, parameters)
    keys = list(result.keys())
    rows = [dict(zip(keys, r, strict=True)) for r in result]
    wanted = ["id", "select_type", "table", "type", "key", "ref", "rows", "r_rows", "Extra"]
    cells = [[str(c) for c in wanted]] + [[str(r.get(c)) for c in wanted] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(wanted))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]


# -- report ----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def print_header() -> None:
    print(
        f"{'backend':<11}{'rows':>10}{'pending':>9}{'load s':>8}"
        f"{'status med':>12}{'p95':>9}{'count med':>11}{'p95':>9}"
        f"{'list med':>10}{'p95':>9}{'st/count':>10}{'st/list':>9}"
    )


def print_row(r: Result) -> None:
    t = r.times
    med = {k: statistics.median(v) for k, v in t.items()}
    print(
        f"{r.backend:<11}{r.shape.rows:>10,}{r.shape.pending:>9,}{r.load_s:>8.1f}"
        f"{ms(med['status']):>12}{ms(p95(t['status'])):>9}"
        f"{ms(med['count(*)']):>11}{ms(p95(t['count(*)'])):>9}"
        f"{ms(med['list(100)']):>10}{ms(p95(t['list(100)'])):>9}"
        f"{med['status'] / med['count(*)']:>10.2f}{med['status'] / med['list(100)']:>9.2f}",
        flush=True,
    )


def short_sql(statement: str) -> str:
    """One line; a select list of five or more columns of one table shortened to
    `<table>.[N columns]`, a list of five or more bound parameters to `(<N parameters>)`."""
    sql = " ".join(statement.split())
    sql = re.sub(
        r"\b(\w+)\.\w+(?:, \1\.\w+){4,}\b",
        lambda m: f"{m[1]}.[{m[0].count(',') + 1} columns]",
        sql,
    )
    param = r"(?:\?|%\(\w+\)s(?:::[\w ]+)?)"
    return re.sub(
        rf"\(({param}(?:, {param}){{4,}})\)",
        lambda m: f"(<{m[1].count(',') + 1} parameters>)",
        sql,
    )


def print_statements(results: list[Result]) -> None:
    print(
        f"\nstatus() statement by statement: median ms of {STATEMENT_RUNS} runs of each alone,"
        " at the driver level (execute + fetch, no result processing); rest = status()"
        " median - their sum (Python: rows to Jobs, the Status; 'noise' when negative)"
    )
    width = max(len(r.statements) for r in results)
    print(
        f"{'backend':<11}{'rows':>10}{'pending':>9}"
        + "".join(f"{f's{i}':>9}" for i in range(1, width + 1))
        + f"{'rest':>9}{'status':>9}"
    )
    for r in results:
        cells = [ms(s.median_s) for s in r.statements]
        cells += [""] * (width - len(cells))
        status = statistics.median(r.times["status"])
        rest = status - sum(s.median_s for s in r.statements)
        print(
            f"{r.backend:<11}{r.shape.rows:>10,}{r.shape.pending:>9,}"
            + "".join(f"{c:>9}" for c in cells)
            + f"{ms(rest) if rest >= 0 else 'noise':>9}{ms(status):>9}"
        )


def print_plans(r: Result) -> None:
    print(f"\n=== {r.backend}, {r.shape.label()}: plans of the status() statements ===")
    print(r.summary)
    for i, statement in enumerate(r.statements, 1):
        print(f"\n-- s{i} ({statement.median_s * 1000:.2f} ms): {short_sql(statement.sql)}")
        for line in statement.plan:
            print("   " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the jobs table")
    parser.add_argument("--pending", type=int, default=10_000, help="pending jobs of the scope")
    parser.add_argument("--queues", type=int, default=1_000, help="queues of each scope")
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each operation")
    parser.add_argument(
        "--no-vary",
        dest="vary",
        action="store_false",
        help="only the given shape (default: also 10x the pending jobs, and 1/5 of the rows)",
    )
    parser.add_argument("--plans", choices=["first", "all", "none"], default="first")
    args = parser.parse_args()
    shapes = [Shape(args.rows, args.pending, args.queues)]
    if args.vary:
        shapes.append(Shape(args.rows, args.pending * 10, args.queues))
        shapes.append(Shape(args.rows // 5, args.pending, args.queues))
    print(
        f"python {sys.version.split()[0]}, sqlalchemy {sa.__version__}; scope {SCOPE!r} "
        f"of {args.queues} queues, {FAILED} ended jobs; times in ms over {args.calls} calls "
        f"after {WARMUP} warm-up rounds; st/x = median status / median x"
    )
    results: list[Result] = []
    print_header()
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            for i, shape in enumerate(shapes):
                plans = args.plans == "all" or (args.plans == "first" and i == 0)
                with fresh_database(backend, Path(tmp)) as url:
                    migrate(url)
                    result = measure(url, backend, shape, args.calls, plans)
                results.append(result)
                print_row(result)
    print_statements(results)
    for result in results:
        if any(s.plan for s in result.statements):
            print_plans(result)


if __name__ == "__main__":
    main()
