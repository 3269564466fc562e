"""One attempt, from claim to record: run it on the executor, record its outcome, apply
the failure mode, call the performer's hooks and emit the events. Used by the scheduler's
runners and by `testing.drain`."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from datetime import timedelta

from queuetopia_py.backoff import default_backoff, next_attempt_at
from queuetopia_py.events import Event, EventBus, EventKind
from queuetopia_py.execution import Executor, Outcome, describe_exception
from queuetopia_py.job import Job
from queuetopia_py.lease import LeaseKeeper
from queuetopia_py.performer import Performer
from queuetopia_py.progress import ProgressWriter
from queuetopia_py.store.claims import Claim, ClaimStore, Interrupted, NotDue, Recorded

#: What may follow an attempt in its queue: the claim of the queue's next job, taken as
#: the success was recorded; `NotDue` or `Interrupted` for that head; None when nothing
#: was claimed.
Following = Claim | NotDue | Interrupted | None

logger = logging.getLogger("queuetopia_py.attempts")

_ENDED = {
    "given_up": EventKind.JOB_GIVEN_UP,
    "dead_lettered": EventKind.JOB_DEAD_LETTERED,
}


class AttemptRunner:
    """Runs claimed attempts of one scope on one node."""

    def __init__(
        self,
        claims: ClaimStore,
        executor: Executor,
        performer: Performer,
        events: EventBus,
        lease: LeaseKeeper | None = None,
    ) -> None:
        self.claims = claims
        self.executor = executor
        self.performer = performer
        self.events = events
        # Renews the locks of attempts that may outlive them (None: never needed, the
        # attempts run inline without a timeout).
        self.lease = lease
        self.progress = ProgressWriter(claims.set_progress)

    def emit(self, kind: EventKind, job: Job, **fields: object) -> None:
        """Emit an event about `job` from this node."""
        self.events.emit(
            Event(
                kind=kind,
                scope=job.scope,
                node=self.claims.node,
                queue=job.queue,
                job=job,
                **fields,  # type: ignore[arg-type]
            )
        )

    def run(self, claim: Claim, unready: Outcome | None = None) -> Outcome:
        """Run and record the attempt `claim` holds. Its deadline counts from
        `claim.started`, taken before the database's time was read for the lock, so it
        falls before the lock's expiry (or the lock is renewed meanwhile, when the
        timeout is longer than the lease). `unready` is the failure to record instead of
        running (executor not ready)."""
        return self._run(claim, unready, claim_next=False)[0]

    def run_and_claim_next(
        self, claim: Claim, unready: Outcome | None = None
    ) -> tuple[Outcome, Following]:
        """`run`, and on success claim the queue's next job in the transaction that
        records it, the queue's lock passing from one job to the next."""
        return self._run(claim, unready, claim_next=True)

    def _run(
        self, claim: Claim, unready: Outcome | None, *, claim_next: bool
    ) -> tuple[Outcome, Following]:
        job = claim.job
        self.emit(EventKind.ATTEMPT_STARTED, job, attempt=job.attempts)
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
                        job, claim.started + job.timeout.total_seconds(), report, lapsed
                    )
            except Exception as exc:  # the executor itself failed
                logger.exception(
                    "executor failed to run the attempt",
                    extra={"scope": job.scope, "queue": job.queue, "job_id": job.id},
                )
                outcome = Outcome(describe_exception(exc))
        duration = time.monotonic() - began
        if outcome.error is None:
            return outcome, self._succeeded(claim, outcome, duration, claim_next=claim_next)
        self._failed(claim, outcome, duration)
        return outcome, None

    def _succeeded(
        self, claim: Claim, outcome: Outcome, duration: float, *, claim_next: bool
    ) -> Following:
        job = claim.job
        log = {"scope": job.scope, "queue": job.queue, "job_id": job.id}
        if outcome.result_problem is not None:
            logger.warning(
                "perform returned a value that is not JSON; stored no result: %s",
                outcome.result_problem,
                extra=log,
            )
        following: Following = None
        if claim_next:
            done, following = self.claims.record_success_and_claim(claim, outcome.result)
        else:
            done = self.claims.record_success(claim, outcome.result)
        if done is None:
            logger.warning(
                "success not recorded: the attempt was recorded already or its lock was taken over",
                extra=log,
            )
            return following
        self.emit(EventKind.ATTEMPT_SUCCEEDED, done, attempt=done.attempts, duration=duration)
        try:
            self.performer.handle_succeeded_job(done)
        except Exception:
            logger.exception("handle_succeeded_job raised", extra=log)
        return following

    def _failed(self, claim: Claim, outcome: Outcome, duration: float) -> None:
        job = claim.job
        assert outcome.error is not None and job.attempted_at is not None
        try:
            delay = self.performer.backoff(replace(job, error=outcome.error))
            if not isinstance(delay, timedelta) or delay < timedelta(0):
                raise TypeError(f"backoff() must return a non-negative timedelta, got {delay!r}")
        except Exception:
            logger.exception("performer.backoff failed; using the default backoff")
            delay = default_backoff(job.round_attempts - 1, job.max_backoff)
        next_at = next_attempt_at(job.attempted_at, job.round_attempts, job.max_attempts, delay)
        recorded = self.claims.record_failure(
            claim, outcome.error, next_at, keep_lock=outcome.wait_stopped is not None
        )
        if recorded is None:
            logger.warning(
                "failure not recorded: the attempt was recorded already or its lock was taken over",
                extra={"scope": job.scope, "queue": job.queue, "job_id": job.id},
            )
            return
        kind = EventKind.ATTEMPT_TIMED_OUT if outcome.timed_out else EventKind.ATTEMPT_FAILED
        self.emit(kind, recorded.job, attempt=job.attempts, duration=duration, error=outcome.error)
        self._ended(recorded, outcome.error, exhausted=next_at is None)

    def interrupted(self, claim: Interrupted) -> None:
        """The head's final attempt was never recorded: report its failure mode."""
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
        elif exhausted and job.state == "blocked":
            self.emit(EventKind.JOB_BLOCKED, job, attempt=job.attempts, error=error)
        try:
            self.performer.handle_failed_job(job)
        except Exception as exc:
            logger.exception(
                "handle_failed_job raised",
                extra={"scope": job.scope, "queue": job.queue, "job_id": job.id},
            )
            self.claims.set_error(
                job, f"{error}\n\nhandle_failed_job raised: {describe_exception(exc)}"
            )
