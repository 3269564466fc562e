"""Statements the scheduler runs: find due queues, claim a queue's lock and head, record
an attempt, renew or release the lock. Each public method is one short transaction.

Fencing: a claim increments the job's `attempts` and inserts a lock row with a fresh
token. Recording an attempt only matches the job while `attempts` is unchanged, and
releasing or renewing the lock only matches the row with our token, so a node whose lock
expired and was taken over can write nothing over the new holder's work.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from queuetopia_py import defaults
from queuetopia_py.backoff import default_backoff, is_due, lock_lifetime
from queuetopia_py.errors import DatabaseError
from queuetopia_py.job import (
    BLOCK,
    Intervention,
    Job,
    NewJob,
    Progress,
    dead_letter_queue,
)
from queuetopia_py.schema import WHOLE_SCOPE, Tables
from queuetopia_py.store.database import Database, is_rolled_back_conflict
from queuetopia_py.store.jobs import (
    JobStore,
    append_intervention,
    job_from_mapping,
    pending,
    queue_order,
    row_to_job,
)


@dataclass(frozen=True, slots=True)
class Claim:
    """A queue's lock and head job, held by this node until `locked_until` (database time)."""

    job: Job
    token: str
    locked_until: datetime
    #: This process's monotonic clock just before the claim read the database's time:
    #: an attempt given `timeout` from here ends before the lock expires (or the lock is
    #: renewed while it runs, see `queuetopia_py.lease`).
    started: float
    #: The job as it was before the claim (to give the claim back unused).
    prior: Job | None = None


@dataclass(frozen=True, slots=True)
class NotDue:
    """The queue's head exists but may not start for `wait` (database time); `wait` is
    None when the head is blocked until an operator acts."""

    wait: timedelta | None


class Busy:
    """Another node holds the queue's lock."""


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The head's final attempt was started but never recorded (its node died): the job
    has just met its failure mode (given up, blocked or moved)."""

    job: Job
    moved_to: Job | None = None


@dataclass(frozen=True, slots=True)
class PollResult:
    """Due, unlocked queues, and how long until the next known due time (if any)."""

    queues: list[str]
    next_in: timedelta | None


class _LockTaken(Exception):
    pass


def interrupted_error(job: Job) -> str:
    """The error recorded for a job whose final attempt was never recorded."""
    note = (
        f"attempt {job.attempts} (started by {job.attempted_by} at "
        f"{job.attempted_at.isoformat() if job.attempted_at else '?'}) was interrupted before "
        "its result was recorded; no attempt left"
    )
    return f"{job.error}\n\n{note}" if job.error else note


@dataclass(frozen=True, slots=True)
class Recorded:
    """A failed attempt as recorded: the job afterwards, and the job its failure mode
    created in a dead-letter queue (if any)."""

    job: Job
    moved_to: Job | None = None


def _pg_head(tables: Tables, *, passing: bool) -> str:
    """PostgreSQL: the `head` CTE, locking the queue's next job (skipping it if another
    node is claiming it). While passing the lock, the job being recorded (`:job_id`) is
    left out: it is still pending in the statement's snapshot."""
    jobs, suspensions = tables.jobs.name, tables.suspensions.name
    current = "AND h.id <> :job_id" if passing else ""
    return f"""head AS (
    SELECT j.id, j.timeout_us, j.next_attempt_at, j.attempts, j.round_start,
        j.max_attempts, j.attempted_at, j.attempted_by, j.progress_message,
        j.progress_fraction, j.progress_at
    FROM {jobs} AS j
    WHERE j.id = (
        SELECT h.id FROM {jobs} AS h
        WHERE h.scope = :scope AND h.queue = :queue AND h.done_at IS NULL
            AND h.outcome IS NULL {current}
            AND NOT EXISTS (
                SELECT 1 FROM {suspensions} AS s
                WHERE s.scope = h.scope AND s.queue IN (h.queue, :whole_scope)
            )
        ORDER BY h.done_at, h.outcome, h.scheduled_at, h.id
        LIMIT 1
    )
        AND j.done_at IS NULL AND j.outcome IS NULL
        {"AND EXISTS (SELECT 1 FROM done)" if passing else ""}
    FOR UPDATE SKIP LOCKED
)"""


def _pg_start(tables: Tables, lock: str) -> str:
    """PostgreSQL: the `started` CTE, counting the attempt of the job whose lock the CTE
    `lock` returns, exactly as `ClaimStore._start` does (`default_backoff` in SQL)."""
    return f"""started AS (
    UPDATE {tables.jobs.name} AS j SET attempts = j.attempts + 1, attempted_at = now(),
        attempted_by = :node,
        next_attempt_at = now() + LEAST(
            (CAST(power(2, LEAST(GREATEST(j.attempts - j.round_start, 0), 40)) AS bigint) + 1)
                * 1000000,
            j.max_backoff_us
        ) * interval '1 microsecond',
        progress_message = NULL, progress_fraction = NULL, progress_at = NULL
    FROM {lock}
    WHERE j.id = {lock}.job_id
    RETURNING {", ".join(f"j.{c.name}" for c in tables.jobs.c)}, {lock}.locked_until AS lock_until
)"""


# What the statements return: the head as it was before, and the started job. Columns
# are named, never `*`: a prepared statement's result must not change with the schema.
_PG_PRIOR = """
    head.id AS head_id, head.next_attempt_at AS head_next_attempt_at,
    head.attempts - head.round_start >= head.max_attempts AS head_exhausted,
    head.attempted_at AS prior_attempted_at, head.attempted_by AS prior_attempted_by,
    head.next_attempt_at AS prior_next_attempt_at,
    head.progress_message AS prior_progress_message,
    head.progress_fraction AS prior_progress_fraction,
    head.progress_at AS prior_progress_at,
    started.*"""  # the columns that `started` names

# A success, fenced by the attempt it records (a job aborted meanwhile is done too).
_PG_DONE = """
    UPDATE {jobs} SET done_at = now(), outcome = NULL, ended_at = NULL,
        result = CAST(:result AS json)
    WHERE id = :job_id AND attempts = :attempts AND done_at IS NULL
    RETURNING id
"""

# How long recording an attempt's outcome is retried through a database outage: the
# outcome is kept if the database comes back meanwhile (fencing keeps a late record from
# landing over another node's claim). Past it, the attempt counts as interrupted.
_RECORD_PATIENCE = 120.0

_MARGIN_US = defaults.LOCK_MARGIN // timedelta(microseconds=1)
# `lock_lifetime` of the head, from now (`:lease_us`, the lease, is a constant).
_LOCK_LIFETIME_SQL = (
    f"now() + LEAST(head.timeout_us + {_MARGIN_US}, :lease_us) * interval '1 microsecond'"
)


def _raw(sql: str, scope: str, node: str, lease: timedelta) -> RawStatement:
    constants = {
        "scope": scope,
        "node": node,
        "whole_scope": WHOLE_SCOPE,
        "lease_us": lease // timedelta(microseconds=1),
    }
    # psycopg's own placeholders: the statement runs on the driver directly.
    return RawStatement(re.sub(r":(\w+)", r"%(\1)s", sql), constants)


def claim_statement(
    tables: Tables, scope: str, node: str, lease: timedelta = defaults.LOCK_LEASE
) -> RawStatement:
    """PostgreSQL: `ClaimStore.claim` as one statement. `head` locks the queue's head;
    `lock` takes the queue's lock for it if it is due and has attempts left (taking over
    an expired lock in place); `started` counts the attempt. A head that is not due,
    or whose last attempt was interrupted, is only reported."""
    locks = tables.locks.name
    sql = f"""
WITH {_pg_head(tables, passing=False)}, lock AS (
    INSERT INTO {locks} AS l (scope, queue, token, locked_at, locked_by_node, locked_until,
        job_id)
    SELECT :scope, :queue, :token, now(), :node, {_LOCK_LIFETIME_SQL}, head.id
    FROM head
    WHERE head.next_attempt_at <= now()
        AND head.attempts - head.round_start < head.max_attempts
    ON CONFLICT (scope, queue) DO UPDATE SET token = EXCLUDED.token,
        locked_at = EXCLUDED.locked_at, locked_by_node = EXCLUDED.locked_by_node,
        locked_until = EXCLUDED.locked_until, job_id = EXCLUDED.job_id
        WHERE l.locked_until <= now()
    RETURNING l.job_id, l.locked_until
), {_pg_start(tables, "lock")}
SELECT now() AS db_now, 0 AS done_count, {_PG_PRIOR}
FROM (SELECT 1) AS one
    LEFT JOIN head ON true
    LEFT JOIN started ON head.id = started.id
"""
    return _raw(sql, scope, node, lease)


def record_statement(
    tables: Tables, scope: str, node: str, lease: timedelta = defaults.LOCK_LEASE
) -> RawStatement:
    """PostgreSQL: `record_success` as one statement: the success (fenced by `attempts`)
    and the release of our lock (fenced by our token)."""
    sql = f"""
WITH done AS ({_PG_DONE.format(jobs=tables.jobs.name)}), released AS (
    DELETE FROM {tables.locks.name}
    WHERE scope = :scope AND queue = :queue AND token = :token
    RETURNING 1
)
SELECT now() AS db_now, (SELECT count(*) FROM done) AS done_count,
    (SELECT count(*) FROM released) AS released_count
"""
    return _raw(sql, scope, node, lease)


def record_and_pass_statement(
    tables: Tables, scope: str, node: str, lease: timedelta = defaults.LOCK_LEASE
) -> RawStatement:
    """PostgreSQL: record a success and pass the queue's lock to its next job in one
    statement, its data-modifying CTEs seeing one snapshot and one `now()`.

    `done` records the success (fenced by `attempts`); `head` locks the queue's next job
    if the success was recorded; `passed` moves our lock to it (fenced by our token) if
    it is due and has attempts left; `released` deletes our lock when nothing follows;
    `started` counts the new attempt. Returns one row: the count of jobs done, the
    time, the head as it was, and the started job (NULLs when none).
    """
    jobs, locks = tables.jobs.name, tables.locks.name
    sql = f"""
WITH done AS ({_PG_DONE.format(jobs=jobs)}), {_pg_head(tables, passing=True)}, passed AS (
    UPDATE {locks} AS l SET job_id = head.id, locked_at = now(),
        locked_until = {_LOCK_LIFETIME_SQL}
    FROM head
    WHERE l.scope = :scope AND l.queue = :queue AND l.token = :token
        AND head.next_attempt_at <= now()
        AND head.attempts - head.round_start < head.max_attempts
    RETURNING l.job_id, l.locked_until
), released AS (
    DELETE FROM {locks}
    WHERE scope = :scope AND queue = :queue AND token = :token
        AND NOT EXISTS (SELECT 1 FROM passed)
    RETURNING 1
), {_pg_start(tables, "passed")}
SELECT now() AS db_now, (SELECT count(*) FROM done) AS done_count,
    (SELECT count(*) FROM released) AS released_count, {_PG_PRIOR}
FROM (SELECT 1) AS one
    LEFT JOIN head ON true
    LEFT JOIN started ON head.id = started.id
"""
    return _raw(sql, scope, node, lease)


def _done(job: Job, at: datetime, result: Any) -> Job:
    """`job` as a recorded success at `at` leaves it (done, whatever an operator did)."""
    return replace(job, done_at=at, outcome=None, ended_at=None, result=result)


class _Exhausted:
    """The head's last attempt was interrupted: left to the ordinary claim."""


def _from_raw(
    row: dict[str, Any], token: str, started: float
) -> Claim | NotDue | Busy | _Exhausted | None:
    """What a PostgreSQL claim (or lock pass) row says about the queue's head."""
    if row["head_id"] is None:
        return None  # empty, suspended, or being claimed by another node
    now: datetime = row["db_now"]
    if row["id"] is not None:
        following = job_from_mapping(row)
        progress = None
        if row["prior_progress_at"] is not None:
            progress = Progress(
                row["prior_progress_message"],
                row["prior_progress_fraction"],
                row["prior_progress_at"],
            )
        prior = replace(
            following,
            attempts=following.attempts - 1,
            attempted_at=row["prior_attempted_at"],
            attempted_by=row["prior_attempted_by"],
            next_attempt_at=row["prior_next_attempt_at"],
            progress=progress,
        )
        return Claim(following, token, row["lock_until"], started, prior=prior)
    waits: datetime | None = row["head_next_attempt_at"]
    if not is_due(waits, now):
        return NotDue(None if waits is None else waits - now)
    if row["head_exhausted"]:
        return _Exhausted()
    return Busy()


@dataclass(frozen=True, slots=True)
class RawStatement:
    """SQL in the driver's placeholder style, with the parameters it always takes."""

    sql: str
    constants: dict[str, Any]


# The timestamp columns of the jobs table and of the record-and-pass row: psycopg gives
# them in the session's time zone, queuetopia in UTC.
_PG_TIMES = (
    "attempted_at",
    "next_attempt_at",
    "scheduled_at",
    "done_at",
    "inserted_at",
    "ended_at",
    "failing_since",
    "progress_at",
    "db_now",
    "prior_attempted_at",
    "prior_next_attempt_at",
    "prior_progress_at",
    "lock_until",
    "head_next_attempt_at",
)


class ClaimStore:
    """The scheduler's statements for one scope and one node.

    The statements of the hot path (claim, record, poll) are built once here, with bind
    parameters, so that each execution reuses their compiled form.
    """

    def __init__(
        self, db: Database, scope: str, node: str, lease: timedelta = defaults.LOCK_LEASE
    ) -> None:
        self.db = db
        self.scope = scope
        self.node = node
        #: The longest a lock lives without renewal (see `lock_lifetime`).
        self.lease = lease
        self.jobs = db.tables.jobs
        self.locks = db.tables.locks
        self._build_statements()

    def _build_statements(self) -> None:
        jobs, locks, now = self.jobs, self.locks, self.db.now()
        queue = sa.bindparam("b_queue", type_=locks.c.queue.type)
        token = sa.bindparam("b_token", type_=locks.c.token.type)
        self._now = sa.select(now)
        self._lock_row = sa.and_(
            locks.c.scope == self.scope, locks.c.queue == queue, locks.c.token == token
        )
        # The queue's head, leaving out the job whose success is being recorded in the
        # same transaction (`current`; 0 matches no job).
        head = jobs.alias("head")
        head_id = (
            sa.select(head.c.id)
            .where(
                head.c.scope == self.scope,
                head.c.queue == queue,
                pending(head),
                head.c.id != sa.bindparam("b_current", 0),
                ~self._suspended(head),
            )
            .order_by(*queue_order(head))
            .limit(1)
            .scalar_subquery()
        )
        # Lock the head row, skipping it if a concurrent claimer holds it (PostgreSQL,
        # MariaDB 10.6+): never wait for, never pass, the head.
        self._select_head = (
            sa.select(jobs, now.label("db_now"))
            .where(jobs.c.id == head_id, pending(jobs))
            .with_for_update(skip_locked=True)
        )
        self._delete_expired_lock = locks.delete().where(
            locks.c.scope == self.scope,
            locks.c.queue == queue,
            locks.c.locked_until <= sa.bindparam("b_now", type_=locks.c.locked_until.type),
        )
        self._insert_lock = locks.insert().values(scope=self.scope, locked_by_node=self.node)
        self._pass_lock = (
            locks.update()
            .where(self._lock_row)
            .values(
                job_id=sa.bindparam("b_job_id"),
                locked_at=sa.bindparam("b_locked_at"),
                locked_until=sa.bindparam("b_locked_until"),
            )
        )
        self._release_lock = locks.delete().where(self._lock_row)
        postgresql = self.db.dialect == "postgresql"
        tables = self.db.tables
        self._record_and_pass = (
            record_and_pass_statement(tables, self.scope, self.node, self.lease)
            if postgresql
            else None
        )
        self._claim_one = (
            claim_statement(tables, self.scope, self.node, self.lease) if postgresql else None
        )
        self._record = (
            record_statement(tables, self.scope, self.node, self.lease) if postgresql else None
        )
        self._start_attempt = (
            jobs.update()
            .where(jobs.c.id == sa.bindparam("b_job_id"))
            .values(
                attempts=jobs.c.attempts + 1,
                attempted_at=sa.bindparam("b_attempted_at", type_=jobs.c.attempted_at.type),
                attempted_by=self.node,
                next_attempt_at=sa.bindparam("b_retry_at", type_=jobs.c.next_attempt_at.type),
                progress_message=None,
                progress_fraction=None,
                progress_at=None,
            )
        )
        self._mark_done = (
            jobs.update()
            .where(
                jobs.c.id == sa.bindparam("b_job_id"),
                jobs.c.attempts == sa.bindparam("b_attempts"),
                jobs.c.done_at.is_(None),
            )
            .values(
                done_at=sa.bindparam("b_done_at", type_=jobs.c.done_at.type),
                outcome=None,
                ended_at=None,
                result=sa.bindparam("b_result", type_=jobs.c.result.type),
            )
        )

    def _lock_of(self, queue: str) -> sa.ColumnElement[bool]:
        return sa.and_(self.locks.c.scope == self.scope, self.locks.c.queue == queue)

    def _suspended(self, jobs: sa.FromClause) -> sa.ColumnElement[bool]:
        """Whether the queue of `jobs`' row, or its whole scope, is suspended."""
        s = self.db.tables.suspensions
        return sa.exists().where(
            s.c.scope == jobs.c.scope, s.c.queue.in_([jobs.c.queue, WHOLE_SCOPE])
        )

    def poll(self, limit: int, exclude: set[str]) -> PollResult:
        """Release expired locks, then list up to `limit` unlocked queues with due work,
        leaving out `exclude`."""

        def run() -> PollResult:
            jobs, locks = self.jobs, self.locks
            with self.db.transaction() as conn:
                now = conn.execute(self._now).scalar_one()
                # Find expired locks with a plain read, then delete them by key: a range
                # delete would lock the index gaps and deadlock with concurrent claims.
                expired = (
                    conn.execute(
                        sa.select(locks.c.queue).where(
                            locks.c.scope == self.scope, locks.c.locked_until <= now
                        )
                    )
                    .scalars()
                    .all()
                )
                if expired:
                    conn.execute(
                        locks.delete().where(
                            locks.c.scope == self.scope,
                            locks.c.queue.in_(expired),
                            locks.c.locked_until <= now,
                        )
                    )
                # Queues with a due pending job, oldest due first. A queue whose head
                # waits (backing off) while later jobs are due is listed too: its claim
                # answers NotDue and the scheduler leaves it aside until then.
                due = sa.func.min(jobs.c.next_attempt_at)
                stmt = (
                    sa.select(jobs.c.queue)
                    .where(
                        jobs.c.scope == self.scope,
                        jobs.c.done_at.is_(None),
                        jobs.c.outcome.is_(None),
                        jobs.c.next_attempt_at <= now,
                        ~sa.exists().where(
                            locks.c.scope == jobs.c.scope, locks.c.queue == jobs.c.queue
                        ),
                        ~self._suspended(jobs),
                    )
                    .group_by(jobs.c.queue)
                    .order_by(due, jobs.c.queue)
                    .limit(limit)
                )
                if exclude:
                    stmt = stmt.where(jobs.c.queue.not_in(sorted(exclude)))
                queues = list(conn.execute(stmt).scalars().all()) if limit > 0 else []
                # When to look again: the next job to fall due, or the next lock to expire.
                next_job, next_lock = conn.execute(
                    sa.select(
                        sa.select(sa.func.min(jobs.c.next_attempt_at))
                        .where(
                            jobs.c.scope == self.scope,
                            jobs.c.done_at.is_(None),
                            jobs.c.outcome.is_(None),
                            jobs.c.next_attempt_at > now,
                        )
                        .scalar_subquery(),
                        sa.select(sa.func.min(locks.c.locked_until))
                        .where(locks.c.scope == self.scope)
                        .scalar_subquery(),
                    )
                ).one()
            times = [t for t in (next_job, next_lock) if t is not None]
            return PollResult(queues, min(times) - now if times else None)

        return self.db.retrying(run)

    def claim(self, queue: str) -> Claim | NotDue | Busy | Interrupted | None:
        """Take `queue`'s lock and its head job if the head is due.

        None when the queue is empty or its head is being claimed by another node.
        """

        if self._claim_one is not None:
            quick = self._claim_in_one(queue)
            if not isinstance(quick, _Exhausted):
                return quick

        def run() -> Claim | NotDue | Busy | Interrupted | None:
            try:
                with self.db.transaction() as conn:
                    # Taken after any wait for SQLite's write lock (BEGIN IMMEDIATE runs
                    # when the transaction begins) and before the database's time is
                    # read: time spent waiting to claim does not eat into the attempt.
                    started = time.monotonic()
                    row = conn.execute(self._select_head, {"b_queue": queue}).first()
                    if row is None:
                        # Empty, suspended, or being claimed by another node right now.
                        return None
                    now: datetime = row.db_now
                    job = row_to_job(row)
                    if not is_due(job.next_attempt_at, now):
                        waits = job.next_attempt_at
                        return NotDue(None if waits is None else waits - now)
                    conn.execute(self._delete_expired_lock, {"b_queue": queue, "b_now": now})
                    token = uuid.uuid4().hex
                    until = now + lock_lifetime(job.timeout, self.lease)
                    try:
                        conn.execute(
                            self._insert_lock,
                            {
                                "queue": queue,
                                "token": token,
                                "locked_at": now,
                                "locked_until": until,
                                "job_id": job.id,
                            },
                        )
                    except IntegrityError as exc:
                        raise _LockTaken from exc
                    if job.round_attempts >= job.max_attempts:
                        return self._interrupted(conn, job, token, now)
                    return self._start(conn, job, token, now, started)
            except _LockTaken:
                return Busy()
            except DatabaseError as exc:
                if exc.__cause__ is not None and is_rolled_back_conflict(exc.__cause__):
                    return Busy()  # another node claimed this queue at the same instant
                raise

        return self.db.retrying(run)

    def _interrupted(self, conn: sa.Connection, job: Job, token: str, now: datetime) -> Interrupted:
        """The head's final attempt started but was never recorded, and its lock has
        expired (we just took it): that node is gone. The job meets its failure mode."""
        recorded = self._exhaust(conn, job, interrupted_error(job), now)
        conn.execute(self._release_lock, {"b_queue": job.queue, "b_token": token})
        return Interrupted(recorded.job, recorded.moved_to)

    def _start(
        self, conn: sa.Connection, job: Job, token: str, now: datetime, started: float
    ) -> Claim:
        """Count the attempt of `job` whose queue lock (`token`) is held."""
        # Until the attempt is recorded, it counts as failed: should this node die, the
        # job is retried after the default backoff, and given up once it has used its
        # last attempt.
        retry_at = now + default_backoff(job.round_attempts, job.max_backoff)
        conn.execute(
            self._start_attempt, {"b_job_id": job.id, "b_attempted_at": now, "b_retry_at": retry_at}
        )
        claimed = replace(
            job,
            attempts=job.attempts + 1,
            attempted_at=now,
            attempted_by=self.node,
            next_attempt_at=retry_at,
            progress=None,
        )
        return Claim(
            claimed, token, now + lock_lifetime(job.timeout, self.lease), started, prior=job
        )

    def give_back(self, claim: Claim) -> None:
        """Undo a claim whose attempt did not start (the node began stopping): the job
        is as it was before, and the lock is released."""
        prior = claim.prior
        assert prior is not None

        def run() -> None:
            with self.db.transaction() as conn:
                conn.execute(
                    self.jobs.update()
                    .where(self._attempt_of(claim))
                    .values(
                        attempts=prior.attempts,
                        attempted_at=prior.attempted_at,
                        attempted_by=prior.attempted_by,
                        next_attempt_at=prior.next_attempt_at,
                        progress_message=prior.progress and prior.progress.message,
                        progress_fraction=prior.progress and prior.progress.fraction,
                        progress_at=prior.progress and prior.progress.at,
                    )
                )
                self._release(conn, claim)

        self.db.retrying(run)

    def _attempt_of(self, claim: Claim) -> sa.ColumnElement[bool]:
        jobs = self.jobs
        return sa.and_(
            jobs.c.id == claim.job.id,
            jobs.c.attempts == claim.job.attempts,
            jobs.c.done_at.is_(None),
        )

    def _release(self, conn: sa.Connection, claim: Claim) -> None:
        conn.execute(self._release_lock, {"b_queue": claim.job.queue, "b_token": claim.token})

    def record_success(self, claim: Claim, result: Any = None) -> Job | None:
        """Mark the claimed job done with `result` (JSON) and release the lock.

        None if the claim was lost. A job aborted while this attempt ran is done too: its
        work did happen.
        """
        done, _ = self._record_success(claim, result, claim_next=False)
        return done

    def record_success_and_claim(
        self, claim: Claim, result: Any = None
    ) -> tuple[Job | None, Claim | NotDue | Interrupted | None]:
        """`record_success`, and in the same transaction, while the queue's lock is
        still held, claim the queue's next job if it is due (the lock passes to it).

        The second value is the next claim; else the lock was released, and it is
        `NotDue` or `Interrupted` for the next job, or None when nothing is due (the
        queue is empty or suspended, or the lock was lost). On PostgreSQL, where this is
        one statement, a next job that is not due or was interrupted gives None too.
        """
        return self._record_success(claim, result, claim_next=True)

    def _record_success(
        self, claim: Claim, result: Any, *, claim_next: bool
    ) -> tuple[Job | None, Claim | NotDue | Interrupted | None]:
        if self._record_and_pass is not None:
            if claim_next:
                return self._record_and_pass_in_one(claim, result)
            return self._record_in_one(claim, result), None
        job = claim.job
        key = {"b_queue": job.queue, "b_token": claim.token}

        def run() -> tuple[Job | None, Claim | NotDue | Interrupted | None]:
            with self.db.transaction() as conn:
                started = time.monotonic()
                head = None
                if claim_next:
                    head = conn.execute(
                        self._select_head, {"b_queue": job.queue, "b_current": job.id}
                    ).first()
                now: datetime = (
                    head.db_now if head is not None else conn.execute(self._now).scalar_one()
                )
                updated = conn.execute(
                    self._mark_done,
                    {
                        "b_job_id": job.id,
                        "b_attempts": job.attempts,
                        "b_done_at": now,
                        "b_result": result,
                    },
                ).rowcount
                done = _done(job, now, result) if updated == 1 else None
                following: Claim | NotDue | Interrupted | None = None
                if done is not None and head is not None:
                    following = self._pass(conn, claim, row_to_job(head), now, started)
                if not isinstance(following, Claim):
                    conn.execute(self._release_lock, key)
            return done, following

        return self.db.retrying(run, max_seconds=_RECORD_PATIENCE)

    def _record_in_one(self, claim: Claim, result: Any) -> Job | None:
        """PostgreSQL: `record_success` as one autocommitted statement."""
        statement = self._record
        assert statement is not None
        params = self._record_params(claim, result)

        def run() -> Job | None:
            row, _ = self._run_raw(statement, params)
            return _done(claim.job, row["db_now"], result) if row["done_count"] == 1 else None

        return self.db.retrying(run, max_seconds=_RECORD_PATIENCE)

    def _record_params(self, claim: Claim, result: Any) -> dict[str, Any]:
        return {
            "job_id": claim.job.id,
            "attempts": claim.job.attempts,
            "result": None if result is None else json.dumps(result),
            "queue": claim.job.queue,
            "token": claim.token,
        }

    def _record_and_pass_in_one(
        self, claim: Claim, result: Any
    ) -> tuple[Job | None, Claim | NotDue | Interrupted | None]:
        """PostgreSQL: `record_success_and_claim` as one autocommitted statement (one
        round trip). A next job whose last attempt was interrupted is left to the
        ordinary claim (None: the runner moves on, and the poll it triggers finds that
        queue again)."""
        statement = self._record_and_pass
        assert statement is not None
        params = self._record_params(claim, result)

        def run() -> tuple[Job | None, Claim | NotDue | Interrupted | None]:
            row, started = self._run_raw(statement, params)
            if row["done_count"] != 1:
                return None, None
            done = _done(claim.job, row["db_now"], result)
            following = _from_raw(row, claim.token, started)
            return done, None if isinstance(following, Busy | _Exhausted) else following

        return self.db.retrying(run, max_seconds=_RECORD_PATIENCE)

    def _claim_in_one(self, queue: str) -> Claim | NotDue | Busy | _Exhausted | None:
        """PostgreSQL: `claim` as one autocommitted statement (one round trip)."""
        statement = self._claim_one
        assert statement is not None
        params = {"queue": queue, "token": uuid.uuid4().hex}

        def run() -> Claim | NotDue | Busy | _Exhausted | None:
            row, started = self._run_raw(statement, params)
            return _from_raw(row, params["token"], started)

        return self.db.retrying(run)

    def _run_raw(
        self, statement: RawStatement, params: dict[str, Any]
    ) -> tuple[dict[str, Any], float]:
        """Run one of the PostgreSQL statements on the driver, autocommitted: its one
        row by column name (times in UTC), and the monotonic time taken before it ran."""
        with self.db.raw_autocommit() as dbapi:
            started = time.monotonic()
            cursor = dbapi.execute(statement.sql, {**statement.constants, **params})
            names = [d.name for d in cursor.description]
            row = dict(zip(names, cursor.fetchone(), strict=True))
        for name in _PG_TIMES:
            if row.get(name) is not None:
                row[name] = row[name].astimezone(UTC)
        return row, started

    def _pass(
        self, conn: sa.Connection, claim: Claim, head: Job, now: datetime, started: float
    ) -> Claim | NotDue | Interrupted | None:
        """Pass the held lock of `claim`'s queue to its next job `head`, if due."""
        if not is_due(head.next_attempt_at, now):
            waits = head.next_attempt_at
            return NotDue(None if waits is None else waits - now)
        passed = conn.execute(
            self._pass_lock,
            {
                "b_queue": head.queue,
                "b_token": claim.token,
                "b_job_id": head.id,
                "b_locked_at": now,
                "b_locked_until": now + lock_lifetime(head.timeout, self.lease),
            },
        ).rowcount
        if passed != 1:
            return None  # the lock was lost: the queue is left to the next poll
        if head.round_attempts >= head.max_attempts:
            return self._interrupted(conn, head, claim.token, now)
        return self._start(conn, head, claim.token, now, started)

    def record_failure(
        self, claim: Claim, error: str, next_attempt_at: datetime | None, *, keep_lock: bool
    ) -> Recorded | None:
        """Record a failed attempt; release the lock unless the attempt is still running.

        `next_attempt_at` None means the job has used its attempts: it meets its failure
        mode. A job an operator ended meanwhile (aborted) keeps its outcome and gets the
        error. Returns None if the claim was lost to another node.
        """
        jobs = self.jobs

        def run() -> Recorded | None:
            moved: Job | None = None
            with self.db.transaction() as conn:
                row = conn.execute(
                    sa.select(jobs, self.db.now().label("db_now"))
                    .where(self._attempt_of(claim))
                    .with_for_update()
                ).first()
                if row is not None:
                    job = row_to_job(row)
                    since = job.failing_since or job.attempted_at
                    if job.outcome is not None:  # an operator ended it during the attempt
                        conn.execute(jobs.update().where(jobs.c.id == job.id).values(error=error))
                        job = replace(job, error=error)
                    elif next_attempt_at is None:
                        job = replace(job, failing_since=since)
                        recorded = self._exhaust(conn, job, error, row.db_now)
                        job, moved = recorded.job, recorded.moved_to
                    else:
                        conn.execute(
                            jobs.update()
                            .where(jobs.c.id == job.id)
                            .values(
                                error=error, next_attempt_at=next_attempt_at, failing_since=since
                            )
                        )
                        job = replace(
                            job, error=error, next_attempt_at=next_attempt_at, failing_since=since
                        )
                if keep_lock:
                    self._renew(conn, claim)
                else:
                    self._release(conn, claim)
            return None if row is None else Recorded(job, moved)

        return self.db.retrying(run, max_seconds=_RECORD_PATIENCE)

    def _exhaust(self, conn: sa.Connection, job: Job, error: str, now: datetime) -> Recorded:
        """Apply `job`'s failure mode: it has used its attempts and failed with `error`."""
        jobs = self.jobs
        target = dead_letter_queue(job.on_failure)
        values: dict[str, Any] = {
            "error": error,
            "next_attempt_at": None,
            "failing_since": job.failing_since,
        }
        moved: Job | None = None
        if job.on_failure == BLOCK:
            pass  # stays the head, pending with no next attempt, until an operator acts
        elif target is None:
            values["outcome"] = "given_up"
            values["ended_at"] = now
        else:
            last = error.strip().splitlines()[-1] if error.strip() else ""
            moved = JobStore(self.db, self.scope).insert(
                conn,
                NewJob(
                    queue=target,
                    action=job.action,
                    params=job.params,
                    timeout=job.timeout,
                    max_backoff=job.max_backoff,
                    max_attempts=job.max_attempts,
                    scheduled_at=None,
                ),
            )
            origin = Intervention(
                "moved_from",
                self.node,
                now,
                f"job {job.id} of queue {job.queue!r} failed {job.round_attempts} times: {last}",
            )
            moved = append_intervention(conn, jobs, moved, origin)
            values["outcome"] = "dead_lettered"
            values["ended_at"] = now
            note = Intervention(
                "dead_letter", self.node, now, f"moved to queue {target!r} as job {moved.id}"
            )
            job = append_intervention(conn, jobs, job, note)
        conn.execute(jobs.update().where(jobs.c.id == job.id).values(**values))
        return Recorded(
            replace(
                job,
                error=error,
                next_attempt_at=None,
                outcome=values.get("outcome"),
                ended_at=values.get("ended_at"),
            ),
            moved,
        )

    def set_progress(self, job: Job, message: str | None, fraction: float | None) -> bool:
        """Store the progress of the running attempt `job`; False if the claim was lost."""
        jobs = self.jobs

        def run() -> bool:
            with self.db.transaction() as conn:
                return bool(
                    conn.execute(
                        jobs.update()
                        .where(
                            jobs.c.id == job.id,
                            jobs.c.attempts == job.attempts,
                            jobs.c.done_at.is_(None),
                        )
                        .values(
                            progress_message=message,
                            progress_fraction=fraction,
                            progress_at=self.db.now(),
                        )
                    ).rowcount
                )

        return self.db.retrying(run)

    def set_error(self, job: Job, error: str) -> None:
        """Overwrite the error of the attempt `job` describes (if no newer attempt began)."""
        jobs = self.jobs

        def run() -> None:
            with self.db.transaction() as conn:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.attempts == job.attempts)
                    .values(error=error)
                )

        self.db.retrying(run)

    def _renew(self, conn: sa.Connection, claim: Claim) -> bool:
        locks = self.locks
        now = conn.execute(sa.select(self.db.now())).scalar_one()
        return bool(
            conn.execute(
                locks.update()
                .where(
                    self._lock_of(claim.job.queue),
                    locks.c.token == claim.token,
                    locks.c.job_id == claim.job.id,
                )
                .values(locked_until=now + lock_lifetime(claim.job.timeout, self.lease))
            ).rowcount
        )

    def renew(self, claim: Claim, *, retry: bool = True) -> bool:
        """Extend the lock by one lifetime from now; False if it was lost or passed on to
        the queue's next job. Without
        `retry`, a transient database error is raised at once (the caller tries again)."""

        def run() -> bool:
            with self.db.transaction() as conn:
                return self._renew(conn, claim)

        return self.db.retrying(run) if retry else run()

    def release(self, claim: Claim) -> None:
        """Release the lock if we still hold it."""

        def run() -> None:
            with self.db.transaction() as conn:
                self._release(conn, claim)

        self.db.retrying(run)

    def locks_held(self) -> list[dict[str, Any]]:
        """The scope's locks (for inspection and tests)."""
        with self.db.transaction() as conn:
            rows = conn.execute(sa.select(self.locks).where(self.locks.c.scope == self.scope))
            return [dict(r._mapping) for r in rows]
