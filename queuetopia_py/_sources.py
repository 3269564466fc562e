"""Row-sourced queues: an application's own table becomes a queue.

A `RowSource` given to a Queuetopia class (`source=`) names a table; once
`install_source` has put its trigger in place, every matching row inserted into that
table creates one job of the class's scope in the inserting transaction: no enqueue call
in application code, and no window where a row exists without its job. See
docs/row-sources.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.sql import visitors

from queuetopia_py._errors import ConfigurationError
from queuetopia_py._job import NewJob, to_on_failure
from queuetopia_py._schema import build_tables
from queuetopia_py._store.database import Database, create_engine, named_lock, translate
from queuetopia_py._store.sources import (
    EVENTS,
    Installed,
    SourceDDL,
    SourceSpec,
    installed,
    trigger_name,
)

if TYPE_CHECKING:
    from queuetopia_py._options import Options
    from queuetopia_py._queuetopia import Queuetopia

#: What `install_source` and its siblings accept as the database.
Repo = str | URL | Engine | Connection

# Rows a backfill reads and enqueues per transaction.
_BACKFILL_BATCH = 1000


class RowSource:
    """A table whose matching rows become jobs (Honeydew's Ecto Poll Queue, made strict).

    >>> RowSource(photos, key=photos.c.album_id, when=photos.c.tag.is_(None))

    - `table`: a SQLAlchemy `Table`, or an ORM model class. It needs a primary key: a
      job's params are the row's primary key columns, by name.
    - `key`: a column (or a column's name) whose value names the queue, `<table>:<key
      value>`: rows of the same key run strictly in order, one at a time, and different
      keys in parallel. Without it, every row is a queue of its own,
      `<table>:<primary key>`. A NULL key is the empty one (`<table>:`).
    - `when`: a boolean SQLAlchemy expression over the table's columns; a row that does
      not match it gets no job.
    - `on`: the events that enqueue a row: `("insert",)`, or with `"update"`, also an
      update that makes `when` true where it was not before (which needs `when`).
    """

    __slots__ = ("key", "on", "table", "when")

    def __init__(
        self,
        table: Any,
        *,
        key: Any = None,
        when: Any = None,
        on: Sequence[str] = ("insert",),
    ) -> None:
        self.table: sa.Table = _table(table)
        self.key: sa.Column[Any] | None = None if key is None else _column(self.table, key)
        self.when: sa.ColumnElement[bool] | None = None if when is None else _when(self.table, when)
        self.on: tuple[str, ...] = _events(on, self.when)

    def __repr__(self) -> str:
        key = None if self.key is None else self.key.name
        return f"RowSource({self.table.name!r}, key={key!r}, on={self.on!r})"


def _table(table: Any) -> sa.Table:
    found = getattr(table, "__table__", table)
    if not isinstance(found, sa.Table):
        raise ConfigurationError(
            f"source: table must be a SQLAlchemy Table or an ORM model class (got {table!r})"
        )
    if not found.primary_key.columns:
        raise ConfigurationError(
            f"source: table {found.name!r} has no primary key (a job's params are its row's"
            " primary key)"
        )
    return found


def _column(table: sa.Table, key: Any) -> sa.Column[Any]:
    if isinstance(key, str):
        if key not in table.c:
            raise ConfigurationError(f"source: key {key!r} is not a column of {table.name!r}")
        return table.c[key]
    column = getattr(key, "expression", key)  # an ORM attribute
    if not isinstance(column, sa.Column) or column.table is not table:
        raise ConfigurationError(
            f"source: key must be a column of {table.name!r} or its name (got {key!r})"
        )
    return column


def _when(table: sa.Table, when: Any) -> sa.ColumnElement[bool]:
    if not isinstance(when, sa.ColumnElement):
        raise ConfigurationError(
            f"source: when must be a SQLAlchemy boolean expression (got {when!r})"
        )
    for element in visitors.iterate(when):
        if isinstance(element, sa.Column) and element.table is not table:
            raise ConfigurationError(
                f"source: when may only read columns of {table.name!r} (it reads"
                f" {element.table.name}.{element.name})"
            )
    return when


def _events(on: Any, when: sa.ColumnElement[bool] | None) -> tuple[str, ...]:
    if isinstance(on, str) or not isinstance(on, Sequence):
        raise ConfigurationError(f"source: on must be a tuple of events (got {on!r})")
    events = tuple(dict.fromkeys(on))
    if not events or any(event not in EVENTS for event in events):
        raise ConfigurationError(
            f"source: on must name events among {', '.join(EVENTS)} (got {on!r})"
        )
    if "update" in events and when is None:
        raise ConfigurationError(
            "source: on=('update',) enqueues a row when an update makes `when` true: it needs when="
        )
    return tuple(event for event in EVENTS if event in events)


# -- the database side ------------------------------------------------------------------


def source_spec(options: Options) -> SourceSpec | None:
    """What the triggers of an instance's source are built from (None: no source)."""
    source = options.source
    if source is None:
        return None
    mode, dead_letter = to_on_failure(options.on_failure)
    return SourceSpec(
        scope=options.scope,
        table=source.table,
        key=source.key,
        when=source.when,
        on=source.on,
        timeout=options.timeout,
        max_backoff=options.max_backoff,
        max_attempts=options.max_attempts,
        on_failure=mode.value,
        dead_letter_queue=dead_letter,
    )


def _options_of(queue: type[Queuetopia] | Queuetopia) -> Options:
    from queuetopia_py._options import Options
    from queuetopia_py._queuetopia import _BASE_SCOPE, Queuetopia, default_scope

    if isinstance(queue, Queuetopia):
        return queue.options
    if isinstance(queue, type) and issubclass(queue, Queuetopia):
        # The repo given to the function is the one used: any stands in for it here.
        options = {**queue._class_options, "repo": "sqlite://"}
        scope = _BASE_SCOPE if queue is Queuetopia else default_scope(queue)
        return Options.parse(options, scope)
    raise ConfigurationError(f"expected a Queuetopia class or instance (got {queue!r})")


def _spec_of(queue: type[Queuetopia] | Queuetopia) -> tuple[SourceSpec, str]:
    options = _options_of(queue)
    spec = source_spec(options)
    if spec is None:
        name = getattr(queue, "__qualname__", type(queue).__qualname__)
        raise ConfigurationError(f"{name} has no source: give it source=RowSource(...)")
    return spec, options.table_prefix


@contextmanager
def _connected(repo: Repo, prefix: str) -> Iterator[tuple[Connection, Database]]:
    """A connection in a transaction (the caller's, for a Connection; else committed at
    the end) and the Database of these tables."""
    if isinstance(repo, Connection):
        yield repo, Database(repo.engine, build_tables(prefix))
        return
    engine = repo if isinstance(repo, Engine) else create_engine(repo)
    try:
        with engine.begin() as conn:
            yield conn, Database(engine, build_tables(prefix))
    except sa.exc.DBAPIError as exc:
        raise translate(exc) from exc
    finally:
        if not isinstance(repo, Engine):
            engine.dispose()


def _check_tables(conn: Connection, db: Database) -> None:
    from queuetopia_py._errors import SchemaMissingError
    from queuetopia_py.migrations import LATEST, current_version

    if current_version(conn, db.tables.prefix) < LATEST:
        raise SchemaMissingError(
            "the queuetopia tables are missing or out of date: run `queuetopia migrate URL`"
            " or queuetopia_py.migrate(url) before installing a source"
        )


def install_source(repo: Repo, queue: type[Queuetopia] | Queuetopia) -> None:
    """Install what the database needs for `queue`'s source (its triggers). Idempotent:
    an up-to-date source is left alone, an outdated one replaced. Rows that exist already
    get no job (see `backfill_source`). With a `Connection`, the statements join its
    transaction (PostgreSQL and SQLite: they take effect when it commits)."""
    spec, prefix = _spec_of(queue)
    with _connected(repo, prefix) as (conn, db):
        _check_tables(conn, db)
        ddl = SourceDDL(db, spec)
        existing = installed(conn, db.tables)
        statements: list[str] = []
        for event in spec.on:
            if _trigger_problem(db, ddl, existing, event) is not None:
                statements += ddl.install(event, existing)
        # A trigger of an event the source no longer has.
        stale = [f for f in existing if f.scope == spec.scope and f.event not in spec.on]
        _run(conn, [*statements, *ddl.uninstall(stale, functions=False)])


def uninstall_source(repo: Repo, queue: type[Queuetopia] | Queuetopia) -> None:
    """Remove `queue`'s source from the database (its triggers); rows inserted afterwards
    get no job. The jobs it created stay. Idempotent."""
    spec, prefix = _spec_of(queue)
    with _connected(repo, prefix) as (conn, db):
        _run(conn, SourceDDL(db, spec).uninstall(installed(conn, db.tables)))


def _run(conn: Connection, statements: Sequence[str]) -> None:
    for statement in statements:
        try:
            conn.exec_driver_sql(statement)
        except sa.exc.DBAPIError as exc:
            raise _privilege_error(exc) or translate(exc) from exc


# MariaDB's and MySQL's refusals to create a trigger: no TRIGGER privilege (1142), or
# binary logging on without SUPER (1419, and 1227 from MySQL).
_PRIVILEGE_CODES = (1142, 1227, 1419)


def _privilege_error(exc: sa.exc.DBAPIError) -> ConfigurationError | None:
    args = getattr(exc.orig, "args", ())
    if not args or args[0] not in _PRIVILEGE_CODES:
        return None
    return ConfigurationError(
        f"the database user may not create triggers ({args[1] if len(args) > 1 else args[0]})."
        " Grant it: GRANT TRIGGER ON <database>.* TO <user>; with binary logging on, also"
        " SET GLOBAL log_bin_trust_function_creators = 1 (or install as a user with SUPER)."
    )


def check_installed(db: Database, options: Options, owner: str) -> None:
    """Raise `ConfigurationError` naming the fix unless the source of the instance of
    class `owner` is installed as this code would install it, and enabled (called by
    `start`)."""
    spec = source_spec(options)
    if spec is None:
        return
    try:
        with db.engine.connect() as conn:
            found = installed(conn, db.tables)
    except sa.exc.DBAPIError as exc:
        raise translate(exc) from exc
    problem = source_problem(db, spec, found)
    if problem is not None:
        raise ConfigurationError(
            f"source: {problem}: run queuetopia_py.install_source(url, {owner})"
            f" (or `queuetopia rows install MODULE:{owner}`)"
        )


def source_problem(db: Database, spec: SourceSpec, found: Sequence[Installed]) -> str | None:
    """What is wrong with the installed triggers of `spec`'s scope (None: nothing)."""
    ddl = SourceDDL(db, spec)
    where = f"the row source of scope {spec.scope!r} on table {spec.table.name!r}"
    for event in spec.on:
        problem = _trigger_problem(db, ddl, found, event)
        if problem is not None:
            return f"{where} {problem}"
    extra = [f for f in found if f.scope == spec.scope and f.event not in spec.on]
    if extra:
        return f"{where} was installed from a different definition (on {extra[0].event})"
    return None


def _trigger_problem(
    db: Database, ddl: SourceDDL, found: Sequence[Installed], event: str
) -> str | None:
    """What is wrong with the installed trigger of `event` (None: it is current)."""
    name = trigger_name(db.tables, ddl.spec.scope, event)
    mine = [f for f in found if f.name == name]
    if not mine:
        if any(f.scope == ddl.spec.scope for f in found):
            return f"was installed from a different definition (no trigger for {event})"
        return f"is not installed (no trigger {name} for {event})"
    if len(mine) > 1 or mine[0].table != ddl.spec.table.name:
        return f"is installed on another table ({mine[0].table})"
    if not mine[0].enabled:
        return f"is disabled (trigger {name})"
    if mine[0].fingerprint != ddl.fingerprint(event):
        return "was installed from a different definition"
    return None


def backfill_source(repo: Repo, queue: type[Queuetopia] | Queuetopia, where: Any = None) -> int:
    """Create jobs, in primary-key order, for the rows of `queue`'s source table that
    match its `when` (and `where`, a boolean expression over the table) and have no job
    of the scope; return how many. Running it again creates nothing more, and backfills
    of one scope take turns. A row whose job was done and then deleted by the cleaner
    counts as never having had one: run it right after `install_source`. With a
    `Connection`, every job is created in its transaction; otherwise a thousand rows a
    transaction."""
    spec, prefix = _spec_of(queue)
    if where is not None:
        where = _when(spec.table, where)
    if isinstance(repo, Connection):
        db = Database(repo.engine, build_tables(prefix))
        _check_tables(repo, db)
        return _backfill(repo, db, spec, where, limit=None)
    engine = repo if isinstance(repo, Engine) else create_engine(repo)
    db = Database(engine, build_tables(prefix))
    digest = hashlib.sha256(spec.scope.encode("utf-8")).hexdigest()[:12]
    created = 0
    try:
        with (
            engine.connect() as conn,
            named_lock(conn, f"queuetopia_backfill_{prefix}{digest}", "another backfill"),
        ):
            conn.commit()
            _check_tables(conn, db)
            conn.commit()
            while True:
                with conn.begin():
                    batch = _backfill(conn, db, spec, where, limit=_BACKFILL_BATCH)
                created += batch
                if batch < _BACKFILL_BATCH:
                    return created
    except sa.exc.DBAPIError as exc:
        raise translate(exc) from exc
    finally:
        if not isinstance(repo, Engine):
            engine.dispose()


def _backfill(
    conn: Connection, db: Database, spec: SourceSpec, where: Any, *, limit: int | None
) -> int:
    """Create the jobs of up to `limit` rows without one (None: all) in `conn`'s
    transaction; how many."""
    from queuetopia_py._store.jobs import JobStore

    rows = conn.execute(_backfill_select(db, spec, where).limit(limit)).all()
    on_failure = to_on_failure(spec.on_failure)[0]
    news = [
        NewJob(
            queue=queue_name,
            action=spec.table.name,
            params=params,
            timeout=spec.timeout,
            max_backoff=spec.max_backoff,
            max_attempts=spec.max_attempts,
            scheduled_at=None,
            on_failure=on_failure,
            dead_letter_queue=spec.dead_letter_queue,
        )
        for queue_name, params in rows
    ]
    JobStore(db, spec.scope).create(conn, news, origin="backfill")
    return len(news)


def _backfill_select(db: Database, spec: SourceSpec, where: Any) -> sa.Select[Any]:
    """The next rows to enqueue: matching, without a job, in primary-key order."""
    ddl = SourceDDL(db, spec)
    table, jobs = spec.table, db.tables.jobs
    row = {column: column for column in table.columns}
    queue = ddl.queue_of(row)
    had = sa.exists().where(
        jobs.c.scope == spec.scope,
        jobs.c.queue == queue,
        jobs.c.action == table.name,
        *(
            jobs.c.params[column.name].as_string() == sa.cast(column, sa.String)
            for column in table.primary_key.columns
        ),
    )
    conditions = [ddl.matches(row), sa.not_(had)]
    if where is not None:
        conditions.append(where)
    return (
        sa.select(queue, ddl.params_of(row)).where(*conditions).order_by(*table.primary_key.columns)
    )


@dataclass(frozen=True, slots=True)
class SourceReport:
    """An installed source trigger, as `queuetopia rows list` shows it: where it is, and
    how the queues of its scope stand (pending jobs, and queues blocked by a failing
    head)."""

    scope: str | None
    table: str
    event: str
    trigger: str
    enabled: bool
    pending: int
    blocked: int


def installed_sources(repo: str | URL | Engine, prefix: str) -> list[SourceReport]:
    """The source triggers installed in the database of `repo` for these tables."""
    with _connected(repo, prefix) as (conn, db):
        found = installed(conn, db.tables)
        queues = db.tables.queues
        scopes = sorted({f.scope for f in found if f.scope is not None})
        counts = {
            scope: (int(pending or 0), int(blocked or 0))
            for scope, pending, blocked in conn.execute(
                sa.select(
                    queues.c.scope,
                    sa.func.sum(queues.c.pending),
                    sa.func.count(queues.c.blocked_since),
                )
                .where(queues.c.scope.in_(scopes))
                .group_by(queues.c.scope)
            )
        }
    return [
        SourceReport(
            f.scope, f.table, f.event, f.name, f.enabled, *counts.get(f.scope or "", (0, 0))
        )
        for f in found
    ]


def problem_of(repo: Repo, queue: type[Queuetopia] | Queuetopia) -> str | None:
    """What stops `queue`'s source from being used as defined (None: nothing), as
    `start` would say it."""
    spec, prefix = _spec_of(queue)
    with _connected(repo, prefix) as (conn, db):
        return source_problem(db, spec, installed(conn, db.tables))
