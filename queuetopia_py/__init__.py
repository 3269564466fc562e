"""queuetopia_py: a blocking per-queue persistent job scheduler.

Jobs live in one SQL table; each queue runs strictly in order, one job at a time, and a
failing head job blocks its queue while it is retried with a capped exponential backoff.
"""

from importlib import metadata as _metadata

from queuetopia_py._errors import (
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
from queuetopia_py._job import (
    Intervention,
    Job,
    JobState,
    JobSummary,
    MoveTo,
    OnFailure,
    Page,
    Progress,
)
from queuetopia_py._options import Options
from queuetopia_py._performer import Performer
from queuetopia_py._progress import report_progress
from queuetopia_py._queuetopia import Queuetopia
from queuetopia_py._schedules import Schedule
from queuetopia_py._sources import RowSource, backfill_source, install_source, uninstall_source
from queuetopia_py._status import (
    Lock,
    QueueStatus,
    RunningAttempt,
    ScheduleStatus,
    Status,
    Suspension,
)
from queuetopia_py.events import Event, EventKind, Subscription
from queuetopia_py.migrations import migrate

try:
    #: The installed distribution's version (PEP 440), e.g. "0.1.0".
    __version__: str = _metadata.version("queuetopia_py")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
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
    "JobState",
    "JobStateError",
    "JobSummary",
    "Lock",
    "MoveTo",
    "OnFailure",
    "Options",
    "Page",
    "Performer",
    "Progress",
    "QueueStatus",
    "Queuetopia",
    "QueuetopiaError",
    "RowSource",
    "RunningAttempt",
    "Schedule",
    "ScheduleStatus",
    "SchemaMissingError",
    "Status",
    "Subscription",
    "Suspension",
    "WaitTimeoutError",
    "backfill_source",
    "install_source",
    "migrate",
    "report_progress",
    "uninstall_source",
]
