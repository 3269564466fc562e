"""What `Queuetopia.status()` returns: the state of a scope's queues and of the nodes
running them, read in one short transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from queuetopia_py.job import Job


@dataclass(frozen=True, slots=True)
class Suspension:
    """A suspended queue (`queue` None: the whole scope). Nothing new starts there until
    it is resumed; attempts that were running finish."""

    scope: str
    queue: str | None
    suspended_at: datetime
    suspended_by: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Lock:
    """A queue's lock: `node` may run the queue until `locked_until` (database time),
    taken for an attempt of job `job_id`."""

    queue: str
    node: str
    locked_at: datetime
    locked_until: datetime
    job_id: int | None = None


@dataclass(frozen=True, slots=True)
class RunningAttempt:
    """An attempt running now: `job` (with its `progress`) on `node`. It may be a job
    that is no longer its queue's head (aborted while it runs)."""

    node: str
    queue: str
    job: Job
    started_at: datetime
    locked_until: datetime


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One queue: its pending work, its head, its lock and whether it is suspended.

    `failed` counts its jobs that ended without success (given up, aborted, moved to a
    dead-letter queue). `suspended` is the queue's own suspension or its scope's.
    """

    queue: str
    pending: int
    failed: int
    head: Job | None
    lock: Lock | None
    suspended: Suspension | None
    running: RunningAttempt | None = None

    @property
    def blocked(self) -> bool:
        """Whether the head is failing: its last attempt failed, or it waits for an
        operator. Since when, how often and why: `head.failing_since`, `head.attempts`,
        `head.error`; next try: `head.next_attempt_at`."""
        return self.head is not None and self.head.state in ("retrying", "blocked")


@dataclass(frozen=True, slots=True)
class Status:
    """A scope at instant `at` (database time): its queues, sorted by name, and the
    attempts each node is running."""

    scope: str
    at: datetime
    suspended: Suspension | None
    queues: list[QueueStatus] = field(default_factory=list)
    nodes: dict[str, list[RunningAttempt]] = field(default_factory=dict)

    def queue(self, name: str) -> QueueStatus | None:
        """The status of the queue `name`, if it has anything to show."""
        return next((q for q in self.queues if q.queue == name), None)

    @property
    def blocked(self) -> list[QueueStatus]:
        """The queues whose head is failing."""
        return [q for q in self.queues if q.blocked]
