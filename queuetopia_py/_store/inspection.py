"""Read-only statements for operators and tools: a scope's status, the scopes present.

Their cost follows what they return: `status` reads a page of the queues table and the
page's heads by key, never the jobs' history; `known_scopes` reads each table's distinct
scopes by skipping through the index that leads with the scope.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queuetopia_py._job import OUTCOMES, JobState
from queuetopia_py._status import Lock, QueueStatus, RunningAttempt, Status
from queuetopia_py._store.control import row_to_suspension
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
            names = [r.queue for r in page]
            running_rows = conn.execute(
                sa.select(queues).where(mine, queues.c.locked_until > now)
            ).all()
            wanted = {r.head_id for r in page if r.head_id is not None}
            wanted |= {r.locked_job for r in running_rows if r.locked_job is not None}
            summaries = {
                j.id: j
                for j in (
                    summary_from_mapping(r._mapping)
                    for r in conn.execute(
                        sa.select(*summary_columns(jobs)).where(jobs.c.id.in_(sorted(wanted)))
                    )
                )
            }
            failed: dict[str, int] = dict(
                conn.execute(
                    sa.select(jobs.c.queue, sa.func.count())
                    .where(
                        jobs.c.scope == self.scope,
                        jobs.c.queue.in_(names),
                        jobs.c.state.in_(_FAILED),
                    )
                    .group_by(jobs.c.queue)
                ).all()
            )
            suspensions = [
                row_to_suspension(r)
                for r in conn.execute(
                    sa.select(sus).where(sus.c.scope == self.scope).order_by(sus.c.queue)
                )
            ]
            schedules = read_statuses(conn, t.schedules, self.scope)
        scope_suspension = next((s for s in suspensions if s.queue is None), None)
        own = {s.queue: s for s in suspensions if s.queue is not None}
        nodes: dict[str, list[RunningAttempt]] = {}
        running: dict[str, RunningAttempt] = {}
        for r in running_rows:
            job = summaries.get(r.locked_job)
            # The live lock was taken for this job's current attempt (see in_progress).
            if job is None or job.done or job.attempted_at is None:
                continue
            attempt = RunningAttempt(r.locked_by, r.queue, job, job.attempted_at, r.locked_until)
            running[r.queue] = attempt
            nodes.setdefault(r.locked_by, []).append(attempt)
        result = [
            QueueStatus(
                queue=r.queue,
                pending=r.pending,
                failed=int(failed.get(r.queue, 0)),
                head=summaries.get(r.head_id),
                lock=None
                if r.token is None or r.locked_until <= now
                else Lock(r.queue, r.locked_by, r.locked_at, r.locked_until, r.locked_job),
                suspended=own.get(r.queue) or scope_suspension,
                running=running.get(r.queue),
            )
            for r in page
        ]
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
