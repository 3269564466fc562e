"""queuetopia_py.contrib.otel, on each database: the PRODUCER span of a creation and the
trace context each job carries from it; the CONSUMER span of each attempt, a child of
that span, current where `perform` runs (an attempt thread, an event loop's task, a
worker process) and in another process than the one that created the job; and nothing
of it without tracing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from queuetopia_py import Job, JobGivenUpError, Performer, Queuetopia, _tracing
from queuetopia_py.contrib.otel import instrument
from queuetopia_py.testing import drain

SCOPE = "otel"


class Traced:
    """An SDK tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """The finished spans (named `name`), in the order they ended."""
        spans = self.exporter.get_finished_spans()
        return [s for s in spans if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.spans(name)
        return span


@pytest.fixture
def traced() -> Iterator[Traced]:
    """This process traced, for the test, with an in-memory exporter."""
    made = Traced()
    with instrument(tracer_provider=made.provider):
        yield made


def _context(span: ReadableSpan) -> SpanContext:
    assert span.context is not None
    return span.context


def _parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _traceparent(span: ReadableSpan) -> str:
    """The W3C traceparent of `span`."""
    context = _context(span)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _ids(context: SpanContext | None) -> tuple[int, int] | None:
    """Which span `context` is (wherever it was read: here, or extracted from a job)."""
    return None if context is None else (context.trace_id, context.span_id)


def _carried(queue: Queuetopia, job: Job) -> str | None:
    """The traceparent stored with `job`, as read back from the database."""
    stored = queue.get_job(job.id)
    assert stored is not None
    if stored.trace_context is None:
        return None
    return str(json.loads(stored.trace_context)["traceparent"])


# -- creation ----------------------------------------------------------------------------


def test_a_job_created_in_a_span_carries_the_context_of_its_send_span(
    traced: Traced, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = make_queue(scope=SCOPE)
    with traced.tracer.start_as_current_span("request") as request:
        job = queue.create_job("mails", "send_mail", {"to": "a@b.c"})
    send = traced.one("send mails")
    assert send.kind is SpanKind.PRODUCER
    assert _parent_id(send) == request.get_span_context().span_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "queuetopia",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "mails",
        "messaging.message.id": str(job.id),
        "messaging.client.id": queue.node,
        "queuetopia.scope": SCOPE,
        "queuetopia.action": "send_mail",
    }
    assert job.trace_context is not None
    assert json.loads(job.trace_context) == {"traceparent": _traceparent(send)}
    assert _carried(queue, job) == _traceparent(send)


def test_every_way_of_creating_jobs_stores_the_context_of_its_send_span(
    traced: Traced, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = make_queue(scope=SCOPE)

    async def create_awaiting() -> tuple[Job, list[Job]]:
        one = await queue.acreate_job("e", "a", {})
        many = await queue.acreate_jobs([{"queue": "e", "action": "a", "params": {}}] * 2)
        await queue.astop()  # closes the connections of this loop
        return one, many

    with traced.tracer.start_as_current_span("request"):
        # PostgreSQL: one unnest insert; elsewhere one executemany.
        batch = queue.create_jobs(
            [{"queue": q, "action": "a", "params": {"i": i}} for i, q in enumerate("aba")]
        )
        with queue.engine.begin() as conn:  # PostgreSQL: the insert, count and NOTIFY at once
            joined = queue.create_job("c", "a", {}, connection=conn)
        keyed = queue.create_job("d", "a", {}, unique_key="k")
        held = queue.create_job("d", "a", {"again": True}, unique_key="k")
        one, many = asyncio.run(create_awaiting())
    sends = [s for s in traced.spans() if s.kind is SpanKind.PRODUCER]
    assert [s.name for s in sends] == ["send", "send c", "send d", "send d", "send e", "send e"]
    for span, jobs in zip(sends, [batch, [joined], [keyed], [], [one], many], strict=True):
        for job in jobs:
            assert _carried(queue, job) == _traceparent(span), (span.name, job)
    attributes = [dict(s.attributes or {}) for s in sends]
    # A batch across queues names none; a batch counts its jobs and names no job.
    assert "messaging.destination.name" not in attributes[0]
    assert attributes[0]["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in attributes[0]
    assert attributes[5]["messaging.batch.message_count"] == 2
    # The job that held the key stands for the new one: its id, and its own context.
    assert held.id == keyed.id and held.trace_context == keyed.trace_context
    assert attributes[3]["messaging.message.id"] == str(keyed.id)
    assert attributes[3]["queuetopia.deduplicated"] is True
    assert attributes[3]["queuetopia.unique_key"] == "k"
    assert "queuetopia.deduplicated" not in attributes[2]


class Noop(Performer):
    """Succeeds at once."""

    def perform(self, job: Job) -> object:
        return None


def test_jobs_created_outside_any_span_carry_no_context_and_start_a_trace_of_their_own(
    traced: Traced, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = make_queue(scope=SCOPE, performer=Noop)
    job = queue.create_job("mails", "send_mail", {})
    [other] = queue.create_jobs([{"queue": "mails", "action": "send_mail", "params": {}}])
    assert job.trace_context is None and other.trace_context is None
    assert _carried(queue, job) is None and _carried(queue, other) is None
    assert traced.spans() == []  # no send span outside a trace
    drain(queue)
    processes = traced.spans("process mails")
    assert len(processes) == 2
    for process in processes:
        assert process.parent is None and list(process.links) == []
    assert len({_context(p).trace_id for p in processes}) == 2


def test_untraced_inserts_do_not_name_the_trace_context_column(
    make_queue: Callable[..., Queuetopia],
) -> None:
    queue = make_queue(scope=SCOPE)
    inserts: list[str] = []

    @sa.event.listens_for(queue.engine, "before_cursor_execute")
    def keep(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "INSERT INTO" in statement.upper() and "jobs" in statement:
            inserts.append(statement)

    def create_every_way() -> None:
        queue.create_job("q", "a", {})
        queue.create_jobs([{"queue": "q", "action": "a", "params": {}}] * 3)
        queue.create_job("q", "a", {}, unique_key="k")
        with queue.engine.begin() as conn:
            queue.create_job("q", "a", {}, connection=conn)

    assert _tracing.tracer() is None
    create_every_way()  # not instrumented
    with instrument(tracer_provider=TracerProvider()) as instrumentation:
        create_every_way()  # instrumented, outside any span
        assert inserts and not [s for s in inserts if "trace_context" in s]
        assert {j.trace_context for j in queue.list_jobs()} == {None}
        tracer = instrumentation.tracer_provider.get_tracer("tests")  # type: ignore[union-attr]
        with tracer.start_as_current_span("request"):
            queue.create_job("q", "a", {})
        assert "trace_context" in inserts[-1]


NOT_INSTRUMENTED = """
import json, sys
from queuetopia_py import Job, Performer, Queuetopia
from queuetopia_py.testing import drain

class Noop(Performer):
    def perform(self, job):
        return "ok"

queue = Queuetopia(repo=sys.argv[1], scope="untraced", performer=Noop)
queue.create_job("q", "a", {})
queue.create_jobs([{"queue": "q", "action": "a", "params": {}}] * 2)
assert [job.result for job in drain(queue)] == ["ok"] * 3
assert {job.trace_context for job in queue.list_jobs()} == {None}
queue.stop()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))
"""


def test_without_instrumentation_nothing_of_opentelemetry_is_imported(url: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", NOT_INSTRUMENTED, url], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout) == []


# -- attempts ----------------------------------------------------------------------------


class SpanRecorder(Performer):
    """Records the span current in `perform`, and makes a span of its own there."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.seen: list[SpanContext] = []

    def perform(self, job: Job) -> object:
        self.seen.append(trace.get_current_span().get_span_context())
        with self.tracer.start_as_current_span("smtp"):
            return None


class AsyncSpanRecorder(SpanRecorder):
    """`SpanRecorder`, with an `async def perform`: a task of the node's event loop."""

    async def perform(self, job: Job) -> object:  # type: ignore[override]
        await asyncio.sleep(0)
        self.seen.append(trace.get_current_span().get_span_context())
        with self.tracer.start_as_current_span("smtp"):
            await asyncio.sleep(0)
        return None


@pytest.mark.parametrize("recorder", [SpanRecorder, AsyncSpanRecorder], ids=["thread", "async"])
def test_an_attempt_is_a_consumer_span_child_of_the_send_span_and_current_in_perform(
    traced: Traced, make_queue: Callable[..., Queuetopia], recorder: type[SpanRecorder]
) -> None:
    performer = recorder(traced.tracer)
    queue = make_queue(scope=SCOPE, performer=performer, poll_interval=0.2)
    with traced.tracer.start_as_current_span("request"):
        job = queue.create_job("mails", "send_mail", {})
    queue.start()
    queue.wait_for(job.id, timeout=30)
    send, process, smtp = traced.one("send mails"), traced.one("process mails"), traced.one("smtp")
    assert process.kind is SpanKind.CONSUMER
    assert _context(process).trace_id == _context(send).trace_id
    assert _parent_id(process) == _context(send).span_id
    assert [_ids(link.context) for link in process.links] == [_ids(send.context)]
    assert dict(process.attributes or {}) == {
        "messaging.system": "queuetopia",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mails",
        "messaging.message.id": str(job.id),
        "messaging.client.id": queue.node,
        "queuetopia.scope": SCOPE,
        "queuetopia.action": "send_mail",
        "queuetopia.attempt": 1,
        "queuetopia.outcome": "succeeded",
    }
    assert process.status.status_code is StatusCode.UNSET
    assert [_ids(seen) for seen in performer.seen] == [_ids(process.context)]
    assert _parent_id(smtp) == _context(process).span_id


class WorkerSpans(Performer):
    """In a worker process: the ids of the current span, the parent of a span made there
    (with a tracer provider of the worker's own) and the job's baggage."""

    def perform(self, job: Job) -> object:
        current = trace.get_current_span().get_span_context()
        with TracerProvider().get_tracer("worker").start_as_current_span("smtp") as span:
            parent = span.parent  # type: ignore[attr-defined]
        return {
            "pid": os.getpid(),
            "trace_id": current.trace_id,
            "span_id": current.span_id,
            "child_of": None if parent is None else parent.span_id,
            "tenant": baggage.get_baggage("tenant"),
        }


def test_in_a_worker_process_the_attempts_span_is_current_in_perform(
    traced: Traced, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = make_queue(scope=SCOPE, performer=WorkerSpans, executor="process", poll_interval=0.2)
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with traced.tracer.start_as_current_span("request"):
            job = queue.create_job("mails", "send_mail", {})
    finally:
        otel_context.detach(token)
    queue.start()
    seen = queue.wait_for(job.id, timeout=60)
    send, process = traced.one("send mails"), traced.one("process mails")
    assert _parent_id(process) == _context(send).span_id
    assert seen["pid"] != os.getpid()
    assert (seen["trace_id"], seen["span_id"]) == (
        _context(process).trace_id,
        _context(process).span_id,
    )
    assert seen["child_of"] == _context(process).span_id
    assert seen["tenant"] == "acme"  # the whole context crossed: its baggage too


class MailServerDown(Exception):
    """What `Failing` raises."""


class Failing(Performer):
    """Fails every attempt; retries at once."""

    def perform(self, job: Job) -> object:
        raise MailServerDown("mail server down")

    def backoff(self, job: Job) -> timedelta:
        return timedelta(0)


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_failed_attempts_span_has_status_error_and_the_exception(
    traced: Traced, make_queue: Callable[..., Queuetopia], executor: str
) -> None:
    queue = make_queue(scope=SCOPE, performer=Failing, executor=executor, poll_interval=0.2)
    with traced.tracer.start_as_current_span("request"):
        job = queue.create_job("mails", "send_mail", {}, max_attempts=2)
    queue.start()
    with pytest.raises(JobGivenUpError):
        queue.wait_for(job.id, timeout=60)
    send = traced.one("send mails")
    processes = traced.spans("process mails")
    assert [(p.attributes or {})["queuetopia.attempt"] for p in processes] == [1, 2]
    raised = f"{MailServerDown.__module__}.{MailServerDown.__qualname__}"
    for process in processes:
        assert _parent_id(process) == _context(send).span_id
        assert process.status.status_code is StatusCode.ERROR
        assert process.status.description == f"{raised}: mail server down"
        attributes = process.attributes or {}
        assert (attributes["error.type"], attributes["queuetopia.outcome"]) == (raised, "failed")
        (event,) = process.events
        assert event.name == "exception"
        details = dict(event.attributes or {})
        assert (details["exception.type"], details["exception.message"]) == (
            raised,
            "mail server down",
        )
        stacktrace = str(details["exception.stacktrace"])
        assert stacktrace.startswith("Traceback") and 'raise MailServerDown("mail' in stacktrace


class Blocking(Performer):
    """Blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def perform(self, job: Job) -> object:
        self.release.wait(60)
        return None


def test_a_timed_out_attempts_span_has_status_error_and_the_timeout(
    traced: Traced, make_queue: Callable[..., Queuetopia]
) -> None:
    performer = Blocking()
    queue = make_queue(scope=SCOPE, performer=performer, poll_interval=0.2)
    with traced.tracer.start_as_current_span("request"):
        job = queue.create_job("mails", "send_mail", {}, timeout=0.3, max_attempts=1)
    queue.start()
    try:
        with pytest.raises(JobGivenUpError):
            queue.wait_for(job.id, timeout=30)
    finally:
        performer.release.set()
    process = traced.one("process mails")
    assert process.status.status_code is StatusCode.ERROR
    attributes = process.attributes or {}
    assert (attributes["error.type"], attributes["queuetopia.outcome"]) == (
        "job_timeout",
        "timed_out",
    )
    (event,) = process.events
    assert (event.name, dict(event.attributes or {})) == (
        "exception",
        {"exception.type": "job_timeout"},
    )


def test_an_attempt_in_another_process_joins_the_trace_of_the_request_that_created_its_job(
    traced: Traced, make_queue: Callable[..., Queuetopia], url: str, tmp_path: Path
) -> None:
    queue = make_queue(scope="otel-elsewhere")
    with traced.tracer.start_as_current_span("request"):
        job = queue.create_job("mails", "send_mail", {})
    send = traced.one("send mails")
    out = tmp_path / "spans.json"
    node = Path(__file__).with_name("otel_node.py")
    finished = subprocess.run(
        [sys.executable, str(node), url, queue.scope, str(job.id), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    spans = json.loads(out.read_text())
    (process,) = [s for s in spans if s["name"] == "process mails"]
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == f"0x{_context(send).trace_id:032x}"
    assert process["parent_id"] == f"0x{_context(send).span_id:016x}"
    assert process["attributes"]["messaging.message.id"] == str(job.id)


def test_with_tracing_uninstrumented_jobs_and_attempts_are_untraced_again(
    make_queue: Callable[..., Queuetopia],
) -> None:
    made = Traced()
    queue = make_queue(scope=SCOPE, performer=Noop)
    with instrument(tracer_provider=made.provider):
        pass
    with made.tracer.start_as_current_span("request"):
        job = queue.create_job("mails", "send_mail", {})
    drain(queue)
    assert job.trace_context is None
    assert [s.name for s in made.spans()] == ["request"]
    assert _tracing.tracer() is None
