"""queuetopia_py.contrib.prometheus: the metrics' names and values after a known
workload, on each database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from recording import Recorder

from queuetopia_py import Job, Queuetopia
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Claim
from queuetopia_py.contrib.prometheus import QueuetopiaMetrics

SCOPE = "metrics"


@pytest.fixture
def metrics(url: str) -> Iterator[tuple[QueuetopiaMetrics, CollectorRegistry]]:
    registry = CollectorRegistry()
    made = QueuetopiaMetrics(url, registry=registry)
    yield made, registry
    made.close()


def test_the_metrics_after_a_known_workload(
    metrics: tuple[QueuetopiaMetrics, CollectorRegistry], make_queue: Callable[..., Queuetopia]
) -> None:
    _, registry = metrics

    def behaviour(job: Job) -> None:
        if job.action == "fail":
            raise RuntimeError("no")

    recorder = Recorder(behaviour)
    node = make_queue(scope=SCOPE, performer=recorder, poll_interval=0.2, max_backoff=3600)
    for i in range(3):
        node.create_job("ok", "send", {"i": i})
    node.create_job("bad", "fail", {})
    node.create_job("bad", "send", {})
    node.create_job("bad", "send", {})
    # A job no node of its scope runs, due for a minute.
    idle = make_queue(scope="idle")
    idle.create_job("q", "a", {}, scheduled_at=datetime.now(UTC) - timedelta(minutes=1))
    node.start()
    recorder.wait(lambda r: len(r.failed) == 1 and len(r.finished) == 4)
    node.stop()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    succeeded = {"scope": SCOPE, "action": "send", "outcome": "succeeded"}
    failed = {"scope": SCOPE, "action": "fail", "outcome": "failed"}
    assert value("queuetopia_attempts_total", **succeeded) == 3
    assert value("queuetopia_attempts_total", **failed) == 1
    assert value("queuetopia_attempt_duration_seconds_count", **succeeded) == 3
    assert value("queuetopia_attempt_duration_seconds_count", **failed) == 1
    assert value("queuetopia_jobs_created_total", scope=SCOPE) == 6
    assert value("queuetopia_jobs_created_total", scope="idle") == 1
    assert value("queuetopia_jobs_pending", scope=SCOPE) == 3
    assert value("queuetopia_queues_blocked", scope=SCOPE) == 1
    assert value("queuetopia_oldest_due_age_seconds", scope=SCOPE) == 0  # waits for its retry
    assert value("queuetopia_jobs_pending", scope="idle") == 1
    assert (value("queuetopia_oldest_due_age_seconds", scope="idle") or 0) >= 60
    labels = {name for family in registry.collect() for s in family.samples for name in s.labels}
    assert labels <= {"scope", "action", "outcome", "le"}  # never a queue


def test_a_lock_taken_over_is_counted(
    metrics: tuple[QueuetopiaMetrics, CollectorRegistry], make_queue: Callable[..., Queuetopia]
) -> None:
    _, registry = metrics
    recorder = Recorder()
    node = make_queue(scope=SCOPE, performer=recorder, poll_interval=0.2)
    job = node.create_job("q", "a", {})
    # A node claims the queue and dies: its lock expires.
    assert isinstance(ClaimStore(node._db, SCOPE, "dead").claim("q"), Claim)
    queues = node._db.tables.queues
    with node.engine.begin() as conn:
        conn.execute(queues.update().values(locked_until=datetime.now(UTC) - timedelta(hours=1)))
    node.start()
    recorder.wait(lambda r: [j.id for j in r.finished] == [job.id])
    node.stop()
    assert registry.get_sample_value("queuetopia_lock_takeovers_total", {"scope": SCOPE}) == 1


def test_closed_metrics_count_nothing_more_and_leave_the_registry(
    url: str, make_queue: Callable[..., Queuetopia]
) -> None:
    registry = CollectorRegistry()
    metrics = QueuetopiaMetrics(sa.create_engine(url), registry=registry)
    queue = make_queue(scope=SCOPE)
    queue.create_job("q", "a", {})
    metrics.close()
    queue.create_job("q", "a", {})
    assert list(registry.collect()) == []
    assert metrics.jobs_created.labels(SCOPE)._value.get() == 1
