"""The database side of row-sourced queues: the triggers that turn a matching row of an
application's table into a job of a scope, in the inserting transaction, and what the
database's catalog says of the triggers installed.

A source of a scope has one trigger per event (`insert`, `update`), named after the
table prefix and a hash of the scope. Its body inserts the job (queue, action, params
and options computed from the row), counts it into its queue's row with the statement
`create_job` uses (`QueueBook.enqueued_from`), and on PostgreSQL announces it. Each body
starts with a comment that carries the source's description and a fingerprint of the
body: a trigger whose fingerprint differs from the one this code would install is
outdated.

- PostgreSQL: a PL/pgSQL function per trigger, `AFTER ... FOR EACH ROW`.
- MariaDB and MySQL: `BEGIN ... END` bodies (`CREATE OR REPLACE TRIGGER` on MariaDB).
- SQLite: `WHEN` conditions and statement lists; the job's id is `last_insert_rowid()`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import visitors

from queuetopia_py import defaults
from queuetopia_py._job import JobState
from queuetopia_py._schema import Tables, UtcDateTime
from queuetopia_py._store.announcements import channel
from queuetopia_py._store.database import Database
from queuetopia_py._store.queues import QueueBook

#: The events a source may enqueue on.
EVENTS = ("insert", "update")
#: The origin named in a trigger's announcements: no instance, so every node is woken.
ORIGIN = "row-source"
# The comment opening every trigger body: the source's description, as JSON.
_MARK = "queuetopia_py source "
_MARKED = re.compile(r"queuetopia_py source (\{[^\n]*\})")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """What a scope's triggers are built from: the source's table and its rules, and
    the options its jobs take (see `RowSource` for `key`, `when` and `on`)."""

    scope: str
    table: sa.Table
    key: sa.Column[Any] | None
    when: sa.ColumnElement[bool] | None
    on: tuple[str, ...]
    timeout: timedelta
    max_backoff: timedelta
    max_attempts: int
    on_failure: str
    dead_letter_queue: str | None


@dataclass(frozen=True, slots=True)
class Installed:
    """A source trigger found in the database's catalog."""

    name: str
    table: str
    event: str
    scope: str | None
    fingerprint: str | None
    enabled: bool


def trigger_name(tables: Tables, scope: str, event: str) -> str:
    """The name of the trigger of `scope`'s source for `event` (at most 63 characters:
    PostgreSQL's limit for a name)."""
    digest = hashlib.sha256(scope.encode("utf-8")).hexdigest()[:12]
    return f"{tables.prefix}src_{digest}_{event[:3]}"


def _us(value: timedelta) -> int:
    return value // timedelta(microseconds=1)


class SourceDDL:
    """The statements that install and remove a scope's source on one database."""

    def __init__(self, db: Database, spec: SourceSpec) -> None:
        self.db = db
        self.spec = spec
        self.dialect: Dialect = db.engine.dialect
        self.tables = db.tables
        self.book = QueueBook(db)

    # -- expressions over a row (NEW or OLD) ---------------------------------------------

    def _row(self, which: str) -> dict[sa.Column[Any], sa.ColumnElement[Any]]:
        """The source table's columns as the trigger sees them in row `which`."""
        quote = self.dialect.identifier_preparer.quote
        return {
            column: sa.literal_column(f"{which}.{quote(column.name)}", type_=column.type)
            for column in self.spec.table.columns
        }

    def _over(self, expression: sa.ColumnElement[Any], row: dict[Any, Any]) -> Any:
        """`expression` with the source table's columns replaced by `row`'s."""

        def replace(element: Any, **_: Any) -> Any:
            return row.get(element) if isinstance(element, sa.Column) else None

        return visitors.replacement_traverse(expression, {}, replace)

    def queue_of(self, row: dict[Any, Any]) -> sa.ColumnElement[str]:
        """The queue of the job of `row`: `<table>:<key value>` (or `<table>:<primary
        key>`, its columns joined by commas), cut at the longest name a queue may have. A
        NULL key is the empty key."""
        spec = self.spec
        parts = [spec.key] if spec.key is not None else list(spec.table.primary_key.columns)
        text: sa.ColumnElement[str] = sa.literal(f"{spec.table.name}:", sa.String)
        for index, column in enumerate(parts):
            if index:
                text = text.concat(sa.literal(",", sa.String))
            value = sa.func.coalesce(sa.cast(row[column], sa.String), sa.literal("", sa.String))
            text = text.concat(value)
        return sa.func.substr(text, 1, defaults.MAX_NAME_LENGTH, type_=sa.String)

    def params_of(self, row: dict[Any, Any]) -> sa.ColumnElement[Any]:
        """The params of the job of `row`: its primary key's columns, by name."""
        pairs: list[Any] = []
        for column in self.spec.table.primary_key.columns:
            pairs += [sa.literal(column.name, sa.String), row[column]]
        if self.dialect.name == "postgresql":
            return sa.func.json_build_object(*pairs, type_=sa.JSON)
        return sa.func.json_object(*pairs, type_=sa.JSON)

    def matches(self, row: dict[Any, Any]) -> sa.ColumnElement[bool]:
        """Whether `row` matches the source's `when` (as 1 = 1 when it has none): a
        condition that is true, never NULL."""
        when = self.spec.when
        if when is None:
            return sa.literal(1) == 1
        return sa.case((self._over(when, row), 1), else_=0) == 1

    # -- the statements of a trigger body -------------------------------------------------

    def _sql(self, statement: Any) -> str:
        try:
            compiled = statement.compile(
                dialect=self.dialect, compile_kwargs={"literal_binds": True}
            )
        except sa.exc.CompileError as exc:
            raise ValueError(f"cannot be written into a trigger: {exc}") from None
        return str(compiled).strip()

    def _now(self) -> sa.ColumnElement[Any]:
        name = self.dialect.name
        if name == "postgresql":
            return sa.literal_column("now()", UtcDateTime())
        if name in ("mysql", "mariadb"):
            return sa.literal_column("v_now", UtcDateTime())
        # SQLite: the text SQLAlchemy writes (microseconds; SQLite's clock has milliseconds).
        return sa.literal_column("strftime('%Y-%m-%d %H:%M:%f000', 'now')", UtcDateTime())

    def _insert_job(self, row: dict[Any, Any]) -> str:
        """The insert of the job of `row` (on PostgreSQL, returning its id and queue)."""
        spec, jobs, now = self.spec, self.tables.jobs, self._now()
        values: dict[str, Any] = {
            "scope": sa.literal(spec.scope, sa.String),
            "queue": self.queue_of(row),
            "action": sa.literal(spec.table.name, sa.String),
            "params": self.params_of(row),
            "timeout_us": sa.literal(_us(spec.timeout), sa.BigInteger),
            "max_backoff_us": sa.literal(_us(spec.max_backoff), sa.BigInteger),
            "max_attempts": sa.literal(spec.max_attempts, sa.Integer),
            "on_failure": sa.literal(spec.on_failure, sa.String),
            "dead_letter_queue": (
                sa.null()
                if spec.dead_letter_queue is None
                else sa.literal(spec.dead_letter_queue, sa.String)
            ),
            "attempts": sa.literal(0, sa.Integer),
            "state": sa.literal(JobState.PENDING.value, sa.String),
            "scheduled_at": now,
            "next_attempt_at": now,
            "inserted_at": now,
        }
        insert = jobs.insert().values(values)
        if self.dialect.name == "postgresql":
            return self._sql(insert.returning(jobs.c.id, jobs.c.queue))
        return self._sql(insert)

    def _count_job(self, job_id: sa.ColumnElement[Any]) -> str:
        """The upsert that counts the new job (id `job_id`) into its queue's row."""
        jobs = self.tables.jobs
        new = sa.select(
            jobs.c.scope,
            jobs.c.queue,
            sa.literal(1, sa.Integer),
            jobs.c.id,
            jobs.c.scheduled_at,
            jobs.c.scheduled_at,
            sa.null(),
        ).where(jobs.c.id == job_id)
        return self._sql(self.book.enqueued_from(new))

    def condition(self, event: str) -> str:
        """When the trigger of `event` creates a job: the row matches, and for an update,
        did not before."""
        new = self.matches(self._row("NEW"))
        if event == "update":
            new = sa.and_(new, sa.not_(self.matches(self._row("OLD"))))
        return self._sql(new)

    # -- whole triggers ----------------------------------------------------------------------

    def body(self, event: str) -> str:
        """What the trigger of `event` runs, without its description comment."""
        name = self.dialect.name
        if name == "postgresql":
            announce = self._sql(
                sa.select(
                    sa.func.pg_notify(
                        sa.literal(channel(self.tables), sa.String),
                        sa.cast(
                            sa.func.json_build_array(
                                sa.literal(self.spec.scope, sa.String),
                                sa.literal_column("v_queue", sa.String),
                                sa.literal(ORIGIN, sa.String),
                            ),
                            sa.Text,
                        ),
                    )
                )
            )
            return (
                "DECLARE\n  v_id bigint;\n  v_queue text;\nBEGIN\n"
                f"  IF ({self.condition(event)}) THEN\n"
                f"    {self._insert_job(self._row('NEW'))} INTO v_id, v_queue;\n"
                f"    {self._count_job(sa.literal_column('v_id'))};\n"
                f"    PERFORM {announce.removeprefix('SELECT ')};\n"
                "  END IF;\n  RETURN NULL;\nEND"
            )
        if name in ("mysql", "mariadb"):
            return (
                "BEGIN\n  DECLARE v_now DATETIME(6);\n"
                f"  IF ({self.condition(event)}) THEN\n"
                "    SET v_now = UTC_TIMESTAMP(6);\n"
                f"    {self._insert_job(self._row('NEW'))};\n"
                f"    {self._count_job(sa.func.last_insert_id())};\n"
                "  END IF;\nEND"
            )
        # SQLite: an INSERT ... SELECT followed by ON CONFLICT needs a WHERE to parse,
        # which the count has.
        return (
            f"WHEN ({self.condition(event)})\nBEGIN\n"
            f"  {self._insert_job(self._row('NEW'))};\n"
            f"  {self._count_job(sa.func.last_insert_rowid())};\nEND"
        )

    def fingerprint(self, event: str) -> str:
        """A digest of the trigger of `event`: what it runs and on which table."""
        text = f"{self.table_name()}\n{event}\n{self.body(event)}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def table_name(self) -> str:
        """The source table's name as the statements write it (quoted, with its schema)."""
        table = self.spec.table
        preparer = self.dialect.identifier_preparer
        return preparer.format_table(table)

    def _description(self, event: str) -> str:
        described = {
            "scope": self.spec.scope,
            "table": self.spec.table.name,
            "event": event,
            "fingerprint": self.fingerprint(event),
        }
        # JSON escapes every control character: the comment stays on its line.
        comment = "-- " + _MARK + json.dumps(described, sort_keys=True)
        if self.dialect.paramstyle in ("format", "pyformat"):
            # Sent as the rest of the statement is: through the driver's formatting.
            comment = comment.replace("%", "%%")
        return comment

    def install(self, event: str, existing: Sequence[Installed]) -> list[str]:
        """The statements that install the trigger of `event`, replacing `existing`
        triggers of the same name (on this table or another)."""
        name = trigger_name(self.tables, self.spec.scope, event)
        quoted = self.dialect.identifier_preparer.quote(name)
        table = self.table_name()
        when = "INSERT" if event == "insert" else "UPDATE"
        dialect = self.dialect.name
        drops = [self._drop(found) for found in existing if found.name == name]
        if dialect == "postgresql":
            tag = "$queuetopia$"
            body = self.body(event)
            if tag in body:
                raise ValueError(f"the source's condition may not contain {tag}")
            # The body names the queuetopia tables as installing found them, whatever
            # the search_path of the session that inserts.
            return [
                f"CREATE OR REPLACE FUNCTION {quoted}() RETURNS trigger LANGUAGE plpgsql"
                f" SET search_path FROM CURRENT AS {tag}\n"
                f"{self._description(event)}\n{body}\n{tag}",
                *drops,
                f"CREATE TRIGGER {quoted} AFTER {when} ON {table} FOR EACH ROW"
                f" EXECUTE FUNCTION {quoted}()",
            ]
        description = self._description(event)
        if dialect in ("mysql", "mariadb"):
            body = self.body(event).replace("BEGIN\n", f"BEGIN\n  {description}\n", 1)
            create = f"TRIGGER {quoted} AFTER {when} ON {table} FOR EACH ROW\n{body}"
            if getattr(self.dialect, "is_mariadb", False):
                same = [f for f in existing if f.name == name and f.table == self.spec.table.name]
                others = [self._drop(f) for f in existing if f.name == name and f not in same]
                return [*others, f"CREATE OR REPLACE {create}"]
            return [*drops, f"CREATE {create}"]
        body = self.body(event).replace("BEGIN\n", f"BEGIN\n  {description}\n", 1)
        return [*drops, f"CREATE TRIGGER {quoted} AFTER {when} ON {table} FOR EACH ROW\n{body}"]

    def _drop(self, found: Installed) -> str:
        quoted = self.dialect.identifier_preparer.quote(found.name)
        if self.dialect.name == "postgresql":
            table = self.dialect.identifier_preparer.quote(found.table)
            return f"DROP TRIGGER IF EXISTS {quoted} ON {table}"
        return f"DROP TRIGGER IF EXISTS {quoted}"

    def uninstall(self, existing: Sequence[Installed], *, functions: bool = True) -> list[str]:
        """The statements that remove this scope's triggers among `existing` (and, with
        `functions`, on PostgreSQL, their functions)."""
        names = {trigger_name(self.tables, self.spec.scope, event) for event in EVENTS}
        mine = [found for found in existing if found.name in names]
        statements = [self._drop(found) for found in mine]
        if functions and self.dialect.name == "postgresql":
            quote = self.dialect.identifier_preparer.quote
            statements += [f"DROP FUNCTION IF EXISTS {quote(name)}()" for name in sorted(names)]
        return statements


def installed(conn: Connection, tables: Tables) -> list[Installed]:
    """The source triggers of these tables' prefix found in the database's catalog."""
    dialect = conn.dialect.name
    start = f"{tables.prefix}src_"
    if dialect == "postgresql":
        rows = conn.execute(
            sa.text(
                "SELECT t.tgname, c.relname, t.tgenabled <> 'D', p.prosrc"
                " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_proc p ON p.oid = t.tgfoid"
                " WHERE NOT t.tgisinternal AND n.nspname = ANY(current_schemas(false))"
                " AND left(t.tgname, :n) = :start"
            ),
            {"n": len(start), "start": start},
        )
    elif dialect in ("mysql", "mariadb"):
        rows = conn.execute(
            sa.text(
                "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, 1, ACTION_STATEMENT"
                " FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
                " AND LEFT(TRIGGER_NAME, :n) = :start"
            ),
            {"n": len(start), "start": start},
        )
    else:
        rows = conn.execute(
            sa.text(
                "SELECT name, tbl_name, 1, sql FROM sqlite_master WHERE type = 'trigger'"
                " AND substr(name, 1, :n) = :start"
            ),
            {"n": len(start), "start": start},
        )
    found = []
    for name, table, enabled, text in rows:
        described = _described(text or "")
        found.append(
            Installed(
                name=name,
                table=table,
                event=str(described.get("event", "")),
                scope=described.get("scope"),
                fingerprint=described.get("fingerprint"),
                enabled=bool(enabled),
            )
        )
    return sorted(found, key=lambda f: (f.name, f.table))


def _described(text: str) -> dict[str, Any]:
    """The description a trigger body's comment carries ({} when it has none)."""
    match = _MARKED.search(text)
    if match is None:
        return {}
    try:
        value = json.loads(match.group(1))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
