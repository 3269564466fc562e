"""Every default, named once. The docs' configuration reference mirrors this module."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

#: How long one attempt may run before it counts as failed with `job_timeout`.
TIMEOUT: Final = timedelta(seconds=60)
#: The cap of the exponential retry delay of a failing head job.
MAX_BACKOFF: Final = timedelta(hours=24)
#: Attempts after which a job is given up (left undone with its error) and its queue moves on.
MAX_ATTEMPTS: Final = 20
#: Seconds between two polls of the database when nothing wakes the scheduler earlier.
POLL_INTERVAL: Final = 60.0
#: How long a queue lock outlives its job's timeout, so a dead node's queue is taken over.
LOCK_MARGIN: Final = timedelta(seconds=1)
#: Longest a queue lock lives without being renewed. The lock of a job whose timeout (plus
#: the margin) is longer is renewed while its attempt runs, every third of the lease, so
#: that a dead node's long job is taken over after the lease, not after its timeout.
LOCK_LEASE: Final = timedelta(seconds=60)
#: Longest a statement may run, and a call wait for the database's answer, on the engines
#: made from a URL (PostgreSQL, MariaDB/MySQL): past it, the call fails as the database
#: being unreachable, instead of hanging on a server or network gone silent.
STATEMENT_TIMEOUT: Final = timedelta(seconds=30)
#: Queues one node runs at the same time (one attempt each).
MAX_CONCURRENCY: Final = 10
#: Completed jobs older than this are deleted by the cleaner.
JOB_RETENTION: Final = timedelta(days=7)
#: Prefix of every table name.
TABLE_PREFIX: Final = "queuetopia_"
#: Error recorded for an attempt that outlived its timeout.
TIMEOUT_ERROR: Final = "job_timeout"
#: Error recorded for an attempt stopped (process executor) because its queue's lock could
#: not be renewed before it would expire.
LEASE_LAPSED_ERROR: Final = "lock_lease_lapsed"
#: Longest queue, action or scope name accepted.
MAX_NAME_LENGTH: Final = 255
#: Largest `params` (as JSON text, in bytes) a job may be created with, and largest result
#: stored (a larger result is stored as null, with a warning): 1 MiB, as the payload limits
#: of other job queues. Params are read with each attempt; big data belongs elsewhere.
MAX_PARAMS_BYTES: Final = 1024 * 1024
#: Most lists and objects nested in one another in `params` and results (MariaDB's JSON
#: accepts no deeper).
MAX_JSON_NESTING: Final = 31
