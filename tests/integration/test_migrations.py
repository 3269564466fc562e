from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from queue_rows import inconsistencies

from queuetopia_py import Performer, Queuetopia, SchemaMissingError, migrate
from queuetopia_py._schema import build_tables
from queuetopia_py._store.database import create_engine
from queuetopia_py.migrations import LATEST


def _describe(engine: sa.Engine, prefix: str) -> dict[str, object]:
    """Tables, columns (name, type, nullability), primary keys and indexes, prefix removed."""
    inspector = sa.inspect(engine)
    out: dict[str, object] = {}
    for table in sorted(t for t in inspector.get_table_names() if t.startswith(prefix)):
        columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
        indexes = sorted(
            (i["name"].replace(prefix, "", 1), tuple(i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(table)
        )
        pk = inspector.get_pk_constraint(table)["constrained_columns"]
        out[table[len(prefix) :]] = (columns, indexes, pk)
    return out


def test_migrate_is_idempotent(db_url: str) -> None:
    assert migrate(db_url) == LATEST
    assert migrate(db_url) == LATEST


def test_full_migration_chain_equals_a_fresh_schema(db_url: str) -> None:
    migrate(db_url, prefix="chain_")
    engine = create_engine(db_url)
    build_tables("fresh_").metadata.create_all(engine)
    assert _describe(engine, "chain_") == _describe(engine, "fresh_")
    engine.dispose()


def test_downgrade_to_zero_removes_every_table(db_url: str) -> None:
    migrate(db_url)
    assert migrate(db_url, to=0) == 0
    engine = create_engine(db_url)
    assert [t for t in sa.inspect(engine).get_table_names() if t.startswith("queuetopia_")] == []
    engine.dispose()
    assert migrate(db_url) == LATEST  # and back up again


def test_concurrent_migrations_all_succeed(db_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(db_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_jobs_on_an_unmigrated_database_raise_schema_missing(db_url: str) -> None:
    queue = Queuetopia(repo=db_url)
    with pytest.raises(SchemaMissingError, match="queuetopia migrate"):
        queue.create_job("q", "a", {})
    queue.stop()


def test_starting_on_an_unmigrated_database_raises_schema_missing(db_url: str) -> None:
    queue = Queuetopia(repo=db_url, performer=Performer)
    with pytest.raises(SchemaMissingError, match="queuetopia migrate"):
        queue.start()
    assert not queue.running


def test_a_custom_table_prefix_keeps_its_own_tables(db_url: str) -> None:
    migrate(db_url, prefix="jobs2_")
    queue = Queuetopia(repo=db_url, table_prefix="jobs2_")
    job = queue.create_job("q", "a", {})
    assert queue.get_job(job.id) == job
    with pytest.raises(SchemaMissingError):
        Queuetopia(repo=db_url).create_job("q", "a", {})


def test_a_node_refuses_to_start_on_tables_newer_than_it_knows(url: str) -> None:
    import sqlalchemy as sa

    from queuetopia_py import DatabaseError
    from queuetopia_py.migrations import LATEST

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE queuetopia_schema_version SET version = {LATEST + 1}"))
    engine.dispose()
    queue = Queuetopia(repo=url, performer=Performer)
    with pytest.raises(DatabaseError, match="newer than this version"):
        queue.start()
    assert not queue.running


def _v2_jobs(conn: sa.Connection) -> None:
    """Jobs and locks as version 2 stored them: queue a (two pending, its head locked by
    a node), queue b (a job given up, one done), queue c (a job that moves to "dead")."""
    now = datetime.now(UTC)
    if conn.dialect.name != "postgresql":  # a naive UTC value in DATETIME(6) and SQLite
        now = now.replace(tzinfo=None)
    base = {
        "scope": "s",
        "action": "x",
        "params": "{}",
        "timeout_us": 60_000_000,
        "max_backoff_us": 1_000_000,
        "max_attempts": 3,
        "attempts": 0,
        "scheduled_at": now,
        "next_attempt_at": now,
        "inserted_at": now,
        "round_start": 0,
    }
    rows = [
        {**base, "id": 1, "queue": "a", "attempts": 1, "attempted_by": "n1", "attempted_at": now},
        {**base, "id": 2, "queue": "a"},
        {**base, "id": 3, "queue": "b", "outcome": "given_up", "next_attempt_at": None},
        {**base, "id": 4, "queue": "b", "done_at": now},
        {**base, "id": 5, "queue": "c", "on_failure": "move_to:dead"},
    ]
    columns = sorted({k for r in rows for k in r})
    for row in rows:
        values = {c: row.get(c) for c in columns}
        conn.execute(
            sa.text(
                f"INSERT INTO queuetopia_jobs ({', '.join(columns)})"
                f" VALUES ({', '.join(':' + c for c in columns)})"
            ),
            values,
        )
    conn.execute(
        sa.text(
            "INSERT INTO queuetopia_locks (scope, queue, token, locked_at, locked_by_node,"
            " locked_until, job_id) VALUES ('s', 'a', 'tok', :now, 'n1', :now, 1),"
            " ('s', ' cleaner', 'tic', :now, 'n2', :now, NULL)"
        ),
        {"now": now},
    )


def test_upgrading_to_v3_keeps_jobs_and_locks_and_fills_the_queues_table(db_url: str) -> None:
    migrate(db_url, to=2)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        _v2_jobs(conn)
    assert migrate(db_url) == LATEST
    tables = build_tables()
    assert inconsistencies(engine, tables) == []
    queue = Queuetopia(repo=engine, scope="s")
    states = {j.id: (j.state, j.on_failure, j.dead_letter_queue) for j in queue.list_jobs()}
    assert states == {
        1: ("pending", "give_up", None),
        2: ("pending", "give_up", None),
        3: ("given_up", "give_up", None),
        4: ("done", "give_up", None),
        5: ("pending", "move_to", "dead"),
    }
    status = queue.status()
    assert [(q.queue, q.pending) for q in status.queues] == [("a", 2), ("c", 1)]
    lock = status.queue("a").lock  # type: ignore[union-attr]
    assert lock is None  # it expired: its row keeps it for the take-over
    with engine.connect() as conn:
        held = {
            r.queue: (r.token, r.locked_by, r.locked_job)
            for r in conn.execute(sa.select(tables.queues))
        }
        left = conn.execute(sa.select(tables.locks.c.queue)).scalars().all()
    assert held["a"] == ("tok", "n1", 1)
    assert left == [" cleaner"]
    engine.dispose()


def test_downgrading_from_v3_restores_the_v2_rows(db_url: str) -> None:
    migrate(db_url, to=2)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        _v2_jobs(conn)
    migrate(db_url)
    assert migrate(db_url, to=2) == 2
    with engine.connect() as conn:
        jobs = conn.execute(
            sa.text("SELECT id, outcome, on_failure FROM queuetopia_jobs ORDER BY id")
        ).all()
        locks = conn.execute(
            sa.text("SELECT queue, token, job_id FROM queuetopia_locks ORDER BY queue")
        ).all()
    assert [tuple(j) for j in jobs] == [
        (1, None, "give_up"),
        (2, None, "give_up"),
        (3, "given_up", "give_up"),
        (4, None, "give_up"),
        (5, None, "move_to:dead"),
    ]
    assert [tuple(r) for r in locks] == [(" cleaner", "tic", None), ("a", "tok", 1)]
    engine.dispose()
    assert migrate(db_url) == LATEST


def test_down_to_v3_and_up_again_keeps_the_jobs_and_frees_their_keys(db_url: str) -> None:
    from queuetopia_py import Schedule

    migrate(db_url)
    queue = Queuetopia(repo=db_url, scope="keys")
    held = queue.create_job("q", "a", {"n": 1}, unique_key="k")
    queue.create_job("q", "a", {"n": 2})
    queue._fire(Schedule("beat", every=3600, queue="beats", action="beat"))
    queue.stop()
    assert migrate(db_url, to=3) == 3
    engine = create_engine(db_url)
    names = set(sa.inspect(engine).get_table_names())
    columns = {c["name"] for c in sa.inspect(engine).get_columns("queuetopia_jobs")}
    engine.dispose()
    assert "queuetopia_schedules" not in names
    assert not {"unique_key", "unique_pending"} & columns
    assert migrate(db_url) == LATEST
    queue = Queuetopia(repo=db_url, scope="keys")
    assert [j.params["n"] for j in queue.list_jobs()] == [1, 2]
    assert queue.get_job(held.id).unique_key is None  # type: ignore[union-attr]
    assert queue.create_job("q", "a", {"n": 3}, unique_key="k").id != held.id
    assert queue.status().schedules == []
    queue.stop()


def test_down_to_v5_drops_the_trace_contexts_and_up_again_keeps_the_jobs(db_url: str) -> None:
    from queuetopia_py._job import validate_new_job
    from queuetopia_py._store.database import Database
    from queuetopia_py._store.jobs import JobStore

    migrate(db_url)
    engine = create_engine(db_url)
    carried = '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
    new = validate_new_job(
        "q", "a", {"n": 1}, timeout=60, max_backoff=60, max_attempts=3, scheduled_at=None
    )
    store = JobStore(Database(engine, build_tables()), "traces")
    with engine.begin() as conn:
        (job,) = store.create(conn, [replace(new, trace_context=carried)]).jobs
    assert store.get(job.id).trace_context == carried  # type: ignore[union-attr]
    assert migrate(db_url, to=5) == 5
    columns = {c["name"] for c in sa.inspect(engine).get_columns("queuetopia_jobs")}
    assert "trace_context" not in columns
    # A node of version 5 inserts without the column; version 6 reads those rows as untraced.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO queuetopia_jobs (scope, queue, action, params, timeout_us,"
                " max_backoff_us, max_attempts, attempts, scheduled_at, next_attempt_at,"
                " inserted_at) SELECT scope, queue, action, params, timeout_us, max_backoff_us,"
                " max_attempts, 0, scheduled_at, next_attempt_at, inserted_at"
                " FROM queuetopia_jobs WHERE id = :id"
            ),
            {"id": job.id},
        )
    engine.dispose()
    assert migrate(db_url) == LATEST
    queue = Queuetopia(repo=db_url, scope="traces")
    jobs = queue.list_jobs()
    assert [(j.params, j.trace_context) for j in jobs] == [({"n": 1}, None)] * 2
    queue.stop()
