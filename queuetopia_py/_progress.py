"""`report_progress`: what a running attempt tells about itself.

Called from `perform`, on the attempt's own thread (or in its worker process), it hands a
short message and/or a fraction to the node's `ProgressWriter`, which stores it on the job,
shown by `get_job(...).progress` and `status()`. Outside a running attempt (a performer
unit-tested directly) it does nothing.

Progress is best effort: it is written off the attempt's thread, so a write that hangs or
fails (the database is unreachable) neither holds up nor fails the attempt.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from queuetopia_py._errors import InvalidJobError
from queuetopia_py._job import Job

logger = logging.getLogger("queuetopia_py.progress")

#: Longest progress message stored; longer ones are cut.
MAX_MESSAGE_LENGTH = 1000

Reporter = Callable[[str | None, float | None], bool]

# The reporter of the attempt running in this thread, or in this task (an async perform).
_current: ContextVar[Reporter | None] = ContextVar("queuetopia_progress", default=None)


def report_progress(message: str | None = None, fraction: float | None = None) -> bool:
    """Store the running attempt's progress: `message` (short text) and/or `fraction`
    (0.0 to 1.0). Returns at once: the report is written in the background, best effort
    (a report not yet written when the next one comes is replaced by it). Report every
    second or so, not per item.

    Returns False when there is nothing to report to: called outside an attempt, after
    the attempt's outcome was recorded (a timed-out attempt running on), or once a write
    found that the attempt lost its claim (another node took its queue over). True
    otherwise, even if the write then fails.

    >>> report_progress("sent 40 of 100 mails", 0.4)
    True
    """
    if message is None and fraction is None:
        raise InvalidJobError("message", None, "give a message, a fraction or both")
    if message is not None:
        if not isinstance(message, str):
            raise InvalidJobError("message", message, "must be a string")
        if len(message) > MAX_MESSAGE_LENGTH:
            message = message[: MAX_MESSAGE_LENGTH - 3] + "..."
    if fraction is not None:
        if (
            not isinstance(fraction, int | float)
            or isinstance(fraction, bool)
            or not math.isfinite(fraction)
            or not 0.0 <= fraction <= 1.0
        ):
            raise InvalidJobError("fraction", fraction, "must be a number from 0.0 to 1.0")
        fraction = float(fraction)
    reporter = _current.get()
    if reporter is None:
        return False
    return reporter(message, fraction)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Route this thread's (or task's) `report_progress` calls to `reporter` while the
    block runs."""
    token = _current.set(reporter)
    try:
        yield
    finally:
        _current.reset(token)


#: Writes a report: `(job, message, fraction) -> False` if the attempt lost its claim.
Write = Callable[[Job, str | None, float | None], bool]


@dataclass(eq=False, slots=True)  # compared by identity: the writer's line holds each once
class _Attempt:
    """One attempt's reports, as the writer knows them."""

    job: Job
    # The latest report not yet written; an attempt is in the writer's line while it has one.
    pending: tuple[str | None, float | None] | None = None
    writing: bool = False
    lost: bool = False
    ended: bool = False


class ProgressWriter:
    """Writes the progress of running attempts from a daemon thread of its own (started
    when there is something to write, ending when there is not), so that `perform` never
    waits for the database. Only the latest unwritten report of each attempt is kept. A
    failing write is logged once, until a write succeeds again.

    >>> writer = ProgressWriter(claims.set_progress)
    >>> with writer.attempt(job) as report:
    ...     outcome = executor.run(job, deadline, report)
    """

    def __init__(self, write: Write) -> None:
        self._write = write
        self._changed = threading.Condition()
        self._line: deque[_Attempt] = deque()
        self._thread: threading.Thread | None = None
        self._failing = False

    @contextmanager
    def attempt(self, job: Job) -> Iterator[Reporter]:
        """The reporter of `job`'s attempt while the block runs.

        On leaving, the attempt's reports end: a write under way is waited for, and the
        last report not yet written is written then (dropped while writes are failing),
        so that the progress is stored before the attempt's outcome is recorded and no
        write of it lands afterwards. Later reports return False.
        """
        attempt = _Attempt(job)
        try:
            yield lambda message, fraction: self._report(attempt, message, fraction)
        finally:
            self._end(attempt)

    def _report(self, attempt: _Attempt, message: str | None, fraction: float | None) -> bool:
        with self._changed:
            if attempt.ended or attempt.lost:
                return False
            if attempt.pending is None:
                self._line.append(attempt)
            attempt.pending = (message, fraction)
            if self._thread is None:
                thread = threading.Thread(
                    target=self._loop, name="queuetopia-progress", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # no thread to be had: written when the attempt ends
                    return True
                self._thread = thread
        return True

    def _loop(self) -> None:
        while True:
            with self._changed:
                if not self._line:
                    self._thread = None
                    return
                attempt = self._line.popleft()
                report, attempt.pending = attempt.pending, None
                attempt.writing = True
            try:
                if report is not None:
                    self._store(attempt, *report)
            finally:
                with self._changed:
                    attempt.writing = False
                    self._changed.notify_all()

    def _end(self, attempt: _Attempt) -> None:
        with self._changed:
            attempt.ended = True
            while attempt.writing:
                self._changed.wait()
            report, attempt.pending = attempt.pending, None
            if report is not None:
                self._line.remove(attempt)
            failing = self._failing
        if report is not None and not failing:
            self._store(attempt, *report)

    def _store(self, attempt: _Attempt, message: str | None, fraction: float | None) -> None:
        job = attempt.job
        log = {"scope": job.scope, "queue": job.queue, "job_id": job.id}
        try:
            stored = self._write(job, message, fraction)
        except Exception as exc:
            with self._changed:
                first, self._failing = not self._failing, True
            # One outage, one warning: an attempt may report many times a second.
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "progress not stored; later failures are logged at DEBUG until a write"
                " succeeds: %s",
                exc,
                extra=log,
            )
            return
        with self._changed:
            recovered, self._failing = self._failing, False
            attempt.lost = attempt.lost or not stored
        if recovered:
            logger.warning("progress stored again", extra=log)
