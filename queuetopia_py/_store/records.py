"""Recording attempts: a success (and passing the queue's lock on to its next job), a
failure, and what becomes of a job that has used its attempts (its failure mode); the
progress and the late error of an attempt.

Every record is fenced by the claim's token on the job's row: a claim whose job was
claimed again since (its lock expired and was taken over) records nothing. A record
whose acknowledgement was lost (the connection dropped after the commit) is run again
and recognises its own commit by that token, so that nothing is reported or charged
twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from queuetopia_py._backoff import is_due
from queuetopia_py._job import (
    Intervention,
    Job,
    JobState,
    JobSummary,
    NewJob,
    OnFailure,
)
from queuetopia_py._store.database import Deferred
from queuetopia_py._store.jobs import (
    JobStore,
    append_intervention,
    job_from_mapping,
    row_to_job,
    summary_from_mapping,
)
from queuetopia_py._store.locks import Claim, Interrupted, LockStore, NotDue, new_token
from queuetopia_py._store.queues import (
    LEFT,
    UNLOCKED,
    Head,
    Left,
    NodeScope,
    QueueBook,
    QueueRow,
    first_head,
    in_queue_order,
)

# How long recording an attempt's outcome is retried through a database outage: the
# outcome is kept if the database comes back meanwhile (fencing keeps a late record from
# landing over another node's claim). Past it, the attempt counts as interrupted.
RECORD_PATIENCE = 120.0

#: What may follow a success in its queue: the claim of the queue's next job, taken as
#: the success was recorded; `NotDue` or `Interrupted` for that head; None when nothing
#: was claimed.
Following = Claim | NotDue | Interrupted | None


@dataclass(slots=True)
class Success:
    """A success to record: the claim, the result (JSON), and whether to claim the
    queue's next job with it. The token of that next claim, and the start of the first
    try, stay the same through retries: a try that finds its own earlier commit
    recognises the lock it passed on."""

    claim: Claim
    result: Any
    claim_next: bool
    passing: str = field(default_factory=new_token)
    first: float | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """A failed attempt as recorded: the job afterwards, and the job its failure mode
    created in a dead-letter queue (if any)."""

    job: Job
    moved_to: Job | None = None


def interrupted_error(job: JobSummary) -> str:
    """The error recorded for a job whose final attempt was never recorded."""
    note = (
        f"attempt {job.attempts} (started by {job.attempted_by} at "
        f"{job.attempted_at.isoformat() if job.attempted_at else '?'}) was interrupted before "
        "its result was recorded; no attempt left"
    )
    return f"{job.error}\n\n{note}" if job.error else note


def _done(job: Job, at: datetime, result: Any) -> Job:
    """`job` as a recorded success at `at` leaves it (done, whatever an operator did)."""
    return replace(job, done_at=at, outcome=None, ended_at=None, result=result)


def _with_params(stored: JobSummary, claimed: Job) -> Job:
    """The job as stored, with the params and result of the claimed job (not read again)."""
    values = {f.name: getattr(stored, f.name) for f in fields(JobSummary)}
    return Job(**values, params=claimed.params, result=claimed.result)


class RecordStore:
    """The record statements of one scope and one node."""

    def __init__(self, where: NodeScope, locks: LockStore) -> None:
        self.where = where
        self.locks = locks
        self.book = QueueBook(where.db)
        self.created = JobStore(where.db, where.scope)
        self.jobs = jobs = where.db.tables.jobs
        self._mark_done = (
            jobs.update()
            .where(jobs.c.id == sa.bindparam("b_job_id"))
            .values(
                state=JobState.DONE,
                done_at=sa.bindparam("b_now", type_=jobs.c.done_at.type),
                ended_at=None,
                result=sa.bindparam("b_result", type_=jobs.c.result.type),
            )
        )
        self._by_id = sa.select(jobs).where(jobs.c.id == sa.bindparam("b_job_id"))
        job_id = sa.bindparam("b_job_id", type_=jobs.c.id.type)
        error = sa.bindparam("b_error", type_=jobs.c.error.type)
        self._set_error = jobs.update().where(jobs.c.id == job_id).values(error=error)
        since = sa.bindparam("b_since", type_=jobs.c.failing_since.type)
        self._failed = (
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(
                error=error,
                next_attempt_at=sa.bindparam(
                    "b_next_attempt_at", type_=jobs.c.next_attempt_at.type
                ),
                failing_since=since,
            )
        )
        self._progress = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.attempts == sa.bindparam("b_attempts", type_=jobs.c.attempts.type),
                jobs.c.done_at.is_(None),
            )
            .values(
                progress_message=sa.bindparam("b_message", type_=jobs.c.progress_message.type),
                progress_fraction=sa.bindparam("b_fraction", type_=jobs.c.progress_fraction.type),
                progress_at=where.db.now(),
            )
        )
        self._exhausted = (
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(
                error=error,
                next_attempt_at=None,
                failing_since=since,
                state=sa.bindparam("b_state", type_=jobs.c.state.type),
                ended_at=sa.bindparam("b_ended_at", type_=jobs.c.ended_at.type),
            )
        )

    # -- successes -------------------------------------------------------------------------

    def record_success(self, claim: Claim, result: Any = None) -> Job | None:
        """Mark the claimed job done with `result` (JSON) and release the lock.

        None if the claim was lost. A job aborted while this attempt ran is done too: its
        work did happen.
        """
        return self.record_successes([Success(claim, result, claim_next=False)])[0][0]

    def record_success_and_claim(
        self, claim: Claim, result: Any = None
    ) -> tuple[Job | None, Following]:
        """`record_success`, and in the same transaction, while the queue's lock is
        still held, claim the queue's next job if it is due (the lock passes to it).

        The second value is the next claim; else the lock was released, and it is
        `NotDue` or `Interrupted` for the next job, or None when nothing is due (the
        queue is empty or suspended, or the lock was lost).
        """
        return self.record_successes([Success(claim, result, claim_next=True)])[0]

    def record_successes(self, successes: Sequence[Success]) -> list[tuple[Job | None, Following]]:
        """Record `successes` (of different queues) in one transaction, each as
        `record_success` or `record_success_and_claim` would (as its `claim_next` says);
        their outcomes, in the order given.

        The queues' rows are locked in the order of their names (as every writer of
        several rows locks them), and the writes of all of them are sent together at the
        end (`Deferred`): a round trip for each success's read, and a few for the rest.
        """
        return in_queue_order(
            self.where.db,
            successes,
            lambda success: success.claim.job.queue,
            self._success,
            max_seconds=RECORD_PATIENCE,
        )

    def _success(
        self, conn: Connection, success: Success, started: float, writes: Deferred, wait: bool
    ) -> tuple[Job | None, Following] | Left:
        """Record one success in the transaction of `conn`, holding its writes back in
        `writes`. Without `wait`, `LEFT` when its queue's row is busy: nothing was done."""
        where, book = self.where, self.book
        claim, result, claim_next = success.claim, success.result, success.claim_next
        job, passing = claim.job, success.passing
        lock = book.lock_with_job if wait else book.try_lock_with_job
        locked = lock(conn, where.scope, job.queue, job.id, whole_next=claim_next, narrow=True)
        if locked is None:
            return LEFT
        stored = locked.job  # only NARROW_JOB
        if stored is None or stored["claim_token"] != claim.token:
            return None, None  # claimed again since (or deleted)
        row = locked.row
        if stored["done_at"] is not None:  # our own commit, whose answer was lost
            assert success.first is not None
            done = _done(job, stored["done_at"], result)
            if claim_next and row is not None and row.held_by(passing):
                assert row.locked_job is not None and row.locked_until is not None
                passed = conn.execute(self._by_id, {"b_job_id": row.locked_job}).one()
                return done, Claim(row_to_job(passed), passing, row.locked_until, success.first)
            return done, None
        writes.add(self._mark_done, {"b_job_id": job.id, "b_now": locked.now, "b_result": result})
        done = _done(job, locked.now, result)
        gone = 1 if stored["state"] in (JobState.PENDING, JobState.DONE) else 0
        if row is None:
            return done, None
        # The job left the queue: what followed it is the head now.
        after = locked.following
        head = None if after is None else Head.read(after)
        if not row.held_by(claim.token):  # the lock expired and went to another
            book.sync(conn, where.scope, row, pending_change=-gone, head=head, writes=writes)
            return done, None
        if not claim_next or locked.suspended or after is None:
            book.sync(
                conn, where.scope, row, pending_change=-gone, head=head, writes=writes, **UNLOCKED
            )
            return done, None
        left = replace(row, pending=row.pending - gone)
        following = self._pass(
            conn, left, job_from_mapping(after), locked.now, started, passing, writes
        )
        return done, following

    def _pass(
        self,
        conn: Connection,
        row: QueueRow,
        head: Job,
        now: datetime,
        started: float,
        token: str,
        writes: Deferred,
    ) -> Following:
        """Pass the held lock of the queue `row` to its head `head` if it is due (with the
        claim `token`); else release it."""
        scope = self.where.scope
        if not is_due(head.next_attempt_at, now):
            self.book.write(conn, scope, row, writes, **Head.of(head).columns(), **UNLOCKED)
            waits = head.next_attempt_at
            return NotDue(None if waits is None else waits - now)
        if head.round_attempts >= head.max_attempts:
            # Its failure mode reads the queue's jobs as they stand: write what waits first.
            writes.flush(conn)
            return self.interrupted(conn, row, head, now)
        claim, lock = self.locks.take(conn, head, now, started, token, writes)
        self.book.write(conn, scope, row, writes, **Head.of(claim.job).columns(), **lock)
        return claim

    # -- failures --------------------------------------------------------------------------

    def record_failure(
        self, claim: Claim, error: str, next_attempt_at: datetime | None, *, keep_lock: bool
    ) -> Recorded | None:
        """Record a failed attempt; release the lock unless the attempt is still running.

        `next_attempt_at` None means the job has used its attempts: it meets its failure
        mode. A job an operator ended meanwhile (aborted) keeps its outcome and gets the
        error. Returns None if the claim was lost to another node.
        """
        where, book = self.where, self.book

        def run() -> Recorded | None:
            with where.db.transaction() as conn:
                locked = book.lock_with_job(conn, where.scope, claim.job.queue, claim.job.id)
                if locked.job is None or locked.job["claim_token"] != claim.token:
                    return None
                stored = summary_from_mapping(locked.job)
                if stored.done:
                    return None
                job = _with_params(stored, claim.job)
                since = job.failing_since or job.attempted_at
                moved: Job | None = None
                if job.outcome is not None:  # ended during the attempt (or by this record)
                    conn.execute(self._set_error, {"b_job_id": job.id, "b_error": error})
                    job = replace(job, error=error)
                elif next_attempt_at is None:
                    recorded = self.exhaust(
                        conn, replace(job, failing_since=since), error, locked.now
                    )
                    job, moved = recorded.job, recorded.moved_to
                else:
                    conn.execute(
                        self._failed,
                        {
                            "b_job_id": job.id,
                            "b_error": error,
                            "b_next_attempt_at": next_attempt_at,
                            "b_since": since,
                        },
                    )
                    job = replace(
                        job, error=error, next_attempt_at=next_attempt_at, failing_since=since
                    )
                row = locked.row
                if row is not None:
                    held = row.held_by(claim.token) and not keep_lock
                    gone = 1 if stored.pending and not job.pending else 0
                    following = locked.following
                    after = None if following is None else summary_from_mapping(following)
                    book.sync(
                        conn,
                        where.scope,
                        row,
                        pending_change=-gone,
                        head=first_head(job, after),
                        **(UNLOCKED if held else {}),
                    )
            return Recorded(job, moved)

        return where.db.retrying(run, max_seconds=RECORD_PATIENCE)

    def interrupted(self, conn: Connection, row: QueueRow, job: Job, now: datetime) -> Interrupted:
        """The head `job`'s final attempt started but was never recorded, and the lock of
        its queue (`row`, locked by the caller) has expired or is the caller's: its node
        is gone. The job meets its failure mode; the lock is released."""
        recorded = self.exhaust(conn, job, interrupted_error(job), now)
        gone = 0 if recorded.job.pending else 1
        self.book.sync(conn, self.where.scope, row, pending_change=-gone, **UNLOCKED)
        return Interrupted(recorded.job, recorded.moved_to)

    def exhaust(self, conn: Connection, job: Job, error: str, now: datetime) -> Recorded:
        """Apply `job`'s failure mode: it has used its attempts and failed with `error`.
        The caller holds the lock of the job's queue row and syncs it afterwards."""
        jobs = self.jobs
        # Given up or moved: the job leaves its queue. Blocked: it stays its queue's
        # head, with no next attempt, until an operator acts.
        state, ended_at = JobState.PENDING, None
        moved: Job | None = None
        if job.on_failure is OnFailure.GIVE_UP:
            state, ended_at = JobState.GIVEN_UP, now
        elif job.on_failure is OnFailure.MOVE_TO:
            assert job.dead_letter_queue is not None
            target = job.dead_letter_queue
            last = error.strip().splitlines()[-1] if error.strip() else ""
            (moved,) = self.created.create(  # without its unique key: a job of its own
                conn,
                [
                    NewJob(
                        queue=target,
                        action=job.action,
                        params=job.params,
                        timeout=job.timeout,
                        max_backoff=job.max_backoff,
                        max_attempts=job.max_attempts,
                        scheduled_at=None,
                        # Its attempts there join the trace its first ones joined.
                        trace_context=job.trace_context,
                    )
                ],
                origin=self.where.node,
            ).new
            node = self.where.node
            origin = Intervention(
                "moved_from",
                node,
                now,
                f"job {job.id} of queue {job.queue!r} failed {job.round_attempts} times: {last}",
            )
            moved = append_intervention(conn, jobs, moved, origin)
            note = Intervention(
                "dead_letter", node, now, f"moved to queue {target!r} as job {moved.id}"
            )
            job = append_intervention(conn, jobs, job, note)
            state, ended_at = JobState.DEAD_LETTERED, now
        conn.execute(
            self._exhausted,
            {
                "b_job_id": job.id,
                "b_error": error,
                "b_since": job.failing_since,
                "b_state": state,
                "b_ended_at": ended_at,
            },
        )
        outcome = None if state is JobState.PENDING else state
        return Recorded(
            replace(job, error=error, next_attempt_at=None, outcome=outcome, ended_at=ended_at),
            moved,
        )

    # -- while an attempt runs -----------------------------------------------------------

    def set_progress(self, job: Job, message: str | None, fraction: float | None) -> bool:
        """Store the progress of the running attempt `job`; False if the claim was lost.

        Tried once: progress is best effort, and a write that fails (the database is
        unreachable) is superseded by the attempt's next report, so it is not retried
        (the attempt's outcome, recorded after its last report, waits for none)."""
        with self.where.db.transaction() as conn:
            return bool(
                conn.execute(
                    self._progress,
                    {
                        "b_job_id": job.id,
                        "b_attempts": job.attempts,
                        "b_message": message,
                        "b_fraction": fraction,
                    },
                ).rowcount
            )

    def set_error(self, job: Job, error: str) -> None:
        """Overwrite the error of the attempt `job` describes (if no newer attempt began)."""
        db, jobs = self.where.db, self.jobs

        def run() -> None:
            with db.transaction() as conn:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.attempts == job.attempts)
                    .values(error=error)
                )

        db.retrying(run)
