"""Events: what subscribers receive, in which order, with which fields; the built-in
logging subscriber; subscribers that fail."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from recording import Recorder, wait_until

from queuetopia_py import Event, EventKind, Job
from queuetopia_py.events import subscribe
from queuetopia_py.testing import drain


def kinds(events: list[Event], job_id: int | None = None) -> list[str]:
    return [e.kind.value for e in events if job_id is None or e.job_id == job_id]


def test_the_life_of_a_job_is_told_by_its_events(make_queue: Callable) -> None:
    def behaviour(job: Job) -> None:
        if job.attempts == 1:
            raise RuntimeError("first attempt fails")

    queue = make_queue(performer=Recorder(behaviour), node="n1")
    events: list[Event] = []
    queue.subscribe(events.append)
    job = queue.create_job("q", "a", {}, max_backoff=0)
    drain(queue)
    assert kinds(events, job.id) == [
        "job_created",
        "attempt_started",
        "attempt_failed",
        "attempt_started",
        "attempt_succeeded",
    ]
    failed, succeeded = events[2], events[4]
    assert failed.attempt == 1 and "first attempt fails" in (failed.error or "")
    assert succeeded.attempt == 2 and succeeded.job is not None and succeeded.job.done
    assert all(e.duration is not None and e.duration >= 0 for e in (failed, succeeded))
    assert all(e.scope == queue.scope and e.node == "n1" and e.queue == "q" for e in events)


def test_timeouts_give_ups_and_operator_actions_have_their_events(make_queue: Callable) -> None:
    stop = threading.Event()
    queue = make_queue(
        performer=Recorder(lambda job: stop.wait(5) if job.queue == "slow" else 1 / 0)
    )
    events: list[Event] = []
    queue.subscribe(events.append)
    slow = queue.create_job("slow", "a", {}, timeout=0.2, max_attempts=1)
    broken = queue.create_job("broken", "a", {}, max_attempts=1)
    queue.start()
    wait_until(
        lambda: {"attempt_timed_out", "job_given_up"} <= set(kinds(events, slow.id)), 20, "timeout"
    )
    stop.set()
    wait_until(lambda: "job_given_up" in kinds(events, broken.id), 20, "broken given up")
    queue.stop()
    assert any("ZeroDivisionError" in (e.error or "") for e in events if e.job_id == broken.id)
    pending = queue.create_job("later", "a", {})
    queue.suspend("later", by="ops", reason="why not")
    queue.resume("later", by="ops")
    queue.retry_job(broken.id, by="ops", reason="fixed")
    queue.abort_job(broken.id, by="ops")
    queue.cancel_job(pending.id, by="ops")
    tail = events[-5:]
    assert [e.kind for e in tail] == [
        EventKind.QUEUE_SUSPENDED,
        EventKind.QUEUE_RESUMED,
        EventKind.JOB_RETRIED,
        EventKind.JOB_ABORTED,
        EventKind.JOB_CANCELLED,
    ]
    assert tail[0].reason == "why not" and all(e.by == "ops" for e in tail)
    assert tail[0].queue == "later" and tail[0].job is None


def test_a_failing_subscriber_is_logged_and_others_still_get_the_event(
    make_queue: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue()
    got: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    queue.subscribe(broken)
    queue.subscribe(got.append)
    with caplog.at_level(logging.ERROR, logger="queuetopia_py.events"):
        job = queue.create_job("q", "a", {})
    assert kinds(got) == ["job_created"] and queue.get_job(job.id) is not None
    assert any("subscriber" in r.getMessage() for r in caplog.records)


def test_subscriptions_filter_by_kind_and_end_when_closed(make_queue: Callable) -> None:
    queue = make_queue(performer=Recorder())
    created: list[Event] = []
    with queue.subscribe(created.append, kinds=["job_created"]):
        queue.create_job("q", "a", {})
        drain(queue)
    queue.create_job("q", "a", {})
    assert kinds(created) == ["job_created"]
    with pytest.raises(ValueError):
        queue.subscribe(created.append, kinds=["no_such_kind"])


def test_process_wide_subscribers_hear_every_instance(make_queue: Callable) -> None:
    heard: list[Event] = []
    with subscribe(heard.append, kinds=[EventKind.JOB_CREATED]):
        make_queue(scope="a").create_job("q", "x", {})
        make_queue(scope="b").create_job("q", "x", {})
    assert sorted(e.scope for e in heard) == ["a", "b"]


def test_the_library_logs_each_event_with_structured_fields(
    make_queue: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(performer=Recorder(lambda job: 1 / 0), node="n1")
    job = queue.create_job("q", "a", {}, max_attempts=1)
    with caplog.at_level(logging.DEBUG, logger="queuetopia_py"):
        drain(queue)
    records = {r.event: r for r in caplog.records if hasattr(r, "event")}
    assert set(records) >= {"attempt_started", "attempt_failed", "job_given_up"}
    given_up = records["job_given_up"]
    assert given_up.levelno == logging.ERROR
    assert (given_up.job_id, given_up.queue, given_up.node) == (job.id, "q", "n1")
    assert given_up.error.startswith("ZeroDivisionError")
    assert records["attempt_failed"].levelno == logging.WARNING
    assert isinstance(records["attempt_failed"].duration, float)


def test_a_job_created_in_the_callers_transaction_is_announced_only_once_committed(
    make_queue: Callable,
) -> None:
    queue = make_queue()
    created: list[Event] = []
    queue.subscribe(created.append, kinds=[EventKind.JOB_CREATED])
    with queue.engine.connect() as conn:
        kept = queue.create_job("q", "a", {"i": 1}, connection=conn)
        conn.commit()
        queue.create_job("q", "a", {"i": 2}, connection=conn)
        conn.rollback()
    wait_until(lambda: len(created) == 1, 10, "committed job announced")
    # Proving a non-event: the announcer stops looking 2 s after the commit.
    time.sleep(2.5)
    assert [e.job_id for e in created] == [kept.id]


def test_a_queue_taken_over_from_a_dead_node_tells_so_before_its_attempt(
    make_queue: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import UTC, datetime, timedelta

    from queuetopia_py._store.claims import ClaimStore
    from queuetopia_py._store.locks import Claim

    recorder = Recorder()
    queue = make_queue(performer=recorder, node="n1", poll_interval=0.2)
    events: list[Event] = []
    queue.subscribe(events.append)
    job = queue.create_job("q", "a", {})
    ordinary = queue.create_job("other", "a", {})
    # Another node claims the queue and dies: its lock expires.
    assert isinstance(ClaimStore(queue._db, queue.scope, "dead").claim("q"), Claim)
    queues = queue._db.tables.queues
    with queue.engine.begin() as conn:
        conn.execute(
            queues.update()
            .where(queues.c.queue == "q")
            .values(locked_until=datetime.now(UTC) - timedelta(hours=1))
        )
    with caplog.at_level(logging.WARNING, logger="queuetopia_py"):
        queue.start()
        recorder.wait(lambda r: len(r.finished) == 2)
        queue.stop()
    assert kinds(events, job.id) == [
        "job_created",
        "lock_taken_over",
        "attempt_started",
        "attempt_succeeded",
    ]
    assert kinds(events, ordinary.id) == ["job_created", "attempt_started", "attempt_succeeded"]
    assert any(r.getMessage().startswith("lock taken over: job") for r in caplog.records)
