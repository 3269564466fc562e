"""Events: what happens to jobs and queues, as it happens on this node.

Subscribe a callable to one instance (`Queuetopia.subscribe`) or to every instance of
the process (`queuetopia_py.events.subscribe`). Callbacks run synchronously on the thread
that emits (a runner, or the caller of `create_job`, `cancel_job`, ...): keep them fast
and hand slow work to a queue of your own. A callback that raises is logged and skipped.

The library's own structured logging is such a subscriber (`log_event`), and so can be
metrics or tracing: `attempt_started` and the event that ends an attempt carry the job,
the attempt number and, at the end, the attempt's `duration`.

>>> def count(event: Event) -> None:
...     if event.kind is EventKind.ATTEMPT_FAILED:
...         failures.labels(event.queue).inc()
>>> subscription = queue.subscribe(count)
>>> subscription.close()
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from queuetopia_py._job import Job, error_line

logger = logging.getLogger("queuetopia_py.events")


class EventKind(enum.StrEnum):
    """What happened."""

    JOB_CREATED = "job_created"
    ATTEMPT_STARTED = "attempt_started"
    LOCK_TAKEN_OVER = "lock_taken_over"
    ATTEMPT_SUCCEEDED = "attempt_succeeded"
    ATTEMPT_FAILED = "attempt_failed"
    ATTEMPT_TIMED_OUT = "attempt_timed_out"
    JOB_GIVEN_UP = "job_given_up"
    JOB_BLOCKED = "job_blocked"
    JOB_DEAD_LETTERED = "job_dead_lettered"
    JOB_CANCELLED = "job_cancelled"
    JOB_ABORTED = "job_aborted"
    JOB_RETRIED = "job_retried"
    QUEUE_SUSPENDED = "queue_suspended"
    QUEUE_RESUMED = "queue_resumed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One event. `job` is the job as it stands after the event (for attempts: as
    claimed, then as recorded). `queue` None with a queue event means the whole scope.

    `duration` (seconds) is set on the events that end an attempt; `error` on failures;
    `by` and `reason` on operators' actions; `moved_to` on `job_dead_lettered`.
    """

    kind: EventKind
    scope: str
    node: str
    queue: str | None = None
    job: Job | None = None
    attempt: int | None = None
    duration: float | None = None
    error: str | None = None
    by: str | None = None
    reason: str | None = None
    moved_to: Job | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def job_id(self) -> int | None:
        """The id of the job concerned, if any."""
        return None if self.job is None else self.job.id


Subscriber = Callable[[Event], object]


class Subscription:
    """A subscription; `close()` (or leaving its `with` block) ends it."""

    def __init__(self, bus: EventBus, entry: tuple[Subscriber, frozenset[EventKind] | None]):
        self._bus = bus
        self._entry = entry

    def close(self) -> None:
        """Stop receiving events (idempotent)."""
        self._bus._remove(self._entry)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Delivers events to its subscribers, then to its parent's (the process-wide bus)."""

    def __init__(self, parent: EventBus | None = None) -> None:
        self._parent = parent
        self._lock = threading.Lock()
        self._subscribers: list[tuple[Subscriber, frozenset[EventKind] | None]] = []

    def subscribe(
        self, callback: Subscriber, kinds: Iterable[EventKind | str] | None = None
    ) -> Subscription:
        """Call `callback(event)` for each event (of `kinds` only, if given)."""
        if not callable(callback):
            raise TypeError(f"callback: must be callable (got {callback!r})")
        wanted = None if kinds is None else frozenset(EventKind(k) for k in kinds)
        entry = (callback, wanted)
        with self._lock:
            self._subscribers = [*self._subscribers, entry]
        return Subscription(self, entry)

    def _remove(self, entry: tuple[Subscriber, frozenset[EventKind] | None]) -> None:
        with self._lock:
            self._subscribers = [e for e in self._subscribers if e is not entry]

    def emit(self, event: Event) -> None:
        """Deliver `event`; a subscriber that raises is logged and does not stop others."""
        for callback, kinds in self._subscribers:
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                callback(event)
            except Exception:
                logger.exception("event subscriber %r raised on %s", callback, event.kind.value)
        if self._parent is not None:
            self._parent.emit(event)


#: The process-wide bus: every instance's events reach it.
process_bus = EventBus()


def subscribe(callback: Subscriber, kinds: Iterable[EventKind | str] | None = None) -> Subscription:
    """Receive the events of every Queuetopia instance of this process."""
    return process_bus.subscribe(callback, kinds)


_LEVELS = {
    EventKind.JOB_CREATED: logging.DEBUG,
    EventKind.ATTEMPT_STARTED: logging.DEBUG,
    EventKind.LOCK_TAKEN_OVER: logging.WARNING,
    EventKind.ATTEMPT_SUCCEEDED: logging.INFO,
    EventKind.ATTEMPT_FAILED: logging.WARNING,
    EventKind.ATTEMPT_TIMED_OUT: logging.WARNING,
    EventKind.JOB_GIVEN_UP: logging.ERROR,
    EventKind.JOB_BLOCKED: logging.ERROR,
    EventKind.JOB_DEAD_LETTERED: logging.ERROR,
}
_log = logging.getLogger("queuetopia_py")


def log_event(event: Event) -> None:
    """The library's structured log line for `event` (logger `queuetopia_py`): the event
    kind as the message, its fields in the record's `extra`."""
    level = _LEVELS.get(event.kind, logging.INFO)
    if not _log.isEnabledFor(level):
        return
    extra: dict[str, object] = {"event": event.kind.value, "scope": event.scope, "node": event.node}
    if event.queue is not None:
        extra["queue"] = event.queue
    if event.job is not None:
        extra["job_id"] = event.job.id
        extra["action"] = event.job.action
    for name in ("attempt", "by", "reason"):
        value = getattr(event, name)
        if value is not None:
            extra[name] = value
    if event.duration is not None:
        extra["duration"] = round(event.duration, 6)
    if event.error is not None:
        extra["error"] = error_line(event.error)
    if event.moved_to is not None:
        extra["moved_to"] = event.moved_to.id
    _log.log(level, _message(event), extra=extra)


def _message(event: Event) -> str:
    """One line that reads without the record's fields (Python's default handler prints
    only the message): what happened, to which job of which queue and scope, the attempt,
    the error's line and what comes next, e.g. `attempt failed: job 12 (send_mail),
    queue mails_1, scope mail, attempt 1/20: ValueError: no such mailbox; next attempt
    at 2026-12-06T10:00:03+00:00`."""
    job = event.job
    about = [] if job is None else [f"job {job.id} ({job.action})"]
    if event.queue is not None:
        about.append(f"queue {event.queue}")
    about.append(f"scope {event.scope}")
    if event.attempt is not None and job is not None and job.round_attempts:
        # Of the attempts the job has left (an operator's retry starts a new round).
        about.append(f"attempt {job.round_attempts}/{job.max_attempts}")
    elif event.attempt is not None:
        about.append(f"attempt {event.attempt}")
    if event.by is not None:
        about.append(f"by {event.by}")
    message = f"{event.kind.value.replace('_', ' ')}: {', '.join(about)}"
    if event.error is not None:
        message += f": {error_line(event.error)}"
    if event.reason:
        message += f" ({event.reason})"
    if job is not None and event.kind is EventKind.ATTEMPT_FAILED and job.next_attempt_at:
        message += f"; next attempt at {job.next_attempt_at.isoformat()}"
    if event.moved_to is not None:
        message += f"; moved to job {event.moved_to.id} in queue {event.moved_to.queue}"
    return message


process_bus.subscribe(log_event)
