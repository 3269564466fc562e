"""OpenTelemetry traces of queuetopia_py (the `otel` extra: opentelemetry-api; the
application brings the SDK and its exporters).

    from queuetopia_py.contrib.otel import instrument
    instrument()                        # or instrument(tracer_provider=provider)

From then on, every Queuetopia instance of this process traces, after OpenTelemetry's
messaging semantic conventions:

- `send <queue>` (PRODUCER): a `create_job` or `create_jobs` call (and their awaitable
  forms) made while a span is current, one span per call. Its context is stored with
  each job it creates (`Job.trace_context`). A call made outside any trace makes no span,
  and its jobs carry no context.
- `process <queue>` (CONSUMER): each attempt of a job, wherever it runs, as a child of
  the span that created the job (and linked to it), ended when the attempt ends; its
  status is ERROR, with an `exception` event, when the attempt failed or timed out. It
  is the current span while `perform` runs: on an attempt thread, as a task of an event
  loop (`async def perform`), and in a worker process (`executor="process"`), so the
  spans `perform` makes are its children.

See docs/tracing.md for the attributes.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import queuetopia_py
from queuetopia_py import _tracing
from queuetopia_py._job import Job, NewJob, error_line

__all__ = ["SYSTEM", "Instrumentation", "instrument"]

#: The `messaging.system` of every span.
SYSTEM = "queuetopia"

# From a node to its worker processes, the attempt's context goes as W3C trace context
# and baggage, whatever propagator the application set (the worker may not set one).
_TO_WORKER = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
# The last line of a stored Python traceback: the exception's type, and its message.
_EXCEPTION_LINE = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?:: (?P<message>.*))?")


@contextmanager
def _attached(context: Context) -> Iterator[None]:
    """`context` current in this thread or task until exit."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def _span_name(operation: str, queue: str | None) -> str:
    return operation if queue is None else f"{operation} {queue}"


def _attributes(operation: str, scope: str, node: str, queue: str | None) -> dict[str, Any]:
    """The attributes of the spans of both sides."""
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.client.id": node,
        "queuetopia.scope": scope,
    }
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    return attributes


def _extracted(trace_context: str | None) -> Context:
    """The context a job carries (an empty one for a job without, or with one that does
    not parse): never the context of the thread that claimed it."""
    carrier: Any = None
    if trace_context is not None:
        with suppress(ValueError):
            carrier = json.loads(trace_context)
    if not isinstance(carrier, dict):
        return Context()
    return propagate.extract({str(k): str(v) for k, v in carrier.items()}, context=Context())


def _injected() -> str | None:
    """The current context, as a job stores it (None: nothing to carry)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":"), sort_keys=True) if carrier else None


def _failure(error: str) -> tuple[str, dict[str, str]]:
    """The `error.type` of an attempt that failed with `error` (as stored in the job) and
    the attributes of its `exception` event: the type and message of the exception a
    stored traceback ends with, or queuetopia's error (`job_timeout`,
    `lock_lease_lapsed`); `_OTHER` when the error names no type."""
    line = error_line(error)
    found = _EXCEPTION_LINE.fullmatch(line)
    if found is None:
        return "_OTHER", {"exception.message": line}
    event = {"exception.type": found["type"]}
    if found["message"]:
        event["exception.message"] = found["message"]
    if error.startswith("Traceback ("):
        event["exception.stacktrace"] = error
    return found["type"], event


@dataclass(frozen=True, slots=True)
class _Publication:
    """The PRODUCER span of one creation call (None: the call was made outside a trace)."""

    span: trace.Span | None
    trace_context: str | None

    def created(self, jobs: Sequence[Job], inserted: Sequence[Job]) -> None:
        if self.span is None or len(jobs) != 1:
            return
        self.span.set_attribute("messaging.message.id", str(jobs[0].id))
        if not inserted:  # the pending job that holds the key stands for the new one
            self.span.set_attribute("queuetopia.deduplicated", True)


_UNTRACED = _Publication(None, None)


@dataclass(frozen=True, slots=True)
class _Carried:
    """What makes an attempt's span current in a worker process. Pickled by reference,
    it makes the worker import this module when it first gets an attempt to trace,
    whichever way the worker was started (`spawn` shares no module state)."""

    carrier: dict[str, str]

    def __call__(self) -> AbstractContextManager[None]:
        return _attached(_TO_WORKER.extract(self.carrier, context=Context()))


class _Attempt:
    """The CONSUMER span of one attempt, and the context it is current in (the job's
    baggage included)."""

    def __init__(self, span: trace.Span, context: Context) -> None:
        self.span = span
        self.context = context

    def current(self) -> AbstractContextManager[None]:
        return _attached(self.context)

    def carried(self) -> _Carried:
        carrier: dict[str, str] = {}
        _TO_WORKER.inject(carrier, context=self.context)
        return _Carried(carrier)

    def end(self, error: str | None, *, timed_out: bool = False) -> None:
        span = self.span
        if error is None:
            span.set_attribute("queuetopia.outcome", "succeeded")
        else:
            kind, event = _failure(error)
            span.set_attribute("queuetopia.outcome", "timed_out" if timed_out else "failed")
            span.set_attribute("error.type", kind)
            span.add_event("exception", event)
            span.set_status(Status(StatusCode.ERROR, error_line(error)))
        span.end()


class _Tracer:
    """The `_tracing.Tracer` that makes the spans."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    @contextmanager
    def publish(
        self, scope: str, node: str, news: Sequence[NewJob], *, batch: bool
    ) -> Iterator[_Publication]:
        if not trace.get_current_span().get_span_context().is_valid:
            yield _UNTRACED
            return
        queues = {new.queue for new in news}
        queue = next(iter(queues)) if len(queues) == 1 else None
        attributes = _attributes("send", scope, node, queue)
        actions = {new.action for new in news}
        if len(actions) == 1:
            attributes["queuetopia.action"] = next(iter(actions))
        if batch:
            attributes["messaging.batch.message_count"] = len(news)
        if len(news) == 1 and news[0].unique_key is not None:
            attributes["queuetopia.unique_key"] = news[0].unique_key
        with self.tracer.start_as_current_span(
            _span_name("send", queue), kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            yield _Publication(span, _injected())

    def attempt(self, job: Job, node: str) -> _Attempt:
        parent = _extracted(job.trace_context)
        creation = trace.get_current_span(parent).get_span_context()
        attributes = _attributes("process", job.scope, node, job.queue)
        attributes["messaging.message.id"] = str(job.id)
        attributes["queuetopia.action"] = job.action
        attributes["queuetopia.attempt"] = job.attempts
        span = self.tracer.start_span(
            _span_name("process", job.queue),
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(creation)] if creation.is_valid else None,
        )
        return _Attempt(span, trace.set_span_in_context(span, parent))


class Instrumentation:
    """The tracing of every Queuetopia instance of this process, from `instrument()`
    until `uninstrument()` (or the end of a `with` block).

    >>> with instrument(tracer_provider=provider):
    ...     queue.create_job("mails", "send_mail", {"to": "a@b.c"})
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None) -> None:
        #: The provider the spans are made with (None: the global one, when they are made).
        self.tracer_provider = tracer_provider
        self._tracer = _Tracer(
            trace.get_tracer("queuetopia_py", queuetopia_py.__version__, tracer_provider)
        )

    @property
    def instrumented(self) -> bool:
        """Whether these spans are being made (no later `instrument` call replaced them,
        and `uninstrument` was not called)."""
        return _tracing.tracer() is self._tracer

    def uninstrument(self) -> None:
        """Stop tracing (idempotent). Attempts running go on with their spans."""
        with _lock:
            if _tracing.tracer() is self._tracer:
                _tracing.install(None)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstrument()


_lock = threading.Lock()
_instrumentation: Instrumentation | None = None


def instrument(tracer_provider: trace.TracerProvider | None = None) -> Instrumentation:
    """Trace every Queuetopia instance of this process with `tracer_provider` (None:
    the global provider, as set now or later); return the `Instrumentation`.

    Idempotent: while instrumented with the same provider, it returns the same
    `Instrumentation`; with another, that one replaces it. Worker processes
    (`executor="process"`) need no call: each attempt brings its context.

    >>> from queuetopia_py.contrib.otel import instrument
    >>> instrument()
    """
    global _instrumentation
    with _lock:
        current = _instrumentation
        if (
            current is not None
            and current.instrumented
            and current.tracer_provider is tracer_provider
        ):
            return current
        current = _instrumentation = Instrumentation(tracer_provider)
        _tracing.install(current._tracer)
        return current
