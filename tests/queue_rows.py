"""The queues table against the jobs it summarises: what each queue's row must hold (its
pending count and its head), a check that the rows hold exactly that, and, for tests
that edit jobs by hand, a way to bring the rows up to date.

A module of its own (not conftest.py): worker processes started with `spawn` import the
test modules, and several conftest.py files would shadow each other there.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from queuetopia_py._schema import Tables

Key = tuple[str, str]


def expected_rows(conn: sa.Connection, tables: Tables) -> dict[Key, dict[str, Any]]:
    """Each queue with pending jobs: its count and its head, computed from the jobs."""
    jobs = tables.jobs
    pending = conn.execute(
        sa.select(
            jobs.c.scope,
            jobs.c.queue,
            jobs.c.id,
            jobs.c.scheduled_at,
            jobs.c.next_attempt_at,
            jobs.c.failing_since,
        )
        .where(jobs.c.state == "pending")
        .order_by(jobs.c.scope, jobs.c.queue, jobs.c.scheduled_at, jobs.c.id)
    ).all()
    rows: dict[Key, dict[str, Any]] = {}
    for job in pending:
        key = (job.scope, job.queue)
        if key in rows:
            rows[key]["pending"] += 1
            continue
        rows[key] = {
            "pending": 1,
            "head_id": job.id,
            "head_at": job.scheduled_at,
            "head_due": job.next_attempt_at,
            "blocked_since": job.failing_since,
        }
    return rows


def actual_rows(conn: sa.Connection, tables: Tables) -> dict[Key, dict[str, Any]]:
    """The rows of the queues table, as `expected_rows` describes them, and the locks."""
    queues = tables.queues
    return {
        (r.scope, r.queue): dict(r._mapping)
        for r in conn.execute(sa.select(queues).order_by(queues.c.scope, queues.c.queue))
    }


def inconsistencies(engine: sa.Engine, tables: Tables) -> list[str]:
    """How the queues table departs from the jobs (empty when it is exact, or when the
    tables are not there)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(tables.queues.name):
            return []
        expected = expected_rows(conn, tables)
        actual = actual_rows(conn, tables)
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want, have = expected.get(key), actual.get(key)
        if have is None:
            problems.append(f"{key}: no row for {want}")
        elif want is None:
            if have["pending"] != 0 or have["head_id"] is not None or have["token"] is None:
                problems.append(f"{key}: a row without pending jobs nor lock: {have}")
        else:
            seen = {name: have[name] for name in want}
            if seen != want:
                problems.append(f"{key}: row {seen}, jobs say {want}")
    return problems


def resync(engine: sa.Engine, tables: Tables) -> None:
    """Rewrite every queue row's count and head from the jobs (keeping the locks); for
    tests that change jobs by hand."""
    queues = tables.queues
    empty = {"pending": 0, "head_id": None, "head_at": None, "head_due": None}
    with engine.begin() as conn:
        expected = expected_rows(conn, tables)
        actual = actual_rows(conn, tables)
        for key in set(expected) | set(actual):
            row = queues.c.scope == key[0], queues.c.queue == key[1]
            if key not in actual:
                conn.execute(queues.insert().values(scope=key[0], queue=key[1], **expected[key]))
            elif key in expected:
                conn.execute(queues.update().where(*row).values(**expected[key]))
            elif actual[key]["token"] is None:
                conn.execute(queues.delete().where(*row))
            else:
                conn.execute(queues.update().where(*row).values(**empty, blocked_since=None))
