"""Read-only statements for operators and tools: a scope's status, the scopes present.

Their cost follows what they return: `status` reads a page of the queues table and the
page's heads by key, never the jobs' history; `known_scopes` reads each table's distinct
scopes by skipping through the index that leads with the scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queuetopia_py._job import OUTCOMES, JobState, JobSummary
from queuetopia_py._status import Lock, QueueStatus, RunningAttempt, Status, Suspension
from queuetopia_py._store.control import read_suspensions
from queuetopia_py._store.database import Database
from queuetopia_py._store.jobs import follows, summary_columns, summary_from_mapping
from queuetopia_py._store.schedules import read_statuses

_FAILED = [o for o in OUTCOMES if o is not JobState.CANCELLED]


def _distinct(column: sa.Column[Any], dialect: str) -> sa.Select[Any]:
    """The distinct values of the column that an index leads with, one index seek each:
    the cost follows the values, not the rows. MariaDB/MySQL skip through the index for
    a plain DISTINCT; PostgreSQL and SQLite are led from one value to the next (a
    recursive "loose index scan")."""
    if dialect in ("mysql", "mariadb"):
        return sa.select(column).distinct()
    found = sa.select(sa.func.min(column).label("value")).cte("found", recursive=True)
    following = (
        sa.select(column).where(column > found.c.value).order_by(column).limit(1).scalar_subquery()
    )
    found = found.union_all(sa.select(following).where(found.c.value.is_not(None)))
    return sa.select(found.c.value).where(found.c.value.is_not(None))


def read_summaries(
    conn: sa.Connection, jobs: sa.Table, *queue_rows: Sequence[sa.Row[Any]]
) -> dict[int, JobSummary]:
    """The summaries of the heads and of the jobs locked for, of these queue rows, by id."""
    wanted: set[int] = set()
    for rows in queue_rows:
        wanted |= {r.head_id for r in rows if r.head_id is not None}
        wanted |= {r.locked_job for r in rows if r.locked_job is not None}
    if not wanted:
        return {}
    found = conn.execute(sa.select(*summary_columns(jobs)).where(jobs.c.id.in_(sorted(wanted))))
    return {j.id: j for j in (summary_from_mapping(r._mapping) for r in found)}


def failed_counts(
    conn: sa.Connection, jobs: sa.Table, scope: str, names: Sequence[str]
) -> dict[str, int]:
    """How many jobs of each queue `names` ended without success (cancelled ones aside)."""
    if not names:
        return {}
    counted = conn.execute(
        sa.select(jobs.c.queue, sa.func.count())
        .where(jobs.c.scope == scope, jobs.c.queue.in_(names), jobs.c.state.in_(_FAILED))
        .group_by(jobs.c.queue)
    )
    return {queue: int(n) for queue, n in counted}


def running_attempt(row: sa.Row[Any], summaries: dict[int, JobSummary]) -> RunningAttempt | None:
    """The attempt a live queue lock `row` was taken for, if it is still running."""
    job = summaries.get(row.locked_job)
    # The live lock was taken for this job's current attempt (see in_progress).
    if job is None or job.done or job.attempted_at is None:
        return None
    return RunningAttempt(row.locked_by, row.queue, job, job.attempted_at, row.locked_until)


def queue_statuses(
    rows: Sequence[sa.Row[Any]],
    summaries: dict[int, JobSummary],
    failed: dict[str, int],
    suspensions: Sequence[Suspension],
    now: datetime,
) -> list[QueueStatus]:
    """The statuses of queue `rows`, from their jobs' summaries (`read_summaries`), their
    failed counts and the scope's suspensions, at database time `now`."""
    scope_suspension = next((s for s in suspensions if s.queue is None), None)
    own = {s.queue: s for s in suspensions if s.queue is not None}
    result = []
    for r in rows:
        live = r.token is not None and r.locked_until > now
        result.append(
            QueueStatus(
                queue=r.queue,
                pending=r.pending,
                failed=failed.get(r.queue, 0),
                head=summaries.get(r.head_id),
                lock=Lock(r.queue, r.locked_by, r.locked_at, r.locked_until, r.locked_job)
                if live
                else None,
                suspended=own.get(r.queue) or scope_suspension,
                running=running_attempt(r, summaries) if live else None,
            )
        )
    return result


class Inspection:
    """Status of one scope, and lookups across scopes."""

    def __init__(self, db: Database, scope: str) -> None:
        self.db = db
        self.scope = scope

    def status(self, limit: int | None = None, after: str | None = None) -> Status:
        """A page of at most `limit` queues (None: all), following the queue `after` in
        the status order (blocked first, the longest failing first, then by name)."""
        t = self.db.tables
        queues, jobs, sus = t.queues, t.jobs, t.suspensions
        mine = queues.c.scope == self.scope
        with self.db.transaction() as conn:
            now: datetime = conn.execute(sa.select(self.db.now())).scalar_one()
            cursor: Any = None
            if after is not None:
                cursor = conn.execute(
                    sa.select(queues.c.blocked_since).where(mine, queues.c.queue == after)
                ).first()
            page = self._page(conn, limit, after, None if cursor is None else cursor[0])
            counted = conn.execute(
                sa.select(sa.func.count(), sa.func.count(queues.c.blocked_since)).where(mine)
            ).one()
            running_rows = conn.execute(
                sa.select(queues).where(mine, queues.c.locked_until > now)
            ).all()
            summaries = read_summaries(conn, jobs, running_rows, page)
            failed = failed_counts(conn, jobs, self.scope, [r.queue for r in page])
            suspensions = read_suspensions(conn, sus, self.scope)
            schedules = read_statuses(conn, t.schedules, self.scope)
        scope_suspension = next((s for s in suspensions if s.queue is None), None)
        nodes: dict[str, list[RunningAttempt]] = {}
        for r in running_rows:
            attempt = running_attempt(r, summaries)
            if attempt is not None:
                nodes.setdefault(attempt.node, []).append(attempt)
        result = queue_statuses(page, summaries, failed, suspensions, now)
        more = limit is not None and len(page) == limit and len(page) > 0
        return Status(
            self.scope,
            now,
            scope_suspension,
            result,
            nodes,
            suspensions,
            queue_count=int(counted[0]),
            blocked_count=int(counted[1]),
            next_after=page[-1].queue if more else None,
            schedules=schedules,
        )

    def _page(
        self,
        conn: sa.Connection,
        limit: int | None,
        after: str | None,
        after_blocked_since: datetime | None,
    ) -> list[sa.Row[Any]]:
        """The queue rows of one status page: blocked ones (by the time they began to
        fail, then by name), then the others (by name), each read by index."""
        queues = self.db.tables.queues
        mine = queues.c.scope == self.scope
        rows: list[sa.Row[Any]] = []
        if after is None or after_blocked_since is not None:
            blocked = sa.select(queues).where(mine, queues.c.blocked_since.is_not(None))
            if after is not None:
                since = sa.literal(after_blocked_since, queues.c.blocked_since.type)
                blocked = blocked.where(
                    follows(queues.c.blocked_since, queues.c.queue, since, after)
                )
            rows = list(
                conn.execute(
                    blocked.order_by(queues.c.blocked_since, queues.c.queue).limit(limit)
                ).all()
            )
            after = None
        if limit is not None and len(rows) >= limit:
            return rows
        others = sa.select(queues).where(mine, queues.c.blocked_since.is_(None))
        if after is not None:
            others = others.where(queues.c.queue > after)
        rest = None if limit is None else limit - len(rows)
        return rows + list(conn.execute(others.order_by(queues.c.queue).limit(rest)).all())

    def known_scopes(self) -> list[str]:
        """Every scope with jobs, queues, locks or suspensions in these tables."""
        t = self.db.tables
        found: set[str] = set()
        with self.db.transaction() as conn:
            for table in (t.jobs, t.queues, t.locks, t.suspensions):
                found.update(conn.execute(_distinct(table.c.scope, self.db.dialect)).scalars())
        return sorted(found)

    def scope_of(self, job_id: int) -> str | None:
        """The scope of the job `job_id`, in any scope."""
        jobs = self.db.tables.jobs
        with self.db.transaction() as conn:
            scope = conn.execute(sa.select(jobs.c.scope).where(jobs.c.id == job_id)).scalar()
        return None if scope is None else str(scope)
