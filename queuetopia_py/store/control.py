"""Statements of operators' actions: suspend and resume queues; cancel, abort and retry
jobs. Each action is one short transaction that locks the job's row first, so it is
serialized with a concurrent claim or record of the same job (no lost update), and is
recorded on the job as an `Intervention`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from queuetopia_py.errors import JobInProgressError, JobNotFoundError, JobStateError
from queuetopia_py.job import Intervention, Job
from queuetopia_py.schema import WHOLE_SCOPE
from queuetopia_py.status import Suspension
from queuetopia_py.store.announcements import announce
from queuetopia_py.store.database import Database
from queuetopia_py.store.jobs import append_intervention, row_to_job


def row_to_suspension(row: sa.Row[Any]) -> Suspension:
    """Build a `Suspension` from a row of the suspensions table."""
    return Suspension(
        scope=row.scope,
        queue=None if row.queue == WHOLE_SCOPE else row.queue,
        suspended_at=row.suspended_at,
        suspended_by=row.suspended_by,
        reason=row.reason,
    )


def in_progress(conn: sa.Connection, db: Database, job: Job, now: datetime) -> bool:
    """Whether an attempt of `job` runs now: its queue's live lock was taken for it."""
    locks = db.tables.locks
    held = conn.execute(
        sa.select(locks.c.job_id).where(
            locks.c.scope == job.scope,
            locks.c.queue == job.queue,
            locks.c.locked_until > now,
            locks.c.job_id == job.id,
        )
    ).first()
    return held is not None and not job.done


class ControlStore:
    """Operators' actions on one scope."""

    def __init__(self, db: Database, scope: str, origin: str = "") -> None:
        self.db = db
        self.scope = scope
        #: Who announces the work the actions free (see `store.announcements`).
        self.origin = origin
        self.jobs = db.tables.jobs
        self.suspensions = db.tables.suspensions

    # -- suspensions -------------------------------------------------------------------

    def _suspension_of(self, queue: str | None) -> sa.ColumnElement[bool]:
        s = self.suspensions
        return sa.and_(s.c.scope == self.scope, s.c.queue == (queue or WHOLE_SCOPE))

    def suspend(self, queue: str | None, by: str, reason: str | None) -> tuple[Suspension, bool]:
        """Suspend `queue` (None: the whole scope). Returns the suspension in force and
        whether this call created it."""
        s = self.suspensions

        def run() -> tuple[Suspension, bool]:
            try:
                with self.db.transaction() as conn:
                    row = conn.execute(sa.select(s).where(self._suspension_of(queue))).first()
                    if row is not None:
                        return row_to_suspension(row), False
                    conn.execute(
                        s.insert().values(
                            scope=self.scope,
                            queue=queue or WHOLE_SCOPE,
                            suspended_at=self.db.now(),
                            suspended_by=by,
                            reason=reason,
                        )
                    )
                    row = conn.execute(sa.select(s).where(self._suspension_of(queue))).one()
                    return row_to_suspension(row), True
            except IntegrityError:  # suspended by someone else at the same instant
                with self.db.transaction() as conn:
                    row = conn.execute(sa.select(s).where(self._suspension_of(queue))).one()
                    return row_to_suspension(row), False

        return self.db.retrying(run)

    def resume(self, queue: str | None) -> bool:
        """Lift the suspension of `queue` (None: of the whole scope). False if there was none."""

        def run() -> bool:
            with self.db.transaction() as conn:
                deleted = conn.execute(
                    self.suspensions.delete().where(self._suspension_of(queue))
                ).rowcount
                if deleted:
                    queues = None if queue is None else [queue]
                    announce(conn, self.db.tables, self.scope, queues, self.origin)
            return bool(deleted)

        return self.db.retrying(run)

    def list_suspensions(self) -> list[Suspension]:
        """This scope's suspensions, the whole scope's first."""
        s = self.suspensions
        with self.db.transaction() as conn:
            rows = conn.execute(sa.select(s).where(s.c.scope == self.scope).order_by(s.c.queue))
            return [row_to_suspension(r) for r in rows]

    # -- jobs --------------------------------------------------------------------------

    def _act(
        self,
        job_id: int,
        decide: Callable[[sa.Connection, Job, datetime], dict[str, Any]],
        entry: Callable[[datetime], Intervention],
    ) -> Job:
        """Lock the job's row, let `decide` check its state (it raises to refuse) and
        return the new values, then write them with the intervention."""
        jobs = self.jobs

        def run() -> Job:
            with self.db.transaction() as conn:
                row = conn.execute(
                    sa.select(jobs, self.db.now().label("db_now"))
                    .where(jobs.c.id == job_id, jobs.c.scope == self.scope)
                    .with_for_update()
                ).first()
                if row is None:
                    raise JobNotFoundError(job_id, self.scope)
                job, now = row_to_job(row), row.db_now
                values = decide(conn, job, now)
                conn.execute(jobs.update().where(jobs.c.id == job.id).values(**values))
                # Cancelling, aborting or retrying a head may free its queue.
                announce(conn, self.db.tables, self.scope, [job.queue], self.origin)
                return append_intervention(conn, jobs, replace(job, **values), entry(now))

        # Only conflicts are retried: after a lost connection, whether the action took
        # effect is unknown, and repeating it would be refused as the wrong state.
        return self.db.retrying(run, conflicts_only=True)

    def _ended(self, job: Job, verb: str) -> None:
        if job.done:
            raise JobStateError(job, f"job {job.id} is done: nothing to {verb}")
        if job.outcome is not None:
            raise JobStateError(job, f"job {job.id} is {job.outcome} already: nothing to {verb}")

    def cancel(self, job_id: int, by: str, reason: str | None) -> Job:
        """Withdraw a pending job that is not running."""

        def decide(conn: sa.Connection, job: Job, now: datetime) -> dict[str, Any]:
            self._ended(job, "cancel")
            if in_progress(conn, self.db, job, now):
                raise JobInProgressError(
                    job,
                    f"job {job.id} is in progress (attempt {job.attempts} on "
                    f"{job.attempted_by}): it cannot be cancelled; abort it instead",
                )
            return {"outcome": "cancelled", "ended_at": now, "next_attempt_at": None}

        return self._act(job_id, decide, lambda now: Intervention("cancel", by, now, reason))

    def abort(self, job_id: int, by: str, reason: str | None) -> Job:
        """Give a pending job up now so its queue moves on. A running attempt is not
        stopped: if it succeeds, the job is done; if it fails, the job stays aborted."""

        def decide(conn: sa.Connection, job: Job, now: datetime) -> dict[str, Any]:
            self._ended(job, "abort")
            return {"outcome": "aborted", "ended_at": now, "next_attempt_at": None}

        return self._act(job_id, decide, lambda now: Intervention("abort", by, now, reason))

    def retry(self, job_id: int, by: str, reason: str | None) -> Job:
        """Make a job due now: a waiting head runs at once; a job that ended without
        success (or is blocked) gets a new round of `max_attempts` attempts."""

        def decide(conn: sa.Connection, job: Job, now: datetime) -> dict[str, Any]:
            if job.done:
                raise JobStateError(job, f"job {job.id} is done: nothing to retry")
            if job.outcome == "dead_lettered":
                moved = next(
                    (i.reason for i in reversed(job.interventions) if i.action == "dead_letter"),
                    None,
                )
                raise JobStateError(
                    job,
                    f"job {job.id} was {moved or 'moved to a dead-letter queue'}: retry that job",
                )
            # Also for a job aborted while its attempt runs: that attempt's outcome is
            # still to be recorded, and would count against the new round.
            if in_progress(conn, self.db, job, now):
                raise JobInProgressError(
                    job,
                    f"job {job.id} is in progress (attempt {job.attempts} on "
                    f"{job.attempted_by}): nothing to retry yet",
                )
            if job.pending and job.next_attempt_at is not None:
                return {"next_attempt_at": now}  # a waiting head: its round goes on
            return {
                "outcome": None,
                "ended_at": None,
                "next_attempt_at": now,
                "round_start": job.attempts,
                "failing_since": None,
            }

        return self._act(job_id, decide, lambda now: Intervention("retry", by, now, reason))
