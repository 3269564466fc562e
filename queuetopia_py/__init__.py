"""queuetopia_py: a blocking per-queue persistent job scheduler.

Jobs live in one SQL table; each queue runs strictly in order, one job at a time, and a
failing head job blocks its queue while it is retried with a capped exponential backoff.
"""

from queuetopia_py.errors import (
    ConfigurationError,
    DatabaseError,
    InvalidJobError,
    QueuetopiaError,
    SchemaMissingError,
)
from queuetopia_py.job import Job, Page
from queuetopia_py.migrations import migrate
from queuetopia_py.performer import Performer
from queuetopia_py.queuetopia import Queuetopia

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "InvalidJobError",
    "Job",
    "Page",
    "Performer",
    "Queuetopia",
    "QueuetopiaError",
    "SchemaMissingError",
    "migrate",
]
