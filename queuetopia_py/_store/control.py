"""Statements of operators' actions: suspend and resume queues; cancel, abort and retry
jobs. Each action on a job is one short transaction that locks the job's queue row
first, as claims and records do, so it is serialized with a concurrent claim or record
of the queue (no lost update); it keeps the queue's row exact and is recorded on the job
as an `Intervention`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from queuetopia_py._errors import JobInProgressError, JobNotFoundError, JobStateError
from queuetopia_py._job import Intervention, Job, JobState, JobSummary
from queuetopia_py._schema import WHOLE_SCOPE
from queuetopia_py._status import Suspension
from queuetopia_py._store.announcements import announce
from queuetopia_py._store.database import Database
from queuetopia_py._store.jobs import append_intervention, row_to_job
from queuetopia_py._store.queues import Locked, QueueBook, QueueRow


def row_to_suspension(row: sa.Row[Any]) -> Suspension:
    """Build a `Suspension` from a row of the suspensions table."""
    return Suspension(
        scope=row.scope,
        queue=None if row.queue == WHOLE_SCOPE else row.queue,
        suspended_at=row.suspended_at,
        suspended_by=row.suspended_by,
        reason=row.reason,
    )


def read_suspensions(conn: sa.Connection, suspensions: sa.Table, scope: str) -> list[Suspension]:
    """The suspensions of `scope` (the whole scope's first), by queue."""
    rows = conn.execute(
        sa.select(suspensions).where(suspensions.c.scope == scope).order_by(suspensions.c.queue)
    )
    return [row_to_suspension(r) for r in rows]


def _job_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The `Job` fields that the column values an action writes set."""
    fields = dict(values)
    if "state" in fields:
        state = fields.pop("state")
        fields["outcome"] = None if state is JobState.PENDING else state
    return fields


def in_progress(row: QueueRow | None, job: JobSummary, now: datetime) -> bool:
    """Whether an attempt of `job` runs now: its queue's live lock (`row`) was taken for
    it."""
    return row is not None and row.locked(now) and row.locked_job == job.id and not job.done


class ControlStore:
    """Operators' actions on one scope."""

    def __init__(self, db: Database, scope: str, origin: str = "") -> None:
        self.db = db
        self.scope = scope
        #: Who announces the work the actions free (see `store.announcements`).
        self.origin = origin
        self.jobs = db.tables.jobs
        self.suspensions = db.tables.suspensions
        self.book = QueueBook(db)

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
        with self.db.transaction() as conn:
            return read_suspensions(conn, self.suspensions, self.scope)

    # -- jobs --------------------------------------------------------------------------

    def _act(
        self,
        job_id: int,
        decide: Callable[[Job, Locked], dict[str, Any]],
        entry: Callable[[datetime], Intervention],
    ) -> Job:
        """Lock the job's queue and read the job, let `decide` check its state (it raises
        to refuse) and return the new values, then write them with the intervention and
        bring the queue's row up to date."""
        jobs = self.jobs
        book = self.book

        def run() -> Job:
            with self.db.transaction() as conn:
                queue = conn.execute(
                    sa.select(jobs.c.queue).where(jobs.c.id == job_id, jobs.c.scope == self.scope)
                ).scalar()
                if queue is None:
                    raise JobNotFoundError(job_id, self.scope)
                # A row to lock even when the queue has nothing pending (an ended job's):
                # actions on one queue take turns, whatever they find.
                book.ensure(conn, self.scope, queue)
                locked = book.lock_with_job(conn, self.scope, queue, job_id)
                assert locked.row is not None
                row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()
                job = row_to_job(row)
                values = decide(job, locked)
                try:
                    conn.execute(jobs.update().where(jobs.c.id == job.id).values(**values))
                except IntegrityError:
                    # Only a job coming back to pending can break a unique index.
                    raise JobStateError(
                        job,
                        f"job {job.id}'s unique key {job.unique_key!r} is held by another"
                        " pending job of the scope: it cannot be pending too",
                    ) from None
                changed = replace(job, **_job_fields(values))
                change = int(changed.pending) - int(job.pending)
                book.sync(conn, self.scope, locked.row, pending_change=change)
                # Cancelling, aborting or retrying a head may free its queue.
                announce(conn, self.db.tables, self.scope, [job.queue], self.origin)
                return append_intervention(conn, jobs, changed, entry(locked.now))

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

        def decide(job: Job, locked: Locked) -> dict[str, Any]:
            self._ended(job, "cancel")
            if in_progress(locked.row, job, locked.now):
                raise JobInProgressError(
                    job,
                    f"job {job.id} is in progress (attempt {job.attempts} on "
                    f"{job.attempted_by}): it cannot be cancelled; abort it instead",
                )
            return {"state": JobState.CANCELLED, "ended_at": locked.now, "next_attempt_at": None}

        return self._act(job_id, decide, lambda now: Intervention("cancel", by, now, reason))

    def abort(self, job_id: int, by: str, reason: str | None) -> Job:
        """Give a pending job up now so its queue moves on. A running attempt is not
        stopped: if it succeeds, the job is done; if it fails, the job stays aborted."""

        def decide(job: Job, locked: Locked) -> dict[str, Any]:
            self._ended(job, "abort")
            return {"state": JobState.ABORTED, "ended_at": locked.now, "next_attempt_at": None}

        return self._act(job_id, decide, lambda now: Intervention("abort", by, now, reason))

    def retry(self, job_id: int, by: str, reason: str | None) -> Job:
        """Make a job due now: a waiting head runs at once; a job that ended without
        success (or is blocked) gets a new round of `max_attempts` attempts."""

        def decide(job: Job, locked: Locked) -> dict[str, Any]:
            now = locked.now
            if job.done:
                raise JobStateError(job, f"job {job.id} is done: nothing to retry")
            if job.outcome is JobState.DEAD_LETTERED:
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
            if in_progress(locked.row, job, now):
                raise JobInProgressError(
                    job,
                    f"job {job.id} is in progress (attempt {job.attempts} on "
                    f"{job.attempted_by}): nothing to retry yet",
                )
            if job.pending and job.next_attempt_at is not None:
                return {"next_attempt_at": now}  # a waiting head: its round goes on
            return {
                "state": JobState.PENDING,
                "ended_at": None,
                "next_attempt_at": now,
                "round_start": job.attempts,
                "failing_since": None,
            }

        return self._act(job_id, decide, lambda now: Intervention("retry", by, now, reason))
