"""queuetopia_py: a blocking per-queue persistent job scheduler.

Jobs live in one SQL table; each queue runs strictly in order, one job at a time, and a
failing head job blocks its queue while it is retried with a capped exponential backoff.
"""

from queuetopia_py.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidJobError,
    JobAbortedError,
    JobCancelledError,
    JobDeadLetteredError,
    JobFailedError,
    JobGivenUpError,
    JobInProgressError,
    JobNotFoundError,
    JobStateError,
    QueuetopiaError,
    SchemaMissingError,
    WaitTimeoutError,
)
from queuetopia_py.events import Event, EventKind, Subscription
from queuetopia_py.job import JOB_STATES, Intervention, Job, MoveTo, Page, Progress
from queuetopia_py.migrations import migrate
from queuetopia_py.performer import Performer
from queuetopia_py.progress import report_progress
from queuetopia_py.queuetopia import Queuetopia
from queuetopia_py.status import Lock, QueueStatus, RunningAttempt, Status, Suspension

__all__ = [
    "JOB_STATES",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "Event",
    "EventKind",
    "Intervention",
    "InvalidJobError",
    "Job",
    "JobAbortedError",
    "JobCancelledError",
    "JobDeadLetteredError",
    "JobFailedError",
    "JobGivenUpError",
    "JobInProgressError",
    "JobNotFoundError",
    "JobStateError",
    "Lock",
    "MoveTo",
    "Page",
    "Performer",
    "Progress",
    "QueueStatus",
    "Queuetopia",
    "QueuetopiaError",
    "RunningAttempt",
    "SchemaMissingError",
    "Status",
    "Subscription",
    "Suspension",
    "WaitTimeoutError",
    "migrate",
    "report_progress",
]
