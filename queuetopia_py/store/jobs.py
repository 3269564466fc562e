"""Statements that create, read, page through and clean up jobs."""

from __future__ import annotations

import functools
import json
import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from queuetopia_py.errors import DatabaseError, InvalidJobError
from queuetopia_py.job import GIVE_UP, LISTED_STATES, Intervention, Job, NewJob, Progress
from queuetopia_py.schema import UtcDateTime
from queuetopia_py.store.announcements import channel, notify
from queuetopia_py.store.database import Database

logger = logging.getLogger(__name__)

#: The `queue` of a scope's cleaner lock in the locks table. No queue has this name (names
#: have no leading space), so it never holds up a queue, nor is it taken for one.
CLEANER_LOCK = " cleaner"
#: How long the cleaner's lock lives unless renewed; each batch of deletes renews it, so
#: that the lock of a node that died while cleaning is taken over this long after.
CLEANER_LOCK_LIFETIME = timedelta(seconds=60)
# A node waiting for another's cleaner lock looks again after this long, doubling.
_CLEANER_FIRST_WAIT = 0.05
_CLEANER_MAX_WAIT = 1.0


class _CleanerBusy(Exception):
    pass


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def row_to_job(row: Row[Any]) -> Job:
    """Build a `Job` value from a row of the jobs table."""
    return job_from_mapping(row._mapping)


def job_from_mapping(m: Mapping[Any, Any]) -> Job:
    """Build a `Job` value from a jobs table row's values by column name (UTC times)."""
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


def _new_job(
    scope: str, new: NewJob, job_id: int, scheduled_at: datetime, inserted_at: datetime
) -> Job:
    """The `Job` a row just inserted from `new` holds."""
    return Job(
        id=job_id,
        scope=scope,
        queue=new.queue,
        action=new.action,
        params=new.params,
        timeout=new.timeout,
        max_backoff=new.max_backoff,
        max_attempts=new.max_attempts,
        attempts=0,
        attempted_at=None,
        attempted_by=None,
        next_attempt_at=scheduled_at,
        scheduled_at=scheduled_at,
        done_at=None,
        error=None,
        inserted_at=inserted_at,
        on_failure=new.on_failure,
    )


def _unnest_row(new: NewJob) -> tuple[Any, ...]:
    return (
        new.queue,
        new.action,
        json.dumps(new.params, separators=(",", ":")),
        _us(new.timeout),
        _us(new.max_backoff),
        new.max_attempts,
        new.on_failure,
        new.scheduled_at,
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
        jobs = self.jobs
        self._insert = self._build_insert()
        inserted = (jobs.c.id, jobs.c.scheduled_at, jobs.c.inserted_at)
        self._inserted = sa.select(*inserted)
        self._insert_returning = self._insert.returning(*inserted)
        created = self._insert_returning.cte("created")
        self._insert_announcing = sa.select(
            created, notify(db.tables, sa.bindparam("b_payload")).label("announced")
        )
        self._insert_announced_sql = (
            f"WITH created AS (INSERT INTO {jobs.name} (scope, queue, action, params,"
            " timeout_us, max_backoff_us, max_attempts, on_failure, attempts, scheduled_at,"
            " next_attempt_at, inserted_at) VALUES (%(scope)s, %(queue)s, %(action)s,"
            " CAST(%(params)s AS json), %(timeout_us)s, %(max_backoff_us)s, %(max_attempts)s,"
            " %(on_failure)s, 0, coalesce(CAST(%(scheduled_at)s AS timestamptz), now()),"
            " coalesce(CAST(%(scheduled_at)s AS timestamptz), now()), now())"
            " RETURNING id, scheduled_at, inserted_at)"
            " SELECT id, scheduled_at, inserted_at,"
            " CAST(pg_notify(%(channel)s, %(payload)s) AS text) FROM created"
        )

    def _build_insert(self) -> sa.Insert:
        """The single-job INSERT, built once: its values are bind parameters."""
        jobs = self.jobs
        now = self.db.now()
        scheduled = sa.func.coalesce(
            sa.bindparam("b_scheduled_at", type_=jobs.c.scheduled_at.type), now
        )
        return jobs.insert().values(
            scope=self.scope,
            queue=sa.bindparam("b_queue", type_=jobs.c.queue.type),
            action=sa.bindparam("b_action", type_=jobs.c.action.type),
            params=sa.bindparam("b_params", type_=jobs.c.params.type),
            timeout_us=sa.bindparam("b_timeout_us", type_=jobs.c.timeout_us.type),
            max_backoff_us=sa.bindparam("b_max_backoff_us", type_=jobs.c.max_backoff_us.type),
            max_attempts=sa.bindparam("b_max_attempts", type_=jobs.c.max_attempts.type),
            on_failure=sa.bindparam("b_on_failure", type_=jobs.c.on_failure.type),
            attempts=0,
            scheduled_at=scheduled,
            next_attempt_at=scheduled,
            inserted_at=now,
        )

    def insert(self, conn: Connection, new: NewJob, *, announcing: str | None = None) -> Job:
        """Insert one job in `conn`'s transaction; its `scheduled_at` defaults to the
        database's now. `announcing` (PostgreSQL) is an announcement payload that the
        same statement sends with NOTIFY."""
        jobs = self.jobs
        values = {
            "b_queue": new.queue,
            "b_action": new.action,
            "b_params": new.params,
            "b_timeout_us": _us(new.timeout),
            "b_max_backoff_us": _us(new.max_backoff),
            "b_max_attempts": new.max_attempts,
            "b_on_failure": new.on_failure,
            "b_scheduled_at": new.scheduled_at,
        }
        if announcing is not None:
            values["b_payload"] = announcing
            row = conn.execute(self._insert_announcing, values).one()
        elif conn.dialect.insert_returning:
            row = conn.execute(self._insert_returning, values).one()
        else:
            (job_id,) = conn.execute(self._insert, values).inserted_primary_key or (None,)
            row = conn.execute(self._inserted.where(jobs.c.id == job_id)).one()
        return _new_job(self.scope, new, row[0], row[1], row[2])

    def insert_announced(self, new: NewJob, announcing: str) -> Job:
        """PostgreSQL: insert one job and announce it (`announcing` is the payload) with
        one autocommitted statement run on the driver: one round trip."""
        sql = self._insert_announced_sql
        params = {
            "scope": self.scope,
            "queue": new.queue,
            "action": new.action,
            "params": json.dumps(new.params, separators=(",", ":")),
            "timeout_us": _us(new.timeout),
            "max_backoff_us": _us(new.max_backoff),
            "max_attempts": new.max_attempts,
            "on_failure": new.on_failure,
            "scheduled_at": new.scheduled_at,
            "channel": channel(self.db.tables),
            "payload": announcing,
        }
        with self.db.raw_autocommit() as dbapi:
            job_id, scheduled_at, inserted_at, _ = dbapi.execute(sql, params).fetchone()
        return _new_job(
            self.scope, new, job_id, scheduled_at.astimezone(UTC), inserted_at.astimezone(UTC)
        )

    def insert_many(self, conn: Connection, news: Sequence[NewJob]) -> list[Job]:
        """Insert jobs in one statement, their ids (so their order in a queue) following
        the order given; one by one where the database cannot return the new rows in
        that order."""
        dialect = conn.dialect
        if dialect.name == "postgresql":
            rows = self._insert_unnest(conn, news)
        elif (
            dialect.insert_executemany_returning
            and dialect.insert_executemany_returning_sort_by_parameter_order
        ):
            rows = self._insert_values(conn, news)
        else:
            return [self.insert(conn, new) for new in news]
        return [
            _new_job(self.scope, new, job_id, scheduled_at, inserted_at)
            for new, (job_id, scheduled_at, inserted_at) in zip(news, rows, strict=True)
        ]

    def _insert_values(
        self, conn: Connection, news: Sequence[NewJob]
    ) -> list[tuple[int, datetime, datetime]]:
        """Multi-row INSERT ... VALUES ... RETURNING, batched by SQLAlchemy."""
        jobs = self.jobs
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
            .returning(
                jobs.c.id, jobs.c.scheduled_at, jobs.c.inserted_at, sort_by_parameter_order=True
            )
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
        return [(r[0], r[1], r[2]) for r in conn.execute(stmt, rows)]

    def _insert_unnest(
        self, conn: Connection, news: Sequence[NewJob]
    ) -> list[tuple[int, datetime, datetime]]:
        """PostgreSQL: one INSERT ... SELECT FROM unnest(arrays), whatever the number of
        jobs: a short statement with one array per column. The ids follow the rows'
        ordinality; the returned rows are put back in that order."""
        jobs = self.jobs
        columns = list(zip(*(_unnest_row(new) for new in news), strict=True))
        stmt = sa.text(
            f"INSERT INTO {jobs.name} (scope, queue, action, params, timeout_us,"
            " max_backoff_us, max_attempts, on_failure, attempts, scheduled_at,"
            " next_attempt_at, inserted_at)"
            " SELECT :scope, q, a, CAST(p AS json), t, b, m, f, 0, coalesce(s, now()),"
            " coalesce(s, now()), now()"
            " FROM unnest(CAST(:queues AS text[]), CAST(:actions AS text[]),"
            " CAST(:params AS text[]), CAST(:timeouts AS bigint[]), CAST(:backoffs AS bigint[]),"
            " CAST(:maxes AS integer[]), CAST(:modes AS text[]),"
            " CAST(:scheduled AS timestamptz[]))"
            " WITH ORDINALITY AS n(q, a, p, t, b, m, f, s, i)"
            " ORDER BY i RETURNING id, scheduled_at, inserted_at"
        ).columns(
            jobs.c.id, sa.column("scheduled_at", UtcDateTime), sa.column("inserted_at", UtcDateTime)
        )
        names = ("queues", "actions", "params", "timeouts", "backoffs", "maxes", "modes")
        params: dict[str, Any] = dict(zip(names, map(list, columns), strict=False))
        params["scheduled"] = list(columns[7])
        params["scope"] = self.scope
        rows = sorted(conn.execute(stmt, params), key=lambda r: int(r[0]))
        return [(r[0], r[1], r[2]) for r in rows]

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
        self,
        older_than: timedelta,
        *,
        include_ended: bool = False,
        batch_size: int = 1000,
        node: str = "",
        skip_if_busy: bool = False,
    ) -> int:
        """Delete this scope's jobs done more than `older_than` ago (and, with
        `include_ended`, those that ended without success that long ago), `batch_size`
        at a time, each batch in a transaction of its own.

        Holds the scope's cleaner lock (for `node`) meanwhile, so that one node at a time
        cleans a scope. While another node holds it, returns 0 at once if `skip_if_busy`,
        else waits for it. Each batch renews the lock and runs only while it is held.
        """
        token = self._take_cleaner_lock(node)
        pause = _CLEANER_FIRST_WAIT
        while token is None:
            if skip_if_busy:
                logger.debug("another node is cleaning", extra={"scope": self.scope})
                return 0
            time.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, _CLEANER_MAX_WAIT)
            token = self._take_cleaner_lock(node)
        try:
            return self._delete_batches(older_than, include_ended, batch_size, token)
        finally:
            self._release_cleaner_lock(token)

    def _cleaner_lock(self) -> sa.ColumnElement[bool]:
        locks = self.db.tables.locks
        return sa.and_(locks.c.scope == self.scope, locks.c.queue == CLEANER_LOCK)

    def _take_cleaner_lock(self, node: str) -> str | None:
        """Take the scope's cleaner lock: its token, or None while another's is live. An
        expired one (its node died while cleaning) is taken over in place."""
        locks = self.db.tables.locks

        def run() -> str | None:
            token = uuid.uuid4().hex
            try:
                with self.db.transaction() as conn:
                    now = conn.execute(sa.select(self.db.now())).scalar_one()
                    values = {
                        "token": token,
                        "locked_at": now,
                        "locked_by_node": node,
                        "locked_until": now + CLEANER_LOCK_LIFETIME,
                        "job_id": None,
                    }
                    # A plain read first: a live lock is left alone without a write.
                    held = conn.execute(
                        sa.select(locks.c.token, locks.c.locked_until).where(self._cleaner_lock())
                    ).first()
                    if held is not None and held.locked_until > now:
                        return None
                    if held is not None:
                        taken = conn.execute(
                            locks.update()
                            .where(self._cleaner_lock(), locks.c.token == held.token)
                            .values(**values)
                        ).rowcount
                        return token if taken == 1 else None
                    try:
                        conn.execute(
                            locks.insert().values(scope=self.scope, queue=CLEANER_LOCK, **values)
                        )
                    except IntegrityError as exc:  # another node took it just now
                        raise _CleanerBusy from exc
                return token
            except _CleanerBusy:
                return None

        return self.db.retrying(run)

    def _release_cleaner_lock(self, token: str) -> None:
        locks = self.db.tables.locks

        def run() -> None:
            with self.db.transaction() as conn:
                conn.execute(locks.delete().where(self._cleaner_lock(), locks.c.token == token))

        try:
            self.db.retrying(run)
        except DatabaseError:  # it expires by itself
            logger.warning("could not release the cleaner lock", exc_info=True)

    def _delete_batches(
        self, older_than: timedelta, include_ended: bool, batch_size: int, token: str
    ) -> int:
        jobs, locks = self.jobs, self.db.tables.locks
        done = [jobs.c.done_at.is_not(None), jobs.c.done_at < sa.bindparam("cutoff")]
        ended = [
            jobs.c.done_at.is_(None),
            jobs.c.outcome.is_not(None),
            jobs.c.ended_at < sa.bindparam("cutoff"),
        ]

        def batch(conditions: list[sa.ColumnElement[bool]]) -> int | None:
            with self.db.transaction() as conn:
                now = conn.execute(sa.select(self.db.now())).scalar_one()
                renewed = conn.execute(
                    locks.update()
                    .where(self._cleaner_lock(), locks.c.token == token)
                    .values(locked_until=now + CLEANER_LOCK_LIFETIME)
                ).rowcount
                if renewed != 1:
                    return None  # our lock expired and was taken over: stop
                ids: Sequence[int] = (
                    conn.execute(
                        sa.select(jobs.c.id)
                        .where(jobs.c.scope == self.scope, *conditions)
                        .limit(batch_size),
                        {"cutoff": now - older_than},
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
                if count is None:
                    logger.warning("lost the cleaner lock; stopping", extra={"scope": self.scope})
                    return deleted
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
