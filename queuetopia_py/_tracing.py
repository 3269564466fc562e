"""The tracing hook: what an instrumentation (`queuetopia_py.contrib.otel`) is asked at
job creation and around each attempt. The core knows these protocols only; nothing is
installed by default, and then `tracer()` is None and each call site skips its tracing.

- Creation: `Tracer.publish` wraps the insert of the jobs of one call; the trace context
  its `Publication` gives is stored with each job (`Job.trace_context`), and it is told
  which jobs the call returned.
- Attempt: `Tracer.attempt` starts the attempt's trace, from the job's stored context,
  before it is handed to the executor, and `AttemptTrace.end` ends it with its outcome.
  Where `perform` runs, the executor enters `AttemptTrace.current()` (this process: an
  attempt thread, an event loop's task) or sends `AttemptTrace.carried()` (picklable) to
  a worker process, which enters what calling it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from queuetopia_py._job import Job, NewJob


class Publication(Protocol):
    """The trace of one creation call."""

    @property
    def trace_context(self) -> str | None:
        """Stored with each job of the call (None: the jobs carry no trace context)."""
        ...

    def created(self, jobs: Sequence[Job], inserted: Sequence[Job]) -> None:
        """The call returned `jobs`, of which `inserted` are new (the others are the
        pending jobs that held their unique keys)."""
        ...


class AttemptTrace(Protocol):
    """The trace of one attempt."""

    def current(self) -> AbstractContextManager[object]:
        """Make the attempt's trace current in this thread or task, until exit."""
        ...

    def carried(self) -> Callable[[], AbstractContextManager[object]]:
        """What makes the attempt's trace current in another process: a picklable
        callable, whose result is entered around `perform` there."""
        ...

    def end(self, error: str | None, *, timed_out: bool = False) -> None:
        """The attempt ended: with `error` (the error recorded; None: success), timed out
        or not."""
        ...


class Tracer(Protocol):
    """What an instrumentation installs (see `install`)."""

    def publish(
        self, scope: str, node: str, news: Sequence[NewJob], *, batch: bool
    ) -> AbstractContextManager[Publication]:
        """Wrap the creation of `news` by the instance `node` of `scope` (`batch`: by
        `create_jobs`)."""
        ...

    def attempt(self, job: Job, node: str) -> AttemptTrace:
        """Start the trace of the attempt `job` (as claimed) on `node`."""
        ...


_installed: Tracer | None = None


def tracer() -> Tracer | None:
    """The installed tracer, if any."""
    return _installed


def install(new: Tracer | None) -> Tracer | None:
    """Install `new` for every instance of this process (None: none); the one it
    replaces."""
    global _installed
    old, _installed = _installed, new
    return old


def current(trace: AttemptTrace | None) -> AbstractContextManager[object]:
    """`trace.current()`, or nothing to enter without a trace."""
    return nullcontext() if trace is None else trace.current()
