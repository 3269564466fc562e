"""What the dashboard reads: a scope's queues by section (blocked, running, suspended,
waiting), a page at a time after a key; the count of each section; a fingerprint that
changes when the scope does; the jobs that ended in each of the last minutes.

Each read's cost follows the page asked for: sections are read through the queues
table's indexes in their order and stop at the page's size; the minute counts look at
the newest `CHART_WINDOW` jobs only, through the primary key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from queuetopia_py._job import JobState
from queuetopia_py._status import QueueStatus, Suspension
from queuetopia_py._store.control import read_suspensions
from queuetopia_py._store.database import Database
from queuetopia_py._store.inspection import failed_counts, queue_statuses, read_summaries
from queuetopia_py._store.jobs import JobStore, follows

#: The minute counts look at this many of a table's newest jobs at most.
CHART_WINDOW = 100_000
_ENDED_BADLY = (JobState.GIVEN_UP, JobState.ABORTED, JobState.DEAD_LETTERED)


class Section(enum.StrEnum):
    """The sections of the queues page, in the order it shows them."""

    BLOCKED = "blocked"
    RUNNING = "running"
    SUSPENDED = "suspended"
    WAITING = "waiting"


SECTIONS = tuple(Section)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page of queues starts: after queue `queue` of `section` (with its
    `blocked_since` in the blocked section); `queue` None: at the section's start."""

    section: Section
    queue: str | None = None
    blocked_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueuePage:
    """A page of a scope's queues, each with its section, and the cursor of the next
    page (None: the last page)."""

    at: datetime
    queues: list[tuple[Section, QueueStatus]]
    next: Cursor | None
    suspended: Suspension | None


@dataclass(frozen=True, slots=True)
class Counts:
    """How many queues of a scope each section holds, and how many in all."""

    blocked: int
    running: int
    suspended: int
    waiting: int
    total: int

    def of(self, section: Section) -> int:
        """The count of `section`."""
        return int(getattr(self, section.value))


@dataclass(frozen=True, slots=True)
class Minute:
    """The jobs that ended in the minute starting `start`: done, or ended without
    success (given up, aborted, dead-lettered)."""

    start: datetime
    done: int
    failed: int


def blocked_by_scope(db: Database, scopes: list[str]) -> dict[str, int]:
    """How many blocked queues each of `scopes` has (those with none left out), each
    read through its range of the index of the blocked queues."""
    q = db.tables.queues
    found: dict[str, int] = {}
    with db.transaction() as conn:
        for scope in scopes:
            n = conn.execute(
                sa.select(sa.func.count()).where(q.c.scope == scope, q.c.blocked_since.is_not(None))
            ).scalar_one()
            if n:
                found[scope] = int(n)
    return found


class Board:
    """The dashboard's reads of one scope."""

    def __init__(self, db: Database, scope: str) -> None:
        self.db = db
        self.scope = scope
        self._jobs = JobStore(db, scope)

    def count_jobs(self, queue: str | None, state: str) -> int:
        """How many jobs of `queue` (None: of the scope) are stored in `state` (one
        count, no listing)."""
        return self._jobs.count(queue=queue, state=state)

    # -- sections --------------------------------------------------------------------

    def _section(
        self, section: Section, now: datetime, scope_suspended: bool
    ) -> list[sa.ColumnElement[bool]]:
        """The conditions on a queues row of this scope to belong to `section`."""
        q = self.db.tables.queues
        sus = self.db.tables.suspensions
        running = self._running(now)
        own = (
            sa.select(sus.c.queue)
            .where(sus.c.scope == q.c.scope, sus.c.queue == q.c.queue)
            .exists()
        )
        suspended: sa.ColumnElement[bool] = sa.true() if scope_suspended else own
        conditions: list[sa.ColumnElement[bool]] = [q.c.scope == self.scope]
        if section is Section.BLOCKED:
            return [*conditions, q.c.blocked_since.is_not(None)]
        conditions += [q.c.blocked_since.is_(None)]
        if section is Section.RUNNING:
            return [*conditions, running]
        conditions += [sa.not_(running)]
        if section is Section.SUSPENDED:
            return [*conditions, suspended]
        return [*conditions, sa.not_(suspended)]

    def _running(self, now: datetime) -> sa.ColumnElement[bool]:
        """The condition on a queues row to be held by a live lock at `now`."""
        q = self.db.tables.queues
        return sa.and_(q.c.token.is_not(None), q.c.locked_until > now)

    def queues(
        self, limit: int, *, name: str | None = None, start: Cursor | None = None
    ) -> QueuePage:
        """At most `limit` queues from `start` (None: the first blocked one) in the page's
        order: blocked (the longest failing first), running, suspended, waiting (each by
        name); `name` keeps the queues whose name holds it."""
        if limit < 1:
            raise ValueError(f"limit: must be 1 or more (got {limit})")
        q = self.db.tables.queues
        start = start or Cursor(SECTIONS[0])
        rows: list[tuple[Section, sa.Row[Any]]] = []
        next_cursor: Cursor | None = None
        with self.db.transaction() as conn:
            now: datetime = conn.execute(sa.select(self.db.now())).scalar_one()
            suspensions = read_suspensions(conn, self.db.tables.suspensions, self.scope)
            whole = next((s for s in suspensions if s.queue is None), None)
            for section in SECTIONS[SECTIONS.index(start.section) :]:
                wanted = limit - len(rows)
                after = start.queue if section is start.section else None
                if section is Section.RUNNING or (section is Section.SUSPENDED and not whole):
                    # Few rows (the live locks, the suspensions): read by their own
                    # index, ordered here.
                    found = [
                        r
                        for r in self._few(conn, section, now)
                        if (not name or name in r.queue) and (after is None or r.queue > after)
                    ][: wanted + 1]
                else:
                    query = sa.select(q).where(*self._section(section, now, whole is not None))
                    if name:
                        query = query.where(q.c.queue.contains(name, autoescape=True))
                    if section is Section.BLOCKED:
                        if after is not None and start.blocked_since is not None:
                            since = sa.literal(start.blocked_since, q.c.blocked_since.type)
                            query = query.where(follows(q.c.blocked_since, q.c.queue, since, after))
                        query = query.order_by(q.c.blocked_since, q.c.queue)
                    else:
                        if after is not None:
                            query = query.where(q.c.queue > after)
                        query = query.order_by(q.c.queue)
                    # One more than wanted says whether a next page exists.
                    found = list(conn.execute(query.limit(wanted + 1)).all())
                rows += [(section, r) for r in found[:wanted]]
                if len(found) > wanted:
                    last = found[wanted - 1]
                    next_cursor = Cursor(section, last.queue, last.blocked_since)
                    break
                if len(rows) >= limit:
                    following = SECTIONS.index(section) + 1
                    if following < len(SECTIONS):
                        next_cursor = Cursor(SECTIONS[following])
                    break
            page = [r for _, r in rows]
            summaries = read_summaries(conn, self.db.tables.jobs, page)
            failed = failed_counts(conn, self.db.tables.jobs, self.scope, [r.queue for r in page])
        statuses = queue_statuses(page, summaries, failed, suspensions, now)
        return QueuePage(
            now,
            [(s, status) for (s, _), status in zip(rows, statuses, strict=True)],
            next_cursor,
            whole,
        )

    def _few(self, conn: sa.Connection, section: Section, now: datetime) -> list[sa.Row[Any]]:
        """The rows of the running section (led by the lock index), or of the suspended
        one while the scope itself is not (led by the suspensions), by name."""
        q = self.db.tables.queues
        if section is Section.RUNNING:
            rows = conn.execute(
                sa.select(q).where(q.c.scope == self.scope, q.c.locked_until > now)
            ).all()
            return sorted(
                (r for r in rows if r.token is not None and r.blocked_since is None),
                key=lambda r: str(r.queue),
            )
        sus = self.db.tables.suspensions
        rows = conn.execute(
            sa.select(q)
            .select_from(sus.join(q, sa.and_(q.c.scope == sus.c.scope, q.c.queue == sus.c.queue)))
            .where(
                sus.c.scope == self.scope,
                q.c.blocked_since.is_(None),
                sa.not_(self._running(now)),
            )
        ).all()
        return sorted(rows, key=lambda r: str(r.queue))

    def counts(self) -> Counts:
        """How many queues each section holds now: one count of the scope's queues, the
        others read through the indexes of blocked and locked queues and the (few)
        suspensions; the waiting ones are the rest."""
        q = self.db.tables.queues
        with self.db.transaction() as conn:
            now: datetime = conn.execute(sa.select(self.db.now())).scalar_one()
            whole = any(
                s.queue is None
                for s in read_suspensions(conn, self.db.tables.suspensions, self.scope)
            )
            total, blocked = conn.execute(
                sa.select(sa.func.count(), sa.func.count(q.c.blocked_since)).where(
                    q.c.scope == self.scope
                )
            ).one()
            running = int(
                conn.execute(
                    sa.select(sa.func.count()).where(*self._section(Section.RUNNING, now, whole))
                ).scalar_one()
            )
            own = 0 if whole else len(self._few(conn, Section.SUSPENDED, now))
        rest = int(total) - int(blocked) - running
        suspended = rest if whole else own
        return Counts(
            blocked=int(blocked),
            running=running,
            suspended=suspended,
            waiting=rest - suspended,
            total=int(total),
        )

    def queue(self, name: str) -> tuple[Section, QueueStatus] | None:
        """The status of queue `name` and its section; None when it has no pending work
        and no lock (no row in the queues table)."""
        q = self.db.tables.queues
        with self.db.transaction() as conn:
            now: datetime = conn.execute(sa.select(self.db.now())).scalar_one()
            suspensions = read_suspensions(conn, self.db.tables.suspensions, self.scope)
            whole = any(s.queue is None for s in suspensions)
            row = conn.execute(
                sa.select(q).where(q.c.scope == self.scope, q.c.queue == name)
            ).first()
            if row is None:
                return None
            section = next(
                s
                for s in SECTIONS
                if conn.execute(
                    sa.select(sa.literal(1)).where(q.c.queue == name, *self._section(s, now, whole))
                ).first()
            )
            summaries = read_summaries(conn, self.db.tables.jobs, [row])
            failed = failed_counts(conn, self.db.tables.jobs, self.scope, [name])
        return section, queue_statuses([row], summaries, failed, suspensions, now)[0]

    def newest_id(self) -> int:
        """The highest job id of the table now (0 when it is empty): jobs created later
        have higher ones."""
        jobs = self.db.tables.jobs
        with self.db.transaction() as conn:
            return int(conn.execute(sa.select(sa.func.max(jobs.c.id))).scalar() or 0)

    # -- live ------------------------------------------------------------------------

    def fingerprint(self) -> tuple[Any, ...]:
        """A value that changes when the scope's queues do: work created or done, a lock
        taken or let go, a head failing, a suspension, a running attempt's progress."""
        t = self.db.tables
        q, jobs, sus = t.queues, t.jobs, t.suspensions
        with self.db.transaction() as conn:
            now = conn.execute(sa.select(self.db.now())).scalar_one()
            newest = conn.execute(sa.select(sa.func.max(jobs.c.id))).scalar()
            queues = conn.execute(
                sa.select(sa.func.count(), sa.func.sum(q.c.pending)).where(q.c.scope == self.scope)
            ).one()
            blocked = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.max(q.c.blocked_since),
                    sa.func.sum(q.c.head_id),
                    sa.func.max(q.c.head_due),
                    sa.func.min(q.c.head_due),
                ).where(q.c.scope == self.scope, q.c.blocked_since.is_not(None))
            ).one()
            running = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.max(q.c.locked_at),
                    sa.func.sum(q.c.locked_job),
                    sa.func.max(jobs.c.progress_at),
                    sa.func.max(jobs.c.attempts),
                )
                .select_from(q.join(jobs, jobs.c.id == q.c.locked_job))
                .where(q.c.scope == self.scope, q.c.locked_until > now)
            ).one()
            suspended = conn.execute(
                sa.select(sa.func.count(), sa.func.max(sus.c.suspended_at)).where(
                    sus.c.scope == self.scope
                )
            ).one()
        return (newest, *queues, *blocked, *running, *suspended)

    def minutes(self, count: int = 60) -> list[Minute]:
        """The jobs of this scope that ended in each of the last `count` minutes (the
        current one last), among the table's newest `CHART_WINDOW` jobs."""
        jobs = self.db.tables.jobs
        with self.db.transaction() as conn:
            now: datetime = conn.execute(sa.select(self.db.now())).scalar_one()
            newest = conn.execute(sa.select(sa.func.max(jobs.c.id))).scalar()
            end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
            starts = [end - timedelta(minutes=count - i) for i in range(count + 1)]
            if newest is None:
                return [Minute(s, 0, 0) for s in starts[:-1]]

            def per_minute(column: sa.Column[Any], *states: JobState) -> dict[int, int]:
                """How many of the window's jobs in `states` have `column` in each
                minute (by the minute's index), the jobs that ended read once each."""
                minute = sa.case(
                    *((column < sa.literal(b, column.type), i) for i, b in enumerate(starts[1:])),
                    else_=count,
                )
                ended = (
                    sa.select(minute.label("minute"))
                    .where(
                        jobs.c.id > int(newest) - CHART_WINDOW,
                        jobs.c.scope == self.scope,
                        jobs.c.state.in_(states),
                        column >= sa.literal(starts[0], column.type),
                    )
                    .subquery("ended")
                )
                counted = conn.execute(
                    sa.select(ended.c.minute, sa.func.count()).group_by(ended.c.minute)
                )
                return {int(i): int(n) for i, n in counted}

            done = per_minute(jobs.c.done_at, JobState.DONE)
            failed = per_minute(jobs.c.ended_at, *_ENDED_BADLY)
        return [Minute(starts[i], done.get(i, 0), failed.get(i, 0)) for i in range(count)]
