"""The hot statements' plans on a large table: 1,000,000 jobs (900,000 done) over 100,000
queues, each queue with a pending head (half of them due). Every statement the scheduler
and the operator reads send is explained, and none may read the jobs or the queues table
whole: each reaches its rows through an index (PostgreSQL and MariaDB).

Seeding takes about 10 to 20 s a database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from queuetopia_py import Queuetopia
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Claim
from queuetopia_py._store.records import Success
from queuetopia_py.migrations.v003_queues import queues_backfill

pytestmark = [
    pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True),
    pytest.mark.timeout(600),
]

SCOPE = "plans"
QUEUES = 100_000
JOBS = 1_000_000
DONE = 900_000
# A node lists its free runners and 1,000 more.
POLL_LIMIT = 1_010
# Rows a statement may read whole: the small tables (suspensions, locks) and what a
# page asks for.
SMALL = 2_000


def _seed(conn: sa.Connection) -> None:
    """Job g (1..JOBS) is in queue q<g % QUEUES>, scheduled g ms after a base instant
    (so ids follow queue order); the last 100,000 are pending, every other one due."""
    if conn.dialect.name == "postgresql":
        series, g, base = "generate_series(1, :jobs) AS s(g)", "g", "now() - interval '2 days'"
        at = f"{base} + {g} * interval '1 millisecond'"
        queue = f"'q' || ({g} % :queues)"
        later = "now() + interval '1 hour'"
    else:
        series, g, base = f"seq_1_to_{JOBS} AS s", "s.seq", "UTC_TIMESTAMP(6) - INTERVAL 2 DAY"
        at = f"{base} + INTERVAL {g} * 1000 MICROSECOND"
        queue = f"CONCAT('q', {g} % :queues)"
        later = "UTC_TIMESTAMP(6) + INTERVAL 1 HOUR"
    pending = f"{g} > :done"
    conn.execute(
        sa.text(
            "INSERT INTO queuetopia_jobs (scope, queue, action, params, timeout_us,"
            " max_backoff_us, max_attempts, attempts, next_attempt_at, scheduled_at, done_at,"
            " inserted_at, state, on_failure, round_start)"
            f" SELECT :scope, {queue}, 'a', '{{}}', 60000000, 3600000000, 20,"
            f" CASE WHEN {pending} THEN 0 ELSE 1 END,"
            f" CASE WHEN {pending} AND {g} % 2 = 0 THEN {later} ELSE {at} END,"
            f" {at}, CASE WHEN {pending} THEN NULL ELSE {at} END, {at},"
            f" CASE WHEN {pending} THEN 'pending' ELSE 'done' END, 'give_up', 0"
            f" FROM {series}"
        ),
        {"scope": SCOPE, "jobs": JOBS, "queues": QUEUES, "done": DONE},
    )
    conn.execute(queues_backfill("queuetopia_"))


@pytest.fixture
def queue(url: str) -> Iterator[Queuetopia]:
    queue = Queuetopia(repo=url, scope=SCOPE)
    with queue.engine.begin() as conn:
        _seed(conn)
    with queue.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
        else:
            for table in ("jobs", "queues", "locks", "suspensions"):
                conn.exec_driver_sql(f"ANALYZE TABLE queuetopia_{table}").all()
    yield queue
    queue.stop()


def _sent(engine: sa.Engine, call: Callable[[], object]) -> list[tuple[str, Any]]:
    """The statements (and their parameters) `call` sends."""
    sent: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "WITH", "UPDATE", "DELETE"):
            # Several rows' writes sent at once: each row's is the same statement.
            many = (
                isinstance(parameters, list | tuple) and parameters and not _scalar(parameters[0])
            )
            sent.append((statement, parameters[0] if many else parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent


def _scalar(value: Any) -> bool:
    return not isinstance(value, list | tuple | dict)


def _postgresql_scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _postgresql_scans(child)


def _whole_reads(conn: sa.Connection, statement: str, parameters: Any) -> list[str]:
    """The nodes of the statement's plan that read the jobs or queues table whole."""
    if conn.dialect.name == "postgresql":
        (plan,) = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar()
        return [
            f"{node['Node Type']} on {node['Relation Name']}"
            for node in _postgresql_scans(plan["Plan"])
            if node["Node Type"] == "Seq Scan"
            and node.get("Relation Name") in ("queuetopia_jobs", "queuetopia_queues")
        ]
    rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).mappings().all()
    return [
        f"{row['type']} scan of {row['table']} ({row['rows']} rows)"
        for row in rows
        if row["type"] in ("ALL", "index") and int(row["rows"] or 0) > SMALL
    ]


def _rows_read(conn: sa.Connection, statement: str, parameters: Any) -> float:
    """The rows the statement actually reads from the jobs table (it is run)."""
    if conn.dialect.name == "postgresql":
        (plan,) = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
        ).scalar()
        return sum(
            node["Actual Rows"] * node["Actual Loops"]
            for node in _postgresql_scans(plan["Plan"])
            if node.get("Relation Name") == "queuetopia_jobs"
        )
    rows = conn.exec_driver_sql(f"ANALYZE {statement}", parameters).mappings().all()
    return sum(float(row["r_rows"] or 0) for row in rows if row["table"] == "queuetopia_jobs")


def test_a_deep_keyset_page_reads_about_the_page(queue: Queuetopia) -> None:
    """Page 4,500 of the done jobs (100 a page) through the last job of page 4,499."""
    before = queue.list_jobs(state="done", limit=1, offset=449_999)[0]
    sent = _sent(queue.engine, lambda: queue.list_jobs(state="done", limit=100, after=before.id))
    (statement, parameters) = [(s, p) for s, p in sent if "ORDER BY" in s][-1]
    with queue.engine.connect() as conn:
        assert _rows_read(conn, statement, parameters) <= 200


def test_the_hot_statements_read_their_rows_by_index(queue: Queuetopia) -> None:
    claims = ClaimStore(queue._db, SCOPE, "planner")
    done = queue.list_jobs(state="done", limit=1, offset=DONE // 2)[0]

    def claim_and_give_back() -> None:
        claim = claims.claim("q7")
        assert isinstance(claim, Claim), claim
        claims.locks.give_back(claim)

    def record_and_pass() -> None:
        claim = claims.claim("q9")
        assert isinstance(claim, Claim), claim
        claims.records.record_success_and_claim(claim, None)

    def record_together() -> None:
        taken = [claims.claim(name) for name in ("q11", "q13", "q15")]
        assert all(isinstance(claim, Claim) for claim in taken), taken
        claims.records.record_successes(
            [Success(claim, None, claim_next=n % 2 == 0) for n, claim in enumerate(taken)]  # type: ignore[arg-type]
        )

    calls: dict[str, Callable[[], object]] = {
        "poll": lambda: claims.poll(POLL_LIMIT),
        "claim and give back": claim_and_give_back,
        "record and pass": record_and_pass,
        "record successes together": record_together,
        "status page": lambda: queue.status(100),
        "known scopes": queue.known_scopes,
        "first page of done jobs": lambda: queue.list_jobs(state="done", limit=100),
        "deep keyset page of done jobs": lambda: queue.list_jobs(
            state="done", limit=100, after=done.id
        ),
        "a queue's jobs": lambda: queue.list_jobs("q5", limit=100),
        "cleaner batch": lambda: queue.cleanup_jobs(older_than=3650 * 86400),
        "wait for a done job": lambda: queue.wait_for(done.id, timeout=1),
    }
    problems: dict[str, list[str]] = {}
    with queue.engine.connect() as conn:
        for name, call in calls.items():
            for statement, parameters in _sent(queue.engine, call):
                # status() counts the scope's live queues: it reads their rows, never the
                # jobs' history.
                if "count(" in statement.lower() and "queuetopia_queues" in statement:
                    continue
                whole = _whole_reads(conn, statement, parameters)
                if whole:
                    problems.setdefault(name, []).append(f"{whole}: {' '.join(statement.split())}")
    assert problems == {}
