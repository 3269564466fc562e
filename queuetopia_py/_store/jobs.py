"""Statements that create and read jobs: insert (counting the jobs into their queues'
rows), get, list in queue order (by page or by key), count."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from queuetopia_py._errors import DatabaseError, InvalidJobError
from queuetopia_py._job import (
    STORED_STATES,
    Intervention,
    Job,
    JobState,
    JobSummary,
    NewJob,
    OnFailure,
    Progress,
)
from queuetopia_py._schema import UNIQUE_HELD, UtcDateTime, normalize_text, unique_held
from queuetopia_py._store.announcements import Announcement, announce, notify
from queuetopia_py._store.database import Database
from queuetopia_py._store.queues import Enqueued, Head, QueueBook

# The arrays of the PostgreSQL insert of many jobs, in the order of its columns.
_UNNEST = (
    "queues",
    "actions",
    "params",
    "timeouts",
    "backoffs",
    "maxes",
    "modes",
    "letters",
    "scheduled",
)
#: Columns of the jobs table that may be large: read only where they are used.
_LARGE = ("params", "result")


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def summary_columns(jobs: sa.Table) -> list[sa.Column[Any]]:
    """The jobs table's columns but `params` and `result`."""
    return [c for c in jobs.c if c.name not in _LARGE]


def _summary_fields(m: Mapping[Any, Any]) -> dict[str, Any]:
    state = JobState(m["state"])
    return {
        "id": m["id"],
        "scope": m["scope"],
        "queue": m["queue"],
        "action": m["action"],
        "timeout": timedelta(microseconds=m["timeout_us"]),
        "max_backoff": timedelta(microseconds=m["max_backoff_us"]),
        "max_attempts": m["max_attempts"],
        "attempts": m["attempts"],
        "attempted_at": m["attempted_at"],
        "attempted_by": m["attempted_by"],
        "next_attempt_at": m["next_attempt_at"],
        "scheduled_at": m["scheduled_at"],
        "done_at": m["done_at"],
        "error": m["error"],
        "inserted_at": m["inserted_at"],
        "outcome": None if state in (JobState.PENDING, JobState.DONE) else state,
        "ended_at": m["ended_at"],
        "on_failure": OnFailure(m["on_failure"]),
        "dead_letter_queue": m["dead_letter_queue"],
        "round_start": m["round_start"],
        "failing_since": m["failing_since"],
        "progress": None
        if m["progress_at"] is None
        else Progress(m["progress_message"], m["progress_fraction"], m["progress_at"]),
        "interventions": tuple(Intervention.from_json(i) for i in m["interventions"] or ()),
        "unique_key": m["unique_key"],
        "trace_context": m["trace_context"],
    }


def summary_from_mapping(m: Mapping[Any, Any]) -> JobSummary:
    """A `JobSummary` from a jobs row's values by column name (UTC times)."""
    return JobSummary(**_summary_fields(m))


def job_from_mapping(m: Mapping[Any, Any]) -> Job:
    """A `Job` from a jobs row's values by column name (UTC times)."""
    return Job(**_summary_fields(m), params=m["params"], result=m["result"])


def row_to_job(row: Row[Any]) -> Job:
    """A `Job` from a whole row of the jobs table."""
    return job_from_mapping(row._mapping)


def pending(jobs: sa.FromClause) -> sa.ColumnElement[bool]:
    """Jobs that hold their place in their queue: neither done nor ended otherwise."""
    return jobs.c.state == JobState.PENDING


def stored_states(state: str | None, available: bool | None) -> list[JobState]:
    """The stored states a listing by `state` (one of `STORED_STATES`) and `available`
    (pending or not) covers."""
    states = list(STORED_STATES)
    if state is not None:
        if state not in STORED_STATES:
            raise InvalidJobError(
                "state", state, f"must be one of {', '.join(map(str, STORED_STATES))}"
            )
        states = [JobState(state)]
    if available is not None:
        states = [s for s in states if (s is JobState.PENDING) == available]
    return states


def follows(
    first: sa.ColumnElement[Any], second: sa.ColumnElement[Any], after: Any, then: Any
) -> sa.ColumnElement[bool]:
    """Rows after `(after, then)` in the order of `(first, second)` (a keyset page),
    spelled so that every database seeks to it in an index on those columns (MariaDB
    does not for a row comparison: it reads what it skips)."""
    return sa.and_(first >= after, sa.or_(first > after, second > then))


def append_intervention(conn: Connection, jobs: sa.Table, job: Job, entry: Intervention) -> Job:
    """Add `entry` to `job`'s interventions (its free text normalised as every text
    column's is). The caller holds the job's queue row lock, and `job` is the row as read
    under it."""
    if entry.reason is not None:
        entry = replace(entry, reason=normalize_text(entry.reason))
    interventions = (*job.interventions, entry)
    conn.execute(
        jobs.update()
        .where(jobs.c.id == job.id)
        .values(interventions=[i.to_json() for i in interventions])
    )
    return replace(job, interventions=interventions)


def _new_job(scope: str, new: NewJob, row: Sequence[Any]) -> Job:
    """The `Job` a row just inserted from `new` holds (`row`: id, scheduled_at,
    inserted_at)."""
    job_id, scheduled_at, inserted_at = row
    return Job(
        id=job_id,
        scope=scope,
        queue=new.queue,
        action=new.action,
        params=new.params,
        timeout=new.timeout,
        max_backoff=new.max_backoff,
        max_attempts=new.max_attempts,
        attempts=0,
        attempted_at=None,
        attempted_by=None,
        next_attempt_at=scheduled_at,
        scheduled_at=scheduled_at,
        done_at=None,
        error=None,
        inserted_at=inserted_at,
        on_failure=new.on_failure,
        dead_letter_queue=new.dead_letter_queue,
        unique_key=new.unique_key,
        trace_context=new.trace_context,
    )


# The columns of a new job's row given by its `NewJob`.
_GIVEN = (
    "queue",
    "action",
    "params",
    "timeout_us",
    "max_backoff_us",
    "max_attempts",
    "on_failure",
    "dead_letter_queue",
)


def _traced(news: Sequence[NewJob]) -> bool:
    """Whether any of `news` has a trace context: only then do their inserts name the
    column (without tracing, the statements are those of schema version 5)."""
    return any(new.trace_context is not None for new in news)


def _insert_values(new: NewJob, traced: bool = False) -> dict[str, Any]:
    """The bound values of `new`'s insert; with `traced` (or a trace context), the trace
    context too (an insert of several rows binds the same columns for each)."""
    given = (
        new.queue,
        new.action,
        new.params,
        _us(new.timeout),
        _us(new.max_backoff),
        new.max_attempts,
        new.on_failure,
        new.dead_letter_queue,
    )
    values = {**dict(zip(_GIVEN, given, strict=True)), "given_scheduled_at": new.scheduled_at}
    if traced or new.trace_context is not None:
        values["trace_context"] = new.trace_context
    return values


def counted(created: Sequence[Job]) -> list[Enqueued]:
    """What `created` jobs add to their queues: how many, and the first in queue order."""
    firsts: dict[str, Job] = {}
    counts: dict[str, int] = {}
    for job in created:
        counts[job.queue] = counts.get(job.queue, 0) + 1
        first = firsts.get(job.queue)
        if first is None or (job.scheduled_at, job.id) < (first.scheduled_at, first.id):
            firsts[job.queue] = job
    return [Enqueued(queue, counts[queue], Head.of(j)) for queue, j in firsts.items()]


# The params one insert statement carries at most (bytes of JSON), however many jobs:
# a statement stays far below MariaDB's and MySQL's default `max_allowed_packet` (16 MiB).
_BATCH_BYTES = 4 * 1024 * 1024


# What an insert statement holds besides its params: the other columns, the SQL text.
_STATEMENT_OVERHEAD = 64 * 1024


def _by_size(news: Sequence[NewJob]) -> Iterator[Sequence[NewJob]]:
    """`news` in order, cut into batches of at most `_BATCH_BYTES` of params (a job
    larger than that alone)."""
    batch: list[NewJob] = []
    size = 0
    for new in news:
        if batch and size + new.params_bytes > _BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(new)
        size += new.params_bytes
    if batch:
        yield batch


# Inserts of a job with a unique key tried at most, while its holder keeps finishing
# between the insert that found the key held and the read of the holder.
_UNIQUE_TRIES = 5


@dataclass(frozen=True, slots=True)
class Created:
    """What `JobStore.create` gives: a job for each one asked for, in order, and those
    of them that were inserted (the others are the pending jobs that held their keys)."""

    jobs: list[Job]
    new: list[Job]


class JobStore:
    """Create and read the jobs of one scope."""

    def __init__(self, db: Database, scope: str) -> None:
        self.db = db
        self.scope = scope
        self.jobs = jobs = db.tables.jobs
        self.book = QueueBook(db)
        now = db.now()
        scheduled = sa.func.coalesce(
            sa.bindparam("given_scheduled_at", type_=jobs.c.scheduled_at.type), now
        )
        self._insert_plain = jobs.insert().values(
            scope=scope,
            attempts=0,
            state=JobState.PENDING,
            scheduled_at=scheduled,
            next_attempt_at=scheduled,
            inserted_at=now,
        )
        self._insert = self._insert_plain.returning(
            jobs.c.id, jobs.c.scheduled_at, jobs.c.inserted_at, sort_by_parameter_order=True
        )
        self._insert_unique = self._build_insert_unique(now, scheduled)
        # The pending job of the scope that holds a unique key.
        self._holder = sa.select(jobs).where(jobs.c.scope == scope, *unique_held(jobs, db.dialect))
        self._summaries = sa.select(*summary_columns(jobs)).where(jobs.c.scope == scope)
        # PostgreSQL, each with and without the trace context column.
        self._create_announced = (
            {traced: self._build_create_announced(traced) for traced in (False, True)}
            if db.dialect == "postgresql"
            else None
        )
        self._insert_many_pg = {
            traced: self._build_insert_many_pg(traced) for traced in (False, True)
        }

    def _build_insert_many_pg(self, traced: bool) -> sa.TextualSelect:
        """PostgreSQL: one INSERT ... SELECT FROM unnest(arrays) for many jobs, whatever
        their number: a short statement that psycopg does not parse again for every
        batch, as it would a long VALUES list. The ids follow the rows' ordinality.
        With `traced`, an array of trace contexts too."""
        jobs = self.jobs
        return sa.text(
            f"INSERT INTO {jobs.name} (scope, queue, action, params, timeout_us,"
            " max_backoff_us, max_attempts, on_failure, dead_letter_queue, attempts, state,"
            f" scheduled_at, next_attempt_at, inserted_at{', trace_context' if traced else ''})"
            " SELECT :scope, q, a, CAST(p AS json), t, b, m, f, d, 0, 'pending',"
            f" coalesce(s, now()), coalesce(s, now()), now(){', c' if traced else ''}"
            " FROM unnest(CAST(:queues AS text[]), CAST(:actions AS text[]),"
            " CAST(:params AS text[]), CAST(:timeouts AS bigint[]), CAST(:backoffs AS bigint[]),"
            " CAST(:maxes AS integer[]), CAST(:modes AS text[]), CAST(:letters AS text[]),"
            " CAST(:scheduled AS timestamptz[])"
            f"{', CAST(:traces AS text[])' if traced else ''})"
            f" WITH ORDINALITY AS n(q, a, p, t, b, m, f, d, s, {'c, ' if traced else ''}i)"
            " ORDER BY i RETURNING id, scheduled_at, inserted_at"
        ).columns(
            jobs.c.id, sa.column("scheduled_at", UtcDateTime), sa.column("inserted_at", UtcDateTime)
        )

    def _build_insert_unique(
        self, now: sa.ColumnElement[Any], scheduled: sa.ColumnElement[Any]
    ) -> sa.Insert | None:
        """PostgreSQL and SQLite: the insert of a job with a unique key that inserts
        nothing (and returns no row) when a pending job holds the key. None on MariaDB
        and MySQL, whose duplicate-key error fails the insert alone."""
        module = {"postgresql": postgresql, "sqlite": sqlite}.get(self.db.dialect)
        if module is None:
            return None
        jobs = self.jobs
        insert = module.insert(jobs).values(
            scope=self.scope,
            attempts=0,
            state=JobState.PENDING,
            scheduled_at=scheduled,
            next_attempt_at=scheduled,
            inserted_at=now,
        )
        return insert.on_conflict_do_nothing(  # type: ignore[no-any-return]
            index_elements=[jobs.c.scope, jobs.c.unique_key], index_where=sa.text(UNIQUE_HELD)
        ).returning(jobs.c.id, jobs.c.scheduled_at, jobs.c.inserted_at)

    def _build_create_announced(self, traced: bool) -> sa.Select[Any]:
        """PostgreSQL: the single-job insert, the count of the job into its queue's row,
        and its announcement, as one statement of data-modifying CTEs (with `traced`, the
        insert writes the trace context too)."""
        jobs = self.jobs
        given = (*_GIVEN, "trace_context") if traced else _GIVEN
        # Inside a CTE every column must be named with its bind parameter.
        created = (
            self._insert_plain.values({c: sa.bindparam(c, type_=jobs.c[c].type) for c in given})
            .returning(jobs.c.id, jobs.c.scheduled_at, jobs.c.inserted_at, jobs.c.queue)
            .cte("created")
        )
        # A new job is due at its scheduled time, and is not failing.
        counts = sa.select(
            sa.literal(self.scope, jobs.c.scope.type),
            created.c.queue,
            sa.literal(1),
            created.c.id,
            created.c.scheduled_at,
            created.c.scheduled_at,
            sa.null(),
        )
        counted = self.book.enqueued_from(counts).returning(sa.literal_column("1")).cte("counted")
        announced = notify(self.db.tables, sa.bindparam("b_payload", type_=sa.Text))
        return sa.select(
            created.c.id, created.c.scheduled_at, created.c.inserted_at, announced
        ).add_cte(counted)

    # -- creating ------------------------------------------------------------------------

    def create(
        self, conn: Connection, news: Sequence[NewJob], *, origin: str | None = None
    ) -> Created:
        """Insert jobs in `conn`'s transaction, their ids (so their order in a queue)
        following the order given, and count them into their queues. A job with a
        `unique_key` that a pending job of the scope holds is not inserted: that job
        stands for it. With `origin`, announce the new ones to the other nodes
        (PostgreSQL) as work of that instance."""
        if not news:
            return Created([], [])
        # PostgreSQL: one job is inserted, counted and announced in one statement.
        single = len(news) == 1 and news[0].unique_key is None
        if single and origin is not None and self._create_announced is not None:
            return self._create_announced_one(conn, news[0], origin)
        self._check_statement_size(conn, news)
        jobs: list[Job] = []
        new: list[Job] = []
        for keyed, run in itertools.groupby(news, key=lambda n: n.unique_key is not None):
            if keyed:
                for one in run:
                    job, inserted = self._create_unique(conn, one)
                    jobs.append(job)
                    if inserted:
                        new.append(job)
                continue
            unkeyed = list(run)
            rows = [row for batch in _by_size(unkeyed) for row in self._insert_batch(conn, batch)]
            made = [_new_job(self.scope, n, row) for n, row in zip(unkeyed, rows, strict=True)]
            jobs += made
            new += made
        self.book.enqueued(conn, self.scope, counted(new))
        if origin is not None and new:
            announce(conn, self.db.tables, self.scope, [j.queue for j in new], origin)
        return Created(jobs, new)

    def _create_unique(self, conn: Connection, new: NewJob) -> tuple[Job, bool]:
        """Insert `new` unless a pending job of the scope holds its key; the job that
        stands for it, and whether it was inserted."""
        values = {**_insert_values(new), "unique_key": new.unique_key}
        held = {"b_unique_key": new.unique_key}
        for _ in range(_UNIQUE_TRIES):
            row = self._insert_keyed(conn, values)
            if row is not None:
                return _new_job(self.scope, new, row), True
            # Held: by a job committed meanwhile, or by one inserted earlier in this
            # transaction. It may also have finished since (then the key is free again).
            found = conn.execute(self._holder, held).first()
            if found is not None:
                return row_to_job(found), False
        raise DatabaseError(
            f"unique_key {new.unique_key!r}: held, then free, {_UNIQUE_TRIES} times in a row"
        )

    def _insert_keyed(self, conn: Connection, values: dict[str, Any]) -> tuple[Any, ...] | None:
        """Insert a job with a unique key; None when a pending job holds the key."""
        if self._insert_unique is not None:
            found = conn.execute(self._insert_unique, values).first()
            return None if found is None else tuple(found)
        try:  # MariaDB/MySQL: a duplicate key fails the statement alone, not the transaction
            return self._insert_one(conn, values)
        except IntegrityError as exc:
            if f"ux_{self.db.tables.prefix}jobs_unique_key" in str(exc.orig):
                return None
            raise

    def _check_statement_size(self, conn: Connection, news: Sequence[NewJob]) -> None:
        """Refuse params that would make an insert longer than the server accepts (see
        `Database.statement_limit`), before sending it."""
        limit = self.db.statement_limit(conn)
        if limit is None:
            return
        room = limit - _STATEMENT_OVERHEAD
        for index, new in enumerate(news):
            if new.params_bytes > room:
                where = "params" if len(news) == 1 else f"jobs[{index}].params"
                raise InvalidJobError(
                    where,
                    "...",
                    f"is {new.params_bytes:,} bytes of JSON, more than the server's"
                    f" max_allowed_packet ({limit:,}) lets one statement carry",
                )

    def _insert_batch(self, conn: Connection, news: Sequence[NewJob]) -> list[tuple[Any, ...]]:
        """Insert `news` in one statement where the database can (ids in their order)."""
        dialect = conn.dialect
        if len(news) > 1 and dialect.name == "postgresql":
            return self._insert_unnest(conn, news)
        if len(news) > 1 and dialect.insert_executemany_returning_sort_by_parameter_order:
            traced = _traced(news)
            values = [_insert_values(n, traced) for n in news]
            return [tuple(r) for r in conn.execute(self._insert, values)]
        return [self._insert_one(conn, _insert_values(new)) for new in news]

    def create_one(self, new: NewJob, *, origin: str) -> Created:
        """Create one job, committed by itself and announced as work of `origin`.
        PostgreSQL inserts it, counts it into its queue and announces it in one
        autocommitted statement (one round trip); the others in one transaction."""
        if self._create_announced is None or new.unique_key is not None:
            with self.db.transaction() as conn:
                return self.create(conn, [new], origin=origin)
        with self.db.autocommit() as conn:
            return self._create_announced_one(conn, new, origin)

    def _create_announced_one(self, conn: Connection, new: NewJob, origin: str) -> Created:
        """PostgreSQL: insert `new`, count it into its queue and announce it, in one
        statement on `conn`."""
        assert self._create_announced is not None
        payload = Announcement(self.scope, new.queue, origin).to_payload()
        statement = self._create_announced[new.trace_context is not None]
        row = conn.execute(statement, {**_insert_values(new), "b_payload": payload}).one()
        job = _new_job(self.scope, new, row[:3])
        return Created([job], [job])

    def _insert_one(self, conn: Connection, values: dict[str, Any]) -> tuple[Any, ...]:
        if conn.dialect.insert_returning:
            return tuple(conn.execute(self._insert, values).one())
        # MySQL: no INSERT ... RETURNING.
        inserted = conn.execute(self._insert_plain, values).inserted_primary_key
        assert inserted is not None
        jobs = self.jobs
        return tuple(
            conn.execute(
                sa.select(jobs.c.id, jobs.c.scheduled_at, jobs.c.inserted_at).where(
                    jobs.c.id == inserted[0]
                )
            ).one()
        )

    def _insert_unnest(self, conn: Connection, news: Sequence[NewJob]) -> list[tuple[Any, ...]]:
        """PostgreSQL: many jobs in one short statement, one array per column."""
        columns = zip(
            *(
                (
                    n.queue,
                    n.action,
                    json.dumps(n.params, separators=(",", ":")),
                    _us(n.timeout),
                    _us(n.max_backoff),
                    n.max_attempts,
                    n.on_failure.value,
                    n.dead_letter_queue,
                    n.scheduled_at,
                )
                for n in news
            ),
            strict=True,
        )
        params: dict[str, Any] = {n: list(c) for n, c in zip(_UNNEST, columns, strict=True)}
        params["scope"] = self.scope
        traced = _traced(news)
        if traced:
            params["traces"] = [n.trace_context for n in news]
        rows = conn.execute(self._insert_many_pg[traced], params)
        return sorted((tuple(r) for r in rows), key=lambda r: int(r[0]))

    # -- reading ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """The job with this id in this scope, or None."""
        jobs = self.jobs
        with self.db.transaction() as conn:
            row = conn.execute(
                sa.select(jobs).where(jobs.c.scope == self.scope, jobs.c.id == job_id)
            ).first()
        return None if row is None else row_to_job(row)

    def summary(self, job_id: int) -> JobSummary | None:
        """The job with this id in this scope, without its params and result."""
        with self.db.transaction() as conn:
            row = conn.execute(self._summaries.where(self.jobs.c.id == job_id)).first()
        return None if row is None else summary_from_mapping(row._mapping)

    def result(self, job_id: int) -> Any:
        """The stored result of the job with this id in this scope (None if none)."""
        jobs = self.jobs
        with self.db.transaction() as conn:
            return conn.execute(
                sa.select(jobs.c.result).where(jobs.c.scope == self.scope, jobs.c.id == job_id)
            ).scalar()

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        action: str | None = None,
        available: bool | None = None,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: int | None = None,
    ) -> list[Job]:
        """Jobs of this scope in queue order (`scheduled_at`, then sequence).

        `after` (a job id) lists the jobs that follow that job in this order (keyset
        pagination: its cost follows the page, not the history before it). The listing
        merges one index range per stored state, each read at most `offset + limit`
        rows deep.
        """
        columns: list[sa.Column[Any]] = list(self.jobs.c)
        rows = self._rows(columns, queue, action, available, state, limit, offset, after)
        return [job_from_mapping(r._mapping) for r in rows]

    def _rows(
        self,
        columns: list[sa.Column[Any]],
        queue: str | None,
        action: str | None,
        available: bool | None,
        state: str | None,
        limit: int | None,
        offset: int,
        after: int | None,
    ) -> Sequence[Row[Any]]:
        jobs = self.jobs
        states = stored_states(state, available)
        with self.db.transaction() as conn:
            bound: tuple[datetime, int] | None = None
            if after is not None:
                at = conn.execute(
                    sa.select(jobs.c.scheduled_at).where(
                        jobs.c.scope == self.scope, jobs.c.id == after
                    )
                ).scalar()
                if at is None:
                    raise InvalidJobError("after", after, "no such job in this scope")
                bound = (at, after)
            depth = None if limit is None else offset + limit
            parts = [
                self._part(columns, s, queue, action, bound, depth).subquery(f"s{i}")
                for i, s in enumerate(states)
            ]
            merged = (
                parts[0]
                if len(parts) == 1
                else sa.union_all(*(sa.select(p) for p in parts)).subquery("merged")
            )
            stmt = (
                sa.select(merged)
                .order_by(merged.c.scheduled_at, merged.c.id)
                .offset(offset)
                .limit(limit)
            )
            return conn.execute(stmt).all()

    def _part(
        self,
        columns: list[sa.Column[Any]],
        state: JobState,
        queue: str | None,
        action: str | None,
        bound: tuple[datetime, int] | None,
        depth: int | None,
    ) -> sa.Select[Any]:
        """One stored state's jobs in queue order, read by index."""
        jobs = self.jobs
        stmt = sa.select(*columns).where(jobs.c.scope == self.scope, jobs.c.state == state)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if action is not None:
            stmt = stmt.where(jobs.c.action == action)
        if bound is not None:
            stmt = stmt.where(follows(jobs.c.scheduled_at, jobs.c.id, *bound))
        return stmt.order_by(jobs.c.scheduled_at, jobs.c.id).limit(depth)

    def count(
        self,
        *,
        queue: str | None = None,
        action: str | None = None,
        available: bool | None = None,
        state: str | None = None,
    ) -> int:
        """How many jobs `list_jobs` would return without a limit (its cost grows with that
        number: keyset pages need no count)."""
        jobs = self.jobs
        stmt = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.scope == self.scope, jobs.c.state.in_(stored_states(state, available)))
        )
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if action is not None:
            stmt = stmt.where(jobs.c.action == action)
        with self.db.transaction() as conn:
            return int(conn.execute(stmt).scalar_one())
