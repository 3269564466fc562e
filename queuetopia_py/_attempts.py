"""One attempt, from claim to record: run it on the executor, record its outcome, apply
the failure mode, call the performer's hooks and emit the events. Used by the scheduler's
runners and by `testing.drain`."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from queuetopia_py import _tracing as tracing
from queuetopia_py import defaults
from queuetopia_py._backoff import default_backoff, next_attempt_at
from queuetopia_py._event_loop import PerformerLoop
from queuetopia_py._execution import Executor, Outcome, describe_exception
from queuetopia_py._group_commit import GroupCommit
from queuetopia_py._job import Job, JobState, limit_result
from queuetopia_py._lease import LeaseKeeper
from queuetopia_py._performer import Performer
from queuetopia_py._progress import ProgressWriter
from queuetopia_py._store.locks import Claim, Interrupted
from queuetopia_py._store.records import Following, Recorded, RecordStore, Success
from queuetopia_py.events import Event, EventBus, EventKind

logger = logging.getLogger("queuetopia_py.attempts")

_ENDED = {
    JobState.GIVEN_UP: EventKind.JOB_GIVEN_UP,
    JobState.DEAD_LETTERED: EventKind.JOB_DEAD_LETTERED,
}


@dataclass(frozen=True, slots=True)
class Attempted:
    """How an attempt went, once recorded: its outcome; what follows it in its queue
    (see `Following`); and after a failure, the seconds until the job's next attempt
    (about: None when it has none, having met its failure mode, or when the record was
    lost)."""

    outcome: Outcome
    following: Following = None
    retry_in: float | None = None


def _call(hook: Callable[..., Any], *args: Any) -> Any:
    return hook(*args)


class AttemptRunner:
    """Runs claimed attempts of one scope on one node."""

    def __init__(
        self,
        records: RecordStore,
        executor: Executor,
        performer: Performer,
        events: EventBus,
        lease: LeaseKeeper | None = None,
        *,
        max_result_bytes: int = defaults.MAX_PARAMS_BYTES,
        loop: PerformerLoop | None = None,
    ) -> None:
        self.records = records
        # An async performer's loop: its async hooks run there (this thread waits).
        self._call: Callable[..., Any] = _call if loop is None else loop.call
        #: Results larger than this (bytes of JSON) are stored as null (`max_params_bytes`).
        self.max_result_bytes = max_result_bytes
        self.executor = executor
        self.performer = performer
        self.events = events
        # Renews the locks of attempts that may outlive them (None: never needed, the
        # attempts run inline without a timeout).
        self.lease = lease
        self.progress = ProgressWriter(records.set_progress)
        self._successes: GroupCommit[Success, tuple[Job | None, Following]] = GroupCommit(
            records.record_successes, key=lambda success: success.claim.job.queue
        )

    def emit(self, kind: EventKind, job: Job, **fields: object) -> None:
        """Emit an event about `job` from this node."""
        self.events.emit(
            Event(
                kind=kind,
                scope=job.scope,
                node=self.records.where.node,
                queue=job.queue,
                job=job,
                **fields,  # type: ignore[arg-type]
            )
        )

    def run(
        self, claim: Claim, unready: Outcome | None = None, *, claim_next: bool = False
    ) -> Attempted:
        """Run and record the attempt `claim` holds; with `claim_next`, a success also
        claims the queue's next job in the transaction that records it (the queue's lock
        passing from one job to the next).

        The attempt's deadline counts from `claim.started`, taken before the database's
        time was read for the lock, so it falls before the lock's expiry (or the lock is
        renewed meanwhile, when the timeout is longer than the lease). `unready` is the
        failure to record instead of running (executor not ready)."""
        job = claim.job
        if claim.taken_over:
            self.emit(EventKind.LOCK_TAKEN_OVER, job, attempt=job.attempts)
        self.emit(EventKind.ATTEMPT_STARTED, job, attempt=job.attempts)
        tracer = tracing.tracer()
        trace = None if tracer is None else tracer.attempt(job, self.records.where.node)
        began = time.monotonic()
        if unready is not None:
            outcome = unready
        else:
            try:
                # The progress reports end (the last one written) before the outcome is
                # recorded, while the lock is still kept.
                with (
                    self.lease.keep(claim) if self.lease else contextlib.nullcontext() as lapsed,
                    self.progress.attempt(job) as report,
                ):
                    outcome = self.executor.run(
                        job, claim.started + job.timeout.total_seconds(), report, lapsed, trace
                    )
            except Exception as exc:  # the executor itself failed
                logger.exception(
                    "executor failed to run the attempt",
                    extra={"scope": job.scope, "queue": job.queue, "job_id": job.id},
                )
                outcome = Outcome(describe_exception(exc))
        duration = time.monotonic() - began
        if trace is not None:  # ended before the outcome is recorded: it covers the run
            trace.end(outcome.error, timed_out=outcome.timed_out)
        if outcome.error is None:
            following = self._succeeded(claim, outcome, duration, claim_next=claim_next)
            return Attempted(outcome, following)
        return Attempted(outcome, retry_in=self._failed(claim, outcome, duration))

    def _succeeded(
        self, claim: Claim, outcome: Outcome, duration: float, *, claim_next: bool
    ) -> Following:
        job = claim.job
        log = {"scope": job.scope, "queue": job.queue, "job_id": job.id}
        result, problem = outcome.result, outcome.result_problem
        if problem is None:
            result, problem = limit_result(result, self.max_result_bytes)
        if problem is not None:
            what = "is not JSON" if outcome.result_problem is not None else "is too large"
            logger.warning(
                "perform returned a value that %s; stored no result: %s", what, problem, extra=log
            )
        # With the successes of other queues that end meanwhile, in one transaction.
        done, following = self._successes.submit(Success(claim, result, claim_next))
        if done is None:
            logger.warning(
                "success not recorded: the attempt was recorded already or its lock was taken over",
                extra=log,
            )
            return following
        self.emit(EventKind.ATTEMPT_SUCCEEDED, done, attempt=done.attempts, duration=duration)
        try:
            self._call(self.performer.handle_succeeded_job, done)
        except Exception:
            logger.exception("handle_succeeded_job raised", extra=log)
        return following

    def _failed(self, claim: Claim, outcome: Outcome, duration: float) -> float | None:
        """Record the failed attempt; return the seconds until the job's next attempt."""
        job = claim.job
        assert outcome.error is not None and job.attempted_at is not None
        try:
            delay = self._call(self.performer.backoff, replace(job, error=outcome.error))
            if not isinstance(delay, timedelta) or delay < timedelta(0):
                raise TypeError(f"backoff() must return a non-negative timedelta, got {delay!r}")
        except Exception:
            logger.exception("performer.backoff failed; using the default backoff")
            delay = default_backoff(job.round_attempts - 1, job.max_backoff)
        next_at = next_attempt_at(job.attempted_at, job.round_attempts, job.max_attempts, delay)
        recorded = self.records.record_failure(
            claim, outcome.error, next_at, keep_lock=outcome.wait_stopped is not None
        )
        if recorded is None:
            logger.warning(
                "failure not recorded: the attempt was recorded already or its lock was taken over",
                extra={"scope": job.scope, "queue": job.queue, "job_id": job.id},
            )
            return None
        kind = EventKind.ATTEMPT_TIMED_OUT if outcome.timed_out else EventKind.ATTEMPT_FAILED
        self.emit(kind, recorded.job, attempt=job.attempts, duration=duration, error=outcome.error)
        self._ended(recorded, outcome.error, exhausted=next_at is None)
        # The attempt began `duration` ago, about when `attempted_at` was read.
        return None if next_at is None else (delay.total_seconds() - duration)

    def interrupted(self, claim: Interrupted) -> None:
        """The head's final attempt was never recorded (its lock expired, and this
        node took the queue over): report its failure mode."""
        self.emit(EventKind.LOCK_TAKEN_OVER, claim.job, attempt=claim.job.attempts)
        error = claim.job.error or ""
        self._ended(Recorded(claim.job, claim.moved_to), error, exhausted=True)

    def _ended(self, recorded: Recorded, error: str, *, exhausted: bool) -> None:
        job = recorded.job
        if exhausted and job.outcome in _ENDED:
            self.emit(
                _ENDED[job.outcome],
                job,
                attempt=job.attempts,
                error=error,
                moved_to=recorded.moved_to,
            )
        elif exhausted and job.state is JobState.BLOCKED:
            self.emit(EventKind.JOB_BLOCKED, job, attempt=job.attempts, error=error)
        try:
            self._call(self.performer.handle_failed_job, job)
        except Exception as exc:
            logger.exception(
                "handle_failed_job raised",
                extra={"scope": job.scope, "queue": job.queue, "job_id": job.id},
            )
            self.records.set_error(
                job, f"{error}\n\nhandle_failed_job raised: {describe_exception(exc)}"
            )
