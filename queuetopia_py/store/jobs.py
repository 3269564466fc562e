"""Statements that create, read, page through and clean up jobs."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from queuetopia_py.errors import InvalidJobError
from queuetopia_py.job import GIVE_UP, LISTED_STATES, Intervention, Job, NewJob, Progress
from queuetopia_py.store.database import Database


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def row_to_job(row: Row[Any]) -> Job:
    """Build a `Job` value from a row of the jobs table."""
    m = row._mapping
    return Job(
        id=m["id"],
        scope=m["scope"],
        queue=m["queue"],
        action=m["action"],
        params=m["params"],
        timeout=timedelta(microseconds=m["timeout_us"]),
        max_backoff=timedelta(microseconds=m["max_backoff_us"]),
        max_attempts=m["max_attempts"],
        attempts=m["attempts"],
        attempted_at=m["attempted_at"],
        attempted_by=m["attempted_by"],
        next_attempt_at=m["next_attempt_at"],
        scheduled_at=m["scheduled_at"],
        done_at=m["done_at"],
        error=m["error"],
        inserted_at=m["inserted_at"],
        outcome=m["outcome"],
        ended_at=m["ended_at"],
        on_failure=m["on_failure"] or GIVE_UP,
        round_start=m["round_start"],
        failing_since=m["failing_since"],
        progress=None
        if m["progress_at"] is None
        else Progress(m["progress_message"], m["progress_fraction"], m["progress_at"]),
        result=m["result"],
        interventions=tuple(Intervention.from_json(i) for i in m["interventions"] or ()),
    )


def pending(jobs: sa.FromClause) -> sa.ColumnElement[bool]:
    """Jobs that hold their place in their queue: neither done nor ended otherwise."""
    return sa.and_(jobs.c.done_at.is_(None), jobs.c.outcome.is_(None))


def queue_order(jobs: sa.FromClause) -> list[sa.ColumnElement[Any]]:
    """Queue order among pending jobs, spelled to match the queue-order index: its
    `done_at, outcome` columns are NULL for every pending job, but PostgreSQL walks the
    index in order (and stops at the head) only when the ORDER BY names them."""
    return [jobs.c.done_at, jobs.c.outcome, jobs.c.scheduled_at, jobs.c.id]


def in_state(jobs: sa.FromClause, state: str) -> sa.ColumnElement[bool]:
    """Jobs listed under `state` (one of `LISTED_STATES`)."""
    if state == "pending":
        return pending(jobs)
    if state == "done":
        return jobs.c.done_at.is_not(None)
    if state in LISTED_STATES:
        return sa.and_(jobs.c.done_at.is_(None), jobs.c.outcome == state)
    raise InvalidJobError("state", state, f"must be one of {', '.join(LISTED_STATES)}")


class JobStore:
    """Enqueue and read jobs of one scope."""

    def __init__(self, db: Database, scope: str) -> None:
        self.db = db
        self.scope = scope
        self.jobs = db.tables.jobs

    def insert(self, conn: Connection, new: NewJob) -> Job:
        """Insert one job; its `scheduled_at` defaults to the database's now."""
        jobs = self.jobs
        now = self.db.now()
        scheduled: sa.ColumnElement[datetime] = (
            now
            if new.scheduled_at is None
            else sa.bindparam(None, new.scheduled_at, type_=jobs.c.scheduled_at.type)
        )
        stmt = jobs.insert().values(
            scope=self.scope,
            queue=new.queue,
            action=new.action,
            params=new.params,
            timeout_us=_us(new.timeout),
            max_backoff_us=_us(new.max_backoff),
            max_attempts=new.max_attempts,
            on_failure=new.on_failure,
            attempts=0,
            scheduled_at=scheduled,
            next_attempt_at=scheduled,
            inserted_at=now,
        )
        if conn.dialect.insert_returning:
            return row_to_job(conn.execute(stmt.returning(*jobs.c)).one())
        (job_id,) = conn.execute(stmt).inserted_primary_key or (None,)
        return row_to_job(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one())

    def insert_many(self, conn: Connection, news: Sequence[NewJob]) -> list[Job]:
        """Insert jobs in one statement where the database can return the rows in the
        order given (their ids, so their order in a queue, follow it); one by one else."""
        jobs = self.jobs
        dialect = conn.dialect
        if not (
            dialect.insert_executemany_returning
            and dialect.insert_executemany_returning_sort_by_parameter_order
        ):
            return [self.insert(conn, new) for new in news]
        now = self.db.now()
        scheduled = sa.func.coalesce(
            sa.bindparam("given_scheduled_at", type_=jobs.c.scheduled_at.type), now
        )
        stmt = (
            jobs.insert()
            .values(
                scope=self.scope,
                attempts=0,
                scheduled_at=scheduled,
                next_attempt_at=scheduled,
                inserted_at=now,
            )
            .returning(*jobs.c, sort_by_parameter_order=True)
        )
        rows = [
            {
                "queue": new.queue,
                "action": new.action,
                "params": new.params,
                "timeout_us": _us(new.timeout),
                "max_backoff_us": _us(new.max_backoff),
                "max_attempts": new.max_attempts,
                "on_failure": new.on_failure,
                "given_scheduled_at": new.scheduled_at,
            }
            for new in news
        ]
        return [row_to_job(r) for r in conn.execute(stmt, rows)]

    def _select(self) -> sa.Select[Any]:
        return sa.select(self.jobs).where(self.jobs.c.scope == self.scope)

    def _filtered(
        self,
        stmt: sa.Select[Any],
        queue: str | None,
        action: str | None,
        available: bool | None,
        state: str | None = None,
    ) -> sa.Select[Any]:
        jobs = self.jobs
        if state is not None:
            stmt = stmt.where(in_state(jobs, state))
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if action is not None:
            stmt = stmt.where(jobs.c.action == action)
        if available is not None:
            stmt = stmt.where(pending(jobs) if available else sa.not_(pending(jobs)))
        return stmt

    def get(self, job_id: int) -> Job | None:
        """The job with this id in this scope, or None."""
        with self.db.transaction() as conn:
            row = conn.execute(self._select().where(self.jobs.c.id == job_id)).first()
        return None if row is None else row_to_job(row)

    def list(
        self,
        *,
        queue: str | None = None,
        action: str | None = None,
        available: bool | None = None,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs of this scope in queue order (`scheduled_at`, then sequence)."""
        jobs = self.jobs
        stmt = self._filtered(self._select(), queue, action, available, state)
        stmt = stmt.order_by(jobs.c.scheduled_at, jobs.c.id).offset(offset).limit(limit)
        with self.db.transaction() as conn:
            return [row_to_job(r) for r in conn.execute(stmt)]

    def count(
        self,
        *,
        queue: str | None = None,
        action: str | None = None,
        available: bool | None = None,
        state: str | None = None,
    ) -> int:
        """How many jobs `list` would return without a limit."""
        stmt = (
            sa.select(sa.func.count()).select_from(self.jobs).where(self.jobs.c.scope == self.scope)
        )
        stmt = self._filtered(stmt, queue, action, available, state)
        with self.db.transaction() as conn:
            return int(conn.execute(stmt).scalar_one())

    def delete_completed(
        self, older_than: timedelta, *, include_ended: bool = False, batch_size: int = 1000
    ) -> int:
        """Delete this scope's jobs done more than `older_than` ago (and, with
        `include_ended`, those that ended without success that long ago), in small
        batches."""
        jobs = self.jobs
        done = [jobs.c.done_at.is_not(None), jobs.c.done_at < sa.bindparam("cutoff")]
        ended = [
            jobs.c.done_at.is_(None),
            jobs.c.outcome.is_not(None),
            jobs.c.ended_at < sa.bindparam("cutoff"),
        ]

        def batch(conditions: list[sa.ColumnElement[bool]]) -> int:
            with self.db.transaction() as conn:
                cutoff = conn.execute(sa.select(self.db.now())).scalar_one() - older_than
                ids: Sequence[int] = (
                    conn.execute(
                        sa.select(jobs.c.id)
                        .where(jobs.c.scope == self.scope, *conditions)
                        .limit(batch_size),
                        {"cutoff": cutoff},
                    )
                    .scalars()
                    .all()
                )
                if ids:
                    conn.execute(jobs.delete().where(jobs.c.id.in_(ids)))
            return len(ids)

        deleted = 0
        for conditions in [done, ended] if include_ended else [done]:
            while True:
                # Deleting ended jobs is idempotent: every transient failure may be retried.
                count = self.db.retrying(functools.partial(batch, conditions))
                deleted += count
                if count < batch_size:
                    break
        return deleted


def append_intervention(conn: Connection, jobs: sa.Table, job: Job, entry: Intervention) -> Job:
    """Add `entry` to `job`'s interventions. The caller holds the job's row lock, and
    `job` is the row as read under it."""
    interventions = (*job.interventions, entry)
    conn.execute(
        jobs.update()
        .where(jobs.c.id == job.id)
        .values(interventions=[i.to_json() for i in interventions])
    )
    return replace(job, interventions=interventions)
