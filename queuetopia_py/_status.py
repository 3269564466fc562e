"""What `Queuetopia.status()` returns: the state of a scope's queues (a page of them,
blocked ones first) and of the nodes running them, read in one short transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from queuetopia_py._job import JobState, JobSummary


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
class ScheduleStatus:
    """A schedule as the database records it: its definition, the next fire time, and
    the latest fire time dealt with (a job created, or skipped by its catch-up) with the
    job last created (its id: `get_job` reads it; None before the first)."""

    scope: str
    name: str
    definition: str
    next_fire_at: datetime | None
    last_fire_at: datetime
    last_job_id: int | None


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
    """An attempt running now: `job` (with its `progress`; without params and result)
    on `node`. It may be a job that is no longer its queue's head (aborted while it
    runs)."""

    node: str
    queue: str
    job: JobSummary
    started_at: datetime
    locked_until: datetime


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One queue: its pending work, its head, its lock and whether it is suspended.

    `failed` counts its jobs that ended without success (given up, aborted, moved to a
    dead-letter queue). `head` is its first pending job, without params and result
    (`get_job(head.id)` reads them). `suspended` is the queue's own suspension or its
    scope's.
    """

    queue: str
    pending: int
    failed: int
    head: JobSummary | None
    lock: Lock | None
    suspended: Suspension | None
    running: RunningAttempt | None = None

    @property
    def blocked(self) -> bool:
        """Whether the head is failing: its last attempt failed, or it waits for an
        operator. Since when, how often and why: `head.failing_since`, `head.attempts`,
        `head.error`; next try: `head.next_attempt_at`."""
        return self.head is not None and self.head.state in (JobState.RETRYING, JobState.BLOCKED)


@dataclass(frozen=True, slots=True)
class Status:
    """A scope at instant `at` (database time): a page of its queues with pending work
    or a lock, blocked ones first (the longest failing first), then the others by name;
    the attempts each node is running; the scope's suspensions; and its schedules.

    `queue_count` and `blocked_count` count every such queue of the scope. When the page
    does not hold them all, `next_after` names the queue to pass as `status(after=...)`
    for the next page (None: this is the last page).
    """

    scope: str
    at: datetime
    suspended: Suspension | None
    queues: list[QueueStatus] = field(default_factory=list)
    nodes: dict[str, list[RunningAttempt]] = field(default_factory=dict)
    suspensions: list[Suspension] = field(default_factory=list)
    queue_count: int = 0
    blocked_count: int = 0
    next_after: str | None = None
    schedules: list[ScheduleStatus] = field(default_factory=list)

    def queue(self, name: str) -> QueueStatus | None:
        """The status of the queue `name`, if this page shows it."""
        return next((q for q in self.queues if q.queue == name), None)

    @property
    def blocked(self) -> list[QueueStatus]:
        """The queues of this page whose head is failing."""
        return [q for q in self.queues if q.blocked]
