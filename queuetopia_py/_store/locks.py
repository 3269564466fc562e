"""Queue locks: taking a queue's lock for an attempt of one of its jobs, renewing it,
releasing it, giving a claim back unused. A queue's lock lives on its row of the queues
table; every claim has a token of its own, which the job's row carries too (`claim_token`)
and which fences what the claim's holder writes afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from queuetopia_py._backoff import default_backoff, lock_lifetime
from queuetopia_py._job import Job
from queuetopia_py._store.database import Deferred, execute
from queuetopia_py._store.queues import UNLOCKED, NodeScope, QueueBook


def new_token() -> str:
    """A fresh claim token."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Claim:
    """A queue's lock and the attempt of its job, held by this node until `locked_until`
    (database time) under the claim `token`."""

    job: Job
    token: str
    locked_until: datetime
    #: This process's monotonic clock just before the claim read the database's time:
    #: an attempt given `timeout` from here ends before the lock expires (or the lock is
    #: renewed while it runs, see `queuetopia_py._lease`).
    started: float
    #: The job as it was before the claim (to give the claim back unused); None when the
    #: claim was recognised after its acknowledgement was lost.
    prior: Job | None = None
    #: The queue's lock had expired under another claim (its node died, or its attempt
    #: outlived the lock unrenewed): this claim took it over.
    taken_over: bool = False


@dataclass(frozen=True, slots=True)
class NotDue:
    """The queue's head exists but may not start for `wait` (database time); `wait` is
    None when the head is blocked until an operator acts."""

    wait: timedelta | None


class Busy:
    """Another claim holds the queue's lock."""


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The head's final attempt was started but never recorded (its node died): the job
    has just met its failure mode (given up, blocked or moved)."""

    job: Job
    moved_to: Job | None = None


#: What trying to take a queue gives: its claim; the head is not due, or its last
#: attempt was interrupted; the queue is held by another claim; or None (empty, or
#: suspended).
Taken = Claim | NotDue | Busy | Interrupted | None


class LockStore:
    """The lock statements of one scope and one node."""

    def __init__(self, where: NodeScope) -> None:
        self.where = where
        self.book = QueueBook(where.db)
        jobs = where.db.tables.jobs
        queues = where.db.tables.queues
        self._start_attempt = (
            jobs.update()
            .where(jobs.c.id == sa.bindparam("b_job_id"))
            .values(
                attempts=jobs.c.attempts + 1,
                attempted_at=sa.bindparam("b_now", type_=jobs.c.attempted_at.type),
                attempted_by=where.node,
                next_attempt_at=sa.bindparam("b_retry_at", type_=jobs.c.next_attempt_at.type),
                claim_token=sa.bindparam("b_token", type_=jobs.c.claim_token.type),
                progress_message=None,
                progress_fraction=None,
                progress_at=None,
            )
        )
        self._held = sa.and_(
            queues.c.scope == where.scope,
            queues.c.queue == sa.bindparam("b_queue", type_=queues.c.queue.type),
            queues.c.token == sa.bindparam("b_token", type_=queues.c.token.type),
        )
        self._renew = (
            queues.update()
            .where(self._held)
            .values(locked_until=sa.bindparam("b_until", type_=queues.c.locked_until.type))
        )

    def take(
        self,
        conn: Connection,
        job: Job,
        now: datetime,
        started: float,
        token: str,
        writes: Deferred | None = None,
    ) -> tuple[Claim, dict[str, Any]]:
        """Count the attempt of `job`, whose queue row the caller has locked, for the
        claim `token`; return the claim and the lock columns the caller writes on the row.
        With `writes`, the count is held back.

        Until the attempt is recorded it counts as failed: should this node die, the
        job is retried after the default backoff (and meets its failure mode if that
        was its last attempt).
        """
        where = self.where
        retry_at = now + default_backoff(job.round_attempts, job.max_backoff)
        until = now + lock_lifetime(job.timeout, where.lease)
        execute(
            conn,
            self._start_attempt,
            {"b_job_id": job.id, "b_now": now, "b_retry_at": retry_at, "b_token": token},
            writes,
        )
        claimed = replace(
            job,
            attempts=job.attempts + 1,
            attempted_at=now,
            attempted_by=where.node,
            next_attempt_at=retry_at,
            progress=None,
        )
        lock = {
            "token": token,
            "locked_by": where.node,
            "locked_at": now,
            "locked_until": until,
            "locked_job": job.id,
        }
        return Claim(claimed, token, until, started, prior=job), lock

    def renew(self, claim: Claim, *, retry: bool = True) -> bool:
        """Extend the claim's lock by one lifetime from now; False if it was lost (taken
        over) or has ended (released or passed on). Without `retry`, a transient database
        error is raised at once (the caller tries again)."""
        db = self.where.db

        def run() -> bool:
            with db.transaction() as conn:
                now = conn.execute(sa.select(db.now())).scalar_one()
                until = now + lock_lifetime(claim.job.timeout, self.where.lease)
                return bool(
                    conn.execute(
                        self._renew,
                        {"b_queue": claim.job.queue, "b_token": claim.token, "b_until": until},
                    ).rowcount
                )

        return db.retrying(run) if retry else run()

    def release(self, claim: Claim) -> None:
        """Release the claim's lock if it still holds the queue."""
        where = self.where

        def run() -> None:
            with where.db.transaction() as conn:
                row = self.book.lock(conn, where.scope, claim.job.queue).row
                if row is not None and row.held_by(claim.token):
                    self.book.write(conn, where.scope, row, **UNLOCKED)

        where.db.retrying(run)

    def give_back(self, claim: Claim) -> None:
        """Undo a claim whose attempt did not start (the node began stopping): the job
        is as it was before, and the lock is released."""
        where = self.where
        jobs = where.db.tables.jobs
        prior = claim.prior

        def run() -> None:
            with where.db.transaction() as conn:
                row = self.book.lock(conn, where.scope, claim.job.queue).row
                if row is None or not row.held_by(claim.token):
                    return
                if prior is not None:
                    conn.execute(
                        jobs.update()
                        .where(jobs.c.id == prior.id, jobs.c.claim_token == claim.token)
                        .values(
                            attempts=prior.attempts,
                            attempted_at=prior.attempted_at,
                            attempted_by=prior.attempted_by,
                            next_attempt_at=prior.next_attempt_at,
                            claim_token=None,
                            progress_message=prior.progress and prior.progress.message,
                            progress_fraction=prior.progress and prior.progress.fraction,
                            progress_at=prior.progress and prior.progress.at,
                        )
                    )
                self.book.sync(conn, where.scope, row, **UNLOCKED)

        where.db.retrying(run)

    def locks_held(self) -> list[dict[str, Any]]:
        """The scope's queue locks, live or expired (for inspection and tests)."""
        queues = self.where.db.tables.queues
        with self.where.db.transaction() as conn:
            rows = conn.execute(
                sa.select(
                    queues.c.queue,
                    queues.c.token,
                    queues.c.locked_at,
                    queues.c.locked_by.label("locked_by_node"),
                    queues.c.locked_until,
                    queues.c.locked_job.label("job_id"),
                ).where(queues.c.scope == self.where.scope, queues.c.token.is_not(None))
            )
            return [dict(r._mapping) for r in rows]
