"""The exception hierarchy: everything queuetopia raises derives from `QueuetopiaError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from queuetopia_py._job import Job, JobSummary


class QueuetopiaError(Exception):
    """Base class of every error raised by queuetopia_py."""


class InvalidJobError(QueuetopiaError, ValueError):
    """`create_job` (or an option) was given a value it cannot accept; nothing was written.

    `field` names the offending argument, `value` is what was given.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: {reason} (got {shown})")


class ConfigurationError(QueuetopiaError, ValueError):
    """A Queuetopia option is missing or invalid."""


class DatabaseError(QueuetopiaError):
    """The database failed or could not be reached; the operation did not complete."""


class DatabaseUnavailableError(DatabaseError):
    """The database could not be reached, or the connection to it was lost.

    Raised by a call made while the database is down or restarting (the scheduler's own
    work waits and retries instead). A call that writes, such as `create_job`, may still
    have been committed if the connection was lost during its commit.
    """


class SchemaMissingError(DatabaseError):
    """The queuetopia tables do not exist: run `queuetopia migrate URL` or `migrate(url)`."""


class JobNotFoundError(QueuetopiaError, LookupError):
    """No job with this id exists in this scope (it may have been cleaned up)."""

    def __init__(self, job_id: int, scope: str | None = None) -> None:
        self.job_id = job_id
        where = f" in scope {scope!r}" if scope is not None else ""
        super().__init__(f"job {job_id} not found{where}")


class JobStateError(QueuetopiaError):
    """An operator action does not apply to the job in its current state (`job`)."""

    def __init__(self, job: Job, message: str) -> None:
        self.job = job
        super().__init__(message)


class JobInProgressError(JobStateError):
    """The job's attempt is running now: it cannot be cancelled or retried until it ends."""


class JobFailedError(QueuetopiaError):
    """`wait_for`: the job ended without success (`job` tells how)."""

    def __init__(self, job: Job | JobSummary) -> None:
        self.job = job
        last = (job.error or "").strip().splitlines()
        detail = f": {last[-1]}" if last else ""
        super().__init__(f"job {job.id} ({job.queue}/{job.action}) {job.state}{detail}")


class JobGivenUpError(JobFailedError):
    """`wait_for`: the job used all its attempts without success."""


class JobCancelledError(JobFailedError):
    """`wait_for`: the job was cancelled before it ran to success."""


class JobAbortedError(JobFailedError):
    """`wait_for`: an operator aborted the job."""


class JobDeadLetteredError(JobFailedError):
    """`wait_for`: the job used all its attempts and was moved to a dead-letter queue."""


class WaitTimeoutError(QueuetopiaError, TimeoutError):
    """`wait_for`: the job did not end within the timeout."""
