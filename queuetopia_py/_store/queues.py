"""The queues table: one row a queue with pending work (or locked), kept exact by the
statements that change the queue's jobs, in the same transactions.

A row holds the queue's pending count, its head (the first pending job in queue order:
its id, its `scheduled_at`, its due time and, while it fails, since when) and its lock
(token, holder, expiry, and the job the lock was taken for). Polls read the due heads
by index; nobody groups the jobs table.

Every transaction that changes a queue's pending jobs locks the queue's row first
(`QueueBook.lock`), then the jobs; the one exception, creating jobs, inserts them (rows
nobody else can see yet) and then upserts the row (`QueueBook.enqueued`). One order for
every writer: no deadlock between them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from queuetopia_py import defaults
from queuetopia_py._job import JobState, JobSummary
from queuetopia_py._schema import WHOLE_SCOPE
from queuetopia_py._store.database import Database, Deferred, execute


@dataclass(frozen=True, slots=True)
class NodeScope:
    """Where the scheduler's statements run: a scope, on a node, with a lock lease."""

    db: Database
    scope: str
    node: str
    #: The longest a queue lock lives without renewal (see `backoff.lock_lifetime`).
    lease: timedelta = defaults.LOCK_LEASE


@dataclass(frozen=True, slots=True)
class QueueRow:
    """A row of the queues table (see the module)."""

    queue: str
    pending: int
    head_id: int | None
    head_at: datetime | None
    head_due: datetime | None
    blocked_since: datetime | None
    token: str | None
    locked_by: str | None
    locked_at: datetime | None
    locked_until: datetime | None
    locked_job: int | None

    def locked(self, now: datetime) -> bool:
        """Whether a live lock holds the queue at `now` (database time)."""
        return self.token is not None and self.locked_until is not None and self.locked_until > now

    def held_by(self, token: str) -> bool:
        """Whether the lock (live or expired) is the claim `token`'s."""
        return self.token == token


#: The columns of a queue row that hold its lock, all NULL when it is not locked.
UNLOCKED: Mapping[str, Any] = {
    "token": None,
    "locked_by": None,
    "locked_at": None,
    "locked_until": None,
    "locked_job": None,
}


@dataclass(frozen=True, slots=True)
class Head:
    """What the queues table keeps of a queue's head job."""

    id: int
    scheduled_at: datetime
    next_attempt_at: datetime | None
    failing_since: datetime | None

    @classmethod
    def of(cls, job: JobSummary) -> Head:
        """What the queues table keeps of `job` as its queue's head."""
        return cls(job.id, job.scheduled_at, job.next_attempt_at, job.failing_since)

    @classmethod
    def read(cls, row: Mapping[str, Any]) -> Head:
        """What the queues table keeps of the job `row` (its `HEAD_READ` columns, at least)
        as its queue's head."""
        return cls(*(row[c] for c in HEAD_READ))

    def columns(self) -> dict[str, Any]:
        """The queue row's head columns for this head."""
        return {
            "head_id": self.id,
            "head_at": self.scheduled_at,
            "head_due": self.next_attempt_at,
            "blocked_since": self.failing_since,
        }


def first_head(*jobs: JobSummary | None) -> Head | None:
    """The head among pending `jobs` (None ones left out): the first in queue order."""
    pending = [job for job in jobs if job is not None and job.pending]
    if not pending:
        return None
    return Head.of(min(pending, key=lambda job: (job.scheduled_at, job.id)))


#: The columns of a job row that `Head.read` reads, in the order of `Head`'s fields.
HEAD_READ = ("id", "scheduled_at", "next_attempt_at", "failing_since")
#: The columns of a job row that recording a success reads: is it still the claim's
#: (`claim_token`), and is it done or pending still (`state`, `done_at`).
NARROW_JOB = ("id", "state", "claim_token", "done_at")

#: The head columns of a queue without pending work.
NO_HEAD: Mapping[str, Any] = {
    "head_id": None,
    "head_at": None,
    "head_due": None,
    "blocked_since": None,
}


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Jobs just created in a queue: how many, and the first of them in queue order."""

    queue: str
    count: int
    first: Head


_QUEUE_FIELDS = tuple(f.name for f in fields(QueueRow))


@dataclass(frozen=True, slots=True)
class Locked:
    """What `QueueBook.lock` read under the queue row's lock: the row (None: the queue
    has no pending work nor lock), the database's time, whether the queue (or its
    scope) is suspended, the job row asked for (None: none asked, or none), and the
    pending job that follows it."""

    row: QueueRow | None
    now: datetime
    suspended: bool
    job: Mapping[Any, Any] | None
    #: The pending job that follows the one asked for (`lock_with_job`), if any.
    following: Mapping[str, Any] | None = None


def _locked(m: Mapping[Any, Any], *, with_job: bool) -> Locked:
    row = QueueRow(**{f: m[f"q_{f}"] for f in _QUEUE_FIELDS})
    job = m if with_job and m["id"] is not None else None
    return Locked(row, m["db_now"], bool(m["suspended"]), job)


class QueueBook:
    """The statements of the queues table for one set of tables, built once."""

    def __init__(self, db: Database) -> None:
        self.db = db
        tables = db.tables
        self.queues = queues = tables.queues
        self.jobs = jobs = tables.jobs
        scope = sa.bindparam("b_scope", type_=queues.c.scope.type)
        queue = sa.bindparam("b_queue", type_=queues.c.queue.type)
        self._key = sa.and_(queues.c.scope == scope, queues.c.queue == queue)
        s = tables.suspensions
        suspended = sa.exists().where(
            s.c.scope == queues.c.scope, s.c.queue.in_([queues.c.queue, WHOLE_SCOPE])
        )
        lead = [
            *(queues.c[f].label(f"q_{f}") for f in _QUEUE_FIELDS),
            db.now().label("db_now"),
            suspended.label("suspended"),
        ]
        self._lock = sa.select(*lead).where(self._key).with_for_update(of=queues)
        self._lock_with_head = {
            skip: sa.select(*lead, jobs)
            .select_from(queues.outerjoin(jobs, jobs.c.id == queues.c.head_id))
            .where(self._key)
            .with_for_update(of=queues, skip_locked=skip)
            for skip in (False, True)
        }
        job_id = sa.bindparam("b_job", type_=jobs.c.id.type)
        summary = [c for c in jobs.c if c.name not in ("params", "result")]
        # The queue's first pending job but job `b_job`: what follows it in the queue.
        other = jobs.alias("other")
        following = (
            sa.select(other.c.id)
            .where(*self._queue_jobs(other, scope, queue), other.c.id != job_id)
            .order_by(*queue_order(other))
            .limit(1)
            .scalar_subquery()
        )
        after = jobs.alias("after")

        def same_queue(of: sa.FromClause) -> list[sa.ColumnElement[bool]]:
            return [of.c.scope == queues.c.scope, of.c.queue == queues.c.queue]

        def read(narrow: bool, whole: bool) -> list[Any]:
            """The columns read of the job and of the one after it."""
            job = [jobs.c[c] for c in NARROW_JOB] if narrow else summary
            following = [c.name for c in (jobs.c if whole else summary)]
            if narrow and not whole:
                following = list(HEAD_READ)
            return [*job, *(after.c[c].label(f"n_{c}") for c in following)]

        self._lock_with_job = {
            (whole, skip, narrow): (
                sa.select(*lead, *read(narrow, whole))
                .select_from(
                    queues.join(jobs, sa.and_(jobs.c.id == job_id, *same_queue(jobs))).outerjoin(
                        after, sa.and_(after.c.id == following, *same_queue(after))
                    )
                )
                .where(self._key)
                .with_for_update(of=queues, skip_locked=skip)
            )
            for whole in (False, True)
            for skip in (False, True)
            for narrow in (False, True)
        }
        self._job_alone = sa.select(db.now().label("db_now"), *summary).where(jobs.c.id == job_id)
        written = [f for f in _QUEUE_FIELDS if f != "queue"]
        self._update = (
            queues.update()
            .where(self._key)
            .values({f: sa.bindparam(f"v_{f}", type_=queues.c[f].type) for f in written})
        )
        self._delete = queues.delete().where(self._key)
        self._head_summary = (
            sa.select(jobs.c.id, jobs.c.scheduled_at, jobs.c.next_attempt_at, jobs.c.failing_since)
            .where(*self._queue_jobs(jobs, scope, queue))
            .order_by(*queue_order(jobs))
            .limit(1)
        )
        self._upsert = self._build_upsert()
        self._ensure = self._build_ensure()

    @staticmethod
    def _queue_jobs(jobs: sa.FromClause, scope: Any, queue: Any) -> list[sa.ColumnElement[bool]]:
        """The pending jobs of the queue."""
        return [jobs.c.scope == scope, jobs.c.queue == queue, jobs.c.state == JobState.PENDING]

    # -- reading under lock --------------------------------------------------------------

    def lock(self, conn: Connection, scope: str, queue: str) -> Locked:
        """Lock the queue's row for this transaction and read it."""
        found = conn.execute(self._lock, {"b_scope": scope, "b_queue": queue}).first()
        if found is None:
            return Locked(None, conn.execute(sa.select(self.db.now())).scalar_one(), False, None)
        return _locked(found._mapping, with_job=False)

    def lock_with_head(self, conn: Connection, scope: str, queue: str) -> Locked:
        """`lock`, reading the queue's head job too (its whole row)."""
        locked = self._lock_with_head_or_skip(conn, scope, queue, skip=False)
        assert locked is not None
        return locked

    def try_lock_with_head(self, conn: Connection, scope: str, queue: str) -> Locked | None:
        """`lock_with_head` if the queue's row is free now; None, without waiting, if
        another transaction holds it (or the queue has no row: ask `lock_with_head`)."""
        return self._lock_with_head_or_skip(conn, scope, queue, skip=True)

    def _lock_with_head_or_skip(
        self, conn: Connection, scope: str, queue: str, *, skip: bool
    ) -> Locked | None:
        params = {"b_scope": scope, "b_queue": queue}
        statement = self._lock_with_head[skip]
        found = conn.execute(statement, params).first()
        if found is None:
            if skip:
                return None
            return Locked(None, conn.execute(sa.select(self.db.now())).scalar_one(), False, None)
        locked = _locked(found._mapping, with_job=True)
        if locked.row is not None and locked.row.head_id is not None and locked.job is None:
            # Read before the lock was ours (see `_STALE_READ`): read again.
            return _locked(conn.execute(statement, params).one()._mapping, with_job=True)
        return locked

    def lock_with_job(
        self,
        conn: Connection,
        scope: str,
        queue: str,
        job_id: int,
        *,
        whole_next: bool = False,
        narrow: bool = False,
    ) -> Locked:
        """`lock`, reading job `job_id` of the queue too (without params and result), and
        the pending job that follows it in the queue (`Locked.following`; with
        `whole_next`, its params too). A queue without a row gives the job alone,
        unlocked. With `narrow`, only `NARROW_JOB` is read of the job, and of the job
        after it (unless `whole_next`) only `HEAD_READ` (see `Head.read`)."""
        locked = self._lock_with_job_or_skip(
            conn, scope, queue, job_id, (whole_next, False, narrow)
        )
        assert locked is not None
        return locked

    def try_lock_with_job(
        self,
        conn: Connection,
        scope: str,
        queue: str,
        job_id: int,
        *,
        whole_next: bool = False,
        narrow: bool = False,
    ) -> Locked | None:
        """`lock_with_job` if the queue's row is free now; None, without waiting, if
        another transaction holds it (or the queue has no row: ask `lock_with_job`).
        SQLite has one writer at a time: its rows are always free."""
        return self._lock_with_job_or_skip(conn, scope, queue, job_id, (whole_next, True, narrow))

    def _lock_with_job_or_skip(
        self, conn: Connection, scope: str, queue: str, job_id: int, kind: tuple[bool, bool, bool]
    ) -> Locked | None:
        skip = kind[1]
        params = {"b_scope": scope, "b_queue": queue, "b_job": job_id}
        statement = self._lock_with_job[kind]
        found = conn.execute(statement, params).first()
        if found is None and skip:
            return None
        if found is not None:
            locked = _locked(found._mapping, with_job=True)
            m = found._mapping
            row, job = locked.row, locked.job
            others = 0 if row is None else row.pending
            if job is not None and job["state"] == JobState.PENDING:
                others -= 1
            if m["n_id"] is None and others > 0:
                # The row counts pending jobs besides this one, but none was read: read
                # before the lock was ours (see `_STALE_READ`). Read again.
                found = conn.execute(statement, params).one()
                locked, m = _locked(found._mapping, with_job=True), found._mapping
            if m["n_id"] is None:
                return locked
            following = {k[2:]: v for k, v in m.items() if isinstance(k, str) and k[:2] == "n_"}
            return replace(locked, following=following)
        alone = conn.execute(self._job_alone, params).first()
        if alone is None:
            return Locked(None, conn.execute(sa.select(self.db.now())).scalar_one(), False, None)
        return Locked(None, alone.db_now, False, alone._mapping)

    def head_of(self, conn: Connection, scope: str, queue: str) -> Head | None:
        """What the queues table keeps of the queue's head, as the jobs now stand."""
        row = conn.execute(self._head_summary, {"b_scope": scope, "b_queue": queue}).first()
        return None if row is None else Head(*row)

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        conn: Connection,
        scope: str,
        row: QueueRow,
        writes: Deferred | None = None,
        **values: Any,
    ) -> None:
        """Set `values` on the locked row `row` (read by `lock` in this transaction); a
        row left without pending work nor lock is deleted. With `writes`, held back."""
        merged = {f: getattr(row, f) for f in _QUEUE_FIELDS if f != "queue"}
        merged.update(values)
        params = {"b_scope": scope, "b_queue": row.queue}
        if merged["pending"] == 0 and merged["token"] is None:
            execute(conn, self._delete, params, writes)
            return
        values = {**params, **{f"v_{f}": v for f, v in merged.items()}}
        execute(conn, self._update, values, writes)

    def sync(
        self,
        conn: Connection,
        scope: str,
        row: QueueRow,
        *,
        pending_change: int = 0,
        head: Head | Literal["read"] | None = "read",
        writes: Deferred | None = None,
        **values: Any,
    ) -> None:
        """Write the locked row `row` after its jobs changed: its head (`head`, or as the
        jobs now stand), its pending count changed by `pending_change`, and `values` (its
        lock). With `writes`, held back (a head to read is read now)."""
        if head == "read":
            head = self.head_of(conn, scope, row.queue)
        columns = NO_HEAD if head is None else head.columns()
        pending = row.pending + pending_change
        self.write(conn, scope, row, writes, pending=pending, **columns, **values)

    def enqueued(self, conn: Connection, scope: str, created: Sequence[Enqueued]) -> None:
        """Count new pending jobs in their queues' rows (creating the rows), making the
        first of them its queue's head when it comes before the head in queue order."""
        rows = [
            {
                "scope": scope,
                "queue": e.queue,
                "pending": e.count,
                **e.first.columns(),
            }
            for e in sorted(created, key=lambda e: e.queue)  # one lock order for everyone
        ]
        if rows:
            conn.execute(self._upsert, rows)

    def enqueued_from(self, source: sa.Select[Any]) -> sa.Insert:
        """`enqueued` as a statement counting the rows of `source` (scope, queue, count,
        and the head columns of the first of them), to compose with the statement that
        creates them (PostgreSQL)."""
        return self._build_upsert(source)

    def ensure(self, conn: Connection, scope: str, queue: str) -> None:
        """Make sure the queue has a row, locked by `conn`'s transaction, so that `lock`
        has one to lock: a record finishing the queue's last job cannot delete it in
        between (a row without pending work nor lock is deleted again by the `write` that
        follows)."""
        conn.execute(self._ensure, {"scope": scope, "queue": queue})

    def _dialect_insert(self) -> tuple[Any, Any]:
        """The queues table's INSERT of this dialect, and the dialect module it is from."""
        module: Any = {"postgresql": postgresql, "sqlite": sqlite}.get(self.db.dialect, mysql)
        return module, module.insert(self.queues)

    def _build_ensure(self) -> sa.Insert:
        q = self.queues
        module, insert = self._dialect_insert()
        stmt = insert.values(
            scope=sa.bindparam("scope", type_=q.c.scope.type),
            queue=sa.bindparam("queue", type_=q.c.queue.type),
            pending=0,
        )
        # An existing row gets a no-op update, which locks it (DO NOTHING would not).
        if module is mysql:
            return stmt.on_duplicate_key_update(pending=q.c.pending)  # type: ignore[no-any-return]
        return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=[q.c.scope, q.c.queue], set_={"pending": q.c.pending}
        )

    def _build_upsert(self, source: sa.Select[Any] | None = None) -> sa.Insert:
        """INSERT a queue row (bound values, or `source`'s rows), or on conflict add to
        its pending count and take the new head if it comes first. Written for each
        dialect's upsert; the assignments are in an order that MariaDB (which assigns from
        left to right, seeing the values it has set) and the others (which see the old
        values) read alike."""
        q = self.queues
        module, insert = self._dialect_insert()
        if source is None:
            stmt = insert.values({c: sa.bindparam(c, type_=q.c[c].type) for c in _ENQUEUED})
        else:
            stmt = insert.from_select(_ENQUEUED, source)
        new = stmt.inserted if module is mysql else stmt.excluded
        first = sa.or_(
            q.c.head_id.is_(None),
            new.head_at < q.c.head_at,
            sa.and_(new.head_at == q.c.head_at, new.head_id < q.c.head_id),
        )
        assignments = [
            (q.c.pending, q.c.pending + new.pending),
            (q.c.head_due, sa.case((first, new.head_due), else_=q.c.head_due)),
            (q.c.blocked_since, sa.case((first, None), else_=q.c.blocked_since)),
            (q.c.head_id, sa.case((first, new.head_id), else_=q.c.head_id)),
            # Last, and without reading head_id, which MariaDB has just set.
            (
                q.c.head_at,
                sa.case(
                    (sa.or_(q.c.head_at.is_(None), new.head_at < q.c.head_at), new.head_at),
                    else_=q.c.head_at,
                ),
            ),
        ]
        if module is mysql:
            return stmt.on_duplicate_key_update(  # type: ignore[no-any-return]
                [(column.name, value) for column, value in assignments]
            )
        return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=[q.c.scope, q.c.queue], set_=dict(assignments)
        )


# _STALE_READ: a statement that locks a queue's row and reads its jobs reads them in the
# snapshot of its start (PostgreSQL, READ COMMITTED). When it had to wait for the row's
# lock (a job being created in the queue holds it), it sees the row as that job left it,
# counted, but not the job. Read again, the lock held, it sees them alike: a job counted
# into the row is visible once its creator has released the row.

# The columns a new job's count and head write in its queue's row.
_ENQUEUED = ["scope", "queue", "pending", "head_id", "head_at", "head_due", "blocked_since"]


def queue_order(jobs: sa.FromClause) -> list[sa.ColumnElement[Any]]:
    """Queue order among a queue's pending jobs, spelled to match the queue-order index
    (`scope, queue, state, scheduled_at, id`)."""
    return [jobs.c.state, jobs.c.scheduled_at, jobs.c.id]


class Left:
    """What a step of `in_queue_order` gives for an item whose queue's row was busy: it
    is left to a transaction of its own, after."""


#: The one `Left`.
LEFT = Left()


class Tried(Protocol):
    """An item of `in_queue_order`: when its first try began (None: not yet), which stays
    the same through retries."""

    first: float | None


I = TypeVar("I", bound=Tried)  # noqa: E741 (the item type)
R = TypeVar("R")


def in_queue_order(
    db: Database,
    items: Sequence[I],
    queue_of: Callable[[I], str],
    step: Callable[[Connection, I, float, Deferred, bool], R | Left],
    *,
    max_seconds: float = 30.0,
) -> list[R]:
    """`step(conn, item, started, writes, first)` for each of `items` (each of another
    queue), in as few transactions as their queues' rows allow: one, unless some are
    busy; what each step gave, in order.

    The rows are taken in the order of the queues' names (as every writer of several
    rows takes them), and only a transaction's `first` step may wait for its row; the
    others take theirs if free, else give `LEFT`, and are left to a transaction of their
    own after (the first of it). A transaction never waits while it holds a row, and so
    never deadlocks with another (an application creating jobs in several queues, say).
    `started` is the monotonic time the transaction's try began; the writes held back in
    `writes` are sent at its end. Each transaction is retried through transient failures
    for at most `max_seconds`."""
    assert len({queue_of(item) for item in items}) == len(items), "one per queue"
    outcomes: dict[int, R] = {}

    def some(indexes: list[int]) -> list[int]:
        started = time.monotonic()
        done: dict[int, R] = {}
        busy: list[int] = []
        with db.transaction() as conn:
            writes = Deferred()
            for index in indexes:
                item = items[index]
                if item.first is None:
                    item.first = started
                outcome = step(conn, item, started, writes, not done)
                if isinstance(outcome, Left):
                    busy.append(index)
                else:
                    done[index] = outcome
            writes.flush(conn)
        outcomes.update(done)  # once committed: a retry starts over
        return busy

    left = sorted(range(len(items)), key=lambda index: queue_of(items[index]))
    while left:
        left = db.retrying(functools.partial(some, left), max_seconds=max_seconds)
    return [outcomes[index] for index in range(len(items))]
