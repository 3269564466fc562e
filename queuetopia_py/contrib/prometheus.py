"""Prometheus metrics of queuetopia_py (the `prometheus` extra: prometheus-client).

    from queuetopia_py.contrib.prometheus import QueuetopiaMetrics
    metrics = QueuetopiaMetrics("postgresql+psycopg://app@db/app")   # default registry
    prometheus_client.start_http_server(9100)                      # or your own /metrics

Counters and a histogram are fed by the events of every Queuetopia instance of this
process (attempts, their durations and outcomes, lock take-overs, jobs created); gauges
are read from the database when the registry is collected (pending jobs, blocked queues,
the age of the oldest due head), one short query over the queues table for every scope.
Labels are the scope, and for attempts the action and the outcome: never the queue,
whose names are dynamic and unbounded. See docs/events.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import URL, Engine

from queuetopia_py import defaults
from queuetopia_py._schema import build_tables
from queuetopia_py._store.database import Database, create_engine
from queuetopia_py.events import Event, EventKind, Subscription, subscribe

#: How an attempt ended, as `queuetopia_attempts_total`'s `outcome` label says it.
OUTCOMES = {
    EventKind.ATTEMPT_SUCCEEDED: "succeeded",
    EventKind.ATTEMPT_FAILED: "failed",
    EventKind.ATTEMPT_TIMED_OUT: "timed_out",
}
# Attempt durations, in seconds: from a no-op to the default timeout and beyond.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class QueuetopiaMetrics:
    """The metrics, registered in `registry` (default: prometheus-client's) and fed from
    then on; `close()` stops feeding them and unregisters them.

    `repo` (a URL or an Engine) is the database whose queues the gauges read, through
    the tables of `prefix`.
    """

    def __init__(
        self,
        repo: str | URL | Engine,
        *,
        prefix: str = defaults.TABLE_PREFIX,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.registry = registry
        self.attempts = Counter(
            "queuetopia_attempts",
            "Attempts of jobs that ended, by scope, action and outcome"
            " (succeeded, failed, timed_out).",
            ["scope", "action", "outcome"],
            registry=None,
        )
        self.attempt_duration = Histogram(
            "queuetopia_attempt_duration_seconds",
            "How long attempts ran, by scope, action and outcome.",
            ["scope", "action", "outcome"],
            buckets=_BUCKETS,
            registry=None,
        )
        self.jobs_created = Counter(
            "queuetopia_jobs_created",
            "Jobs created by this process, by scope.",
            ["scope"],
            registry=None,
        )
        self.takeovers = Counter(
            "queuetopia_lock_takeovers",
            "Queues this process took over after their lock expired under another claim"
            " (a node died, or an attempt outlived its lock), by scope.",
            ["scope"],
            registry=None,
        )
        self._owns_engine = not isinstance(repo, Engine)
        engine = repo if isinstance(repo, Engine) else create_engine(repo)
        self._queues = _QueueGauges(Database(engine, build_tables(prefix)))
        self._collectors: list[Collector] = [
            self.attempts,
            self.attempt_duration,
            self.jobs_created,
            self.takeovers,
            self._queues,
        ]
        for collector in self._collectors:
            registry.register(collector)
        self._subscription: Subscription | None = subscribe(self.observe)

    def observe(self, event: Event) -> None:
        """Count `event` (called for every event of the process)."""
        outcome = OUTCOMES.get(event.kind)
        if outcome is not None and event.job is not None:
            labels = (event.scope, event.job.action, outcome)
            self.attempts.labels(*labels).inc()
            if event.duration is not None:
                self.attempt_duration.labels(*labels).observe(event.duration)
        elif event.kind is EventKind.JOB_CREATED:
            self.jobs_created.labels(event.scope).inc()
        elif event.kind is EventKind.LOCK_TAKEN_OVER:
            self.takeovers.labels(event.scope).inc()

    def close(self) -> None:
        """Stop counting, unregister the metrics, and release the database connections."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
            for collector in self._collectors:
                self.registry.unregister(collector)
            if self._owns_engine:
                self._queues.db.engine.dispose()


class _QueueGauges(Collector):
    """The gauges read from the queues table when the registry is collected."""

    def __init__(self, db: Database) -> None:
        self.db = db
        queues = db.tables.queues
        now = sa.bindparam("b_now", type_=queues.c.head_due.type)
        free = sa.or_(queues.c.locked_until.is_(None), queues.c.locked_until <= now)
        waiting = sa.and_(queues.c.head_due <= now, free)
        self._query = sa.select(
            queues.c.scope,
            sa.func.sum(queues.c.pending),
            sa.func.count(queues.c.blocked_since),
            sa.func.min(sa.case((waiting, queues.c.head_due))),
        ).group_by(queues.c.scope)

    def describe(self) -> list[Metric]:
        """The gauges' names, without reading the database (at registration)."""
        return [family for family in _families()]

    def collect(self) -> Iterator[Metric]:
        pending, blocked, oldest = _families()
        with self.db.engine.connect() as conn:
            now: datetime = conn.execute(sa.select(self.db.now())).scalar_one()
            rows: list[Any] = list(conn.execute(self._query, {"b_now": now}))
        for scope, count, blocked_count, due in rows:
            pending.add_metric([scope], float(count or 0))
            blocked.add_metric([scope], float(blocked_count or 0))
            age = 0.0 if due is None else max(0.0, (now - due).total_seconds())
            oldest.add_metric([scope], age)
        yield from (pending, blocked, oldest)


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            "queuetopia_jobs_pending",
            "Jobs waiting, retrying, blocked or running (not done, not ended), by scope.",
            labels=["scope"],
        ),
        GaugeMetricFamily(
            "queuetopia_queues_blocked",
            "Queues whose head job is failing, by scope.",
            labels=["scope"],
        ),
        GaugeMetricFamily(
            "queuetopia_oldest_due_age_seconds",
            "How long the oldest due head that no node runs has been due (0: none), by scope.",
            labels=["scope"],
        ),
    )
