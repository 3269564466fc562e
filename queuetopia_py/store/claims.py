"""Statements the scheduler runs: find due queues, claim a queue's lock and head, record
an attempt, renew or release the lock. Each public method is one short transaction.

Fencing: a claim increments the job's `attempts` and inserts a lock row with a fresh
token. Recording an attempt only matches the job while `attempts` is unchanged, and
releasing or renewing the lock only matches the row with our token, so a node whose lock
expired and was taken over can write nothing over the new holder's work.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from queuetopia_py.backoff import default_backoff, is_due, lock_lifetime
from queuetopia_py.errors import DatabaseError
from queuetopia_py.job import Job
from queuetopia_py.store.database import Database, is_rolled_back_conflict
from queuetopia_py.store.jobs import pending, row_to_job


@dataclass(frozen=True, slots=True)
class Claim:
    """A queue's lock and head job, held by this node until `locked_until` (database time)."""

    job: Job
    token: str
    locked_until: datetime


@dataclass(frozen=True, slots=True)
class NotDue:
    """The queue's head exists but may not start for `wait` (database time)."""

    wait: timedelta


class Busy:
    """Another node holds the queue's lock."""


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The head's final attempt was started but never recorded (its node died): the job
    has just been given up, and the queue may go on."""

    job: Job


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
        "its result was recorded; no attempt left: given up"
    )
    return f"{job.error}\n\n{note}" if job.error else note


class ClaimStore:
    """The scheduler's statements for one scope and one node."""

    def __init__(self, db: Database, scope: str, node: str) -> None:
        self.db = db
        self.scope = scope
        self.node = node
        self.jobs = db.tables.jobs
        self.locks = db.tables.locks

    def _lock_of(self, queue: str) -> sa.ColumnElement[bool]:
        return sa.and_(self.locks.c.scope == self.scope, self.locks.c.queue == queue)

    def poll(self, limit: int, exclude: set[str]) -> PollResult:
        """Release expired locks, then list up to `limit` unlocked queues with due work,
        leaving out `exclude`."""

        def run() -> PollResult:
            jobs, locks = self.jobs, self.locks
            with self.db.transaction() as conn:
                now = conn.execute(sa.select(self.db.now())).scalar_one()
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
                        jobs.c.next_attempt_at <= now,
                        ~sa.exists().where(
                            locks.c.scope == jobs.c.scope, locks.c.queue == jobs.c.queue
                        ),
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

        def run() -> Claim | NotDue | Busy | Interrupted | None:
            jobs, locks = self.jobs, self.locks
            try:
                head = jobs.alias("head")
                head_id = (
                    sa.select(head.c.id)
                    .where(head.c.scope == self.scope, head.c.queue == queue, pending(head))
                    .order_by(head.c.scheduled_at, head.c.id)
                    .limit(1)
                    .scalar_subquery()
                )
                with self.db.transaction() as conn:
                    # Lock the head row, skipping it if a concurrent claimer holds it
                    # (PostgreSQL, MariaDB 10.6+): never wait for, never pass, the head.
                    row = conn.execute(
                        sa.select(jobs, self.db.now().label("db_now"))
                        .where(jobs.c.id == head_id, pending(jobs))
                        .with_for_update(skip_locked=True)
                    ).first()
                    if row is None:
                        return None  # empty, or being claimed by another node right now
                    now: datetime = row.db_now
                    job = row_to_job(row)
                    if not is_due(job.next_attempt_at, now):
                        assert job.next_attempt_at is not None
                        return NotDue(job.next_attempt_at - now)
                    conn.execute(
                        locks.delete().where(self._lock_of(queue), locks.c.locked_until <= now)
                    )
                    token = uuid.uuid4().hex
                    until = now + lock_lifetime(job.timeout)
                    try:
                        conn.execute(
                            locks.insert().values(
                                scope=self.scope,
                                queue=queue,
                                token=token,
                                locked_at=now,
                                locked_by_node=self.node,
                                locked_until=until,
                            )
                        )
                    except IntegrityError as exc:
                        raise _LockTaken from exc
                    if job.attempts >= job.max_attempts:
                        # Its final attempt started but was never recorded, and its lock
                        # has expired (we just took it): that node is gone. Give up.
                        error = interrupted_error(job)
                        conn.execute(
                            jobs.update()
                            .where(jobs.c.id == job.id)
                            .values(next_attempt_at=None, error=error)
                        )
                        conn.execute(
                            locks.delete().where(self._lock_of(queue), locks.c.token == token)
                        )
                        return Interrupted(replace(job, next_attempt_at=None, error=error))
                    # Until the attempt is recorded, it counts as failed: should this node
                    # die, the job is retried after the default backoff, and given up
                    # once it has used its last attempt.
                    retry_at = now + default_backoff(job.attempts, job.max_backoff)
                    conn.execute(
                        jobs.update()
                        .where(jobs.c.id == job.id)
                        .values(
                            attempts=jobs.c.attempts + 1,
                            attempted_at=now,
                            attempted_by=self.node,
                            next_attempt_at=retry_at,
                        )
                    )
                    claimed = replace(
                        job,
                        attempts=job.attempts + 1,
                        attempted_at=now,
                        attempted_by=self.node,
                        next_attempt_at=retry_at,
                    )
                    return Claim(claimed, token, until)
            except _LockTaken:
                return Busy()
            except DatabaseError as exc:
                if exc.__cause__ is not None and is_rolled_back_conflict(exc.__cause__):
                    return Busy()  # another node claimed this queue at the same instant
                raise

        return self.db.retrying(run)

    def _attempt_of(self, claim: Claim) -> sa.ColumnElement[bool]:
        jobs = self.jobs
        return sa.and_(
            jobs.c.id == claim.job.id,
            jobs.c.attempts == claim.job.attempts,
            jobs.c.done_at.is_(None),
        )

    def _release(self, conn: sa.Connection, claim: Claim) -> None:
        locks = self.locks
        conn.execute(
            locks.delete().where(self._lock_of(claim.job.queue), locks.c.token == claim.token)
        )

    def record_success(self, claim: Claim) -> Job | None:
        """Mark the claimed job done and release the lock. None if the claim was lost."""

        def run() -> Job | None:
            with self.db.transaction() as conn:
                now = conn.execute(sa.select(self.db.now())).scalar_one()
                updated = conn.execute(
                    self.jobs.update().where(self._attempt_of(claim)).values(done_at=now)
                ).rowcount
                self._release(conn, claim)
            return replace(claim.job, done_at=now) if updated == 1 else None

        return self.db.retrying(run)

    def record_failure(
        self, claim: Claim, error: str, next_attempt_at: datetime | None, *, keep_lock: bool
    ) -> Job | None:
        """Record a failed attempt; release the lock unless the attempt is still running.

        `next_attempt_at` None gives the job up. Returns the updated job, or None if the
        claim was lost to another node.
        """

        def run() -> Job | None:
            with self.db.transaction() as conn:
                updated = conn.execute(
                    self.jobs.update()
                    .where(self._attempt_of(claim))
                    .values(error=error, next_attempt_at=next_attempt_at)
                ).rowcount
                if keep_lock:
                    self._renew(conn, claim)
                else:
                    self._release(conn, claim)
            if updated != 1:
                return None
            return replace(claim.job, error=error, next_attempt_at=next_attempt_at)

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
                .where(self._lock_of(claim.job.queue), locks.c.token == claim.token)
                .values(locked_until=now + lock_lifetime(claim.job.timeout))
            ).rowcount
        )

    def renew(self, claim: Claim) -> bool:
        """Extend the lock by one lifetime from now; False if it was lost."""

        def run() -> bool:
            with self.db.transaction() as conn:
                return self._renew(conn, claim)

        return self.db.retrying(run)

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
