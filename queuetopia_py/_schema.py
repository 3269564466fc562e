"""The SQLAlchemy Core tables. Every name carries a prefix (default `queuetopia_`).

The column types are shared with the migration history, which must produce exactly
these tables (a test compares them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    event,
    literal_column,
    text,
)
from sqlalchemy.dialects import mysql, postgresql

from queuetopia_py import defaults
from queuetopia_py._errors import ConfigurationError

_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,30}")


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it is a safe SQL identifier prefix, else raise."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(
            f"table_prefix: must be lowercase letters, digits and _, starting with a letter,"
            f" at most 31 characters (got {prefix!r})"
        )
    return prefix


class UtcDateTime(TypeDecorator[datetime]):
    """An instant with microseconds, always read back as an aware UTC datetime.

    PostgreSQL stores `timestamptz`; MariaDB/MySQL `DATETIME(6)` and SQLite text hold the
    naive UTC value.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True, precision=6))
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite expressions may hand back text
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def name_type() -> Any:
    """A name column: case- and space-sensitive on every database."""
    return String(defaults.MAX_NAME_LENGTH).with_variant(
        mysql.VARCHAR(defaults.MAX_NAME_LENGTH, charset="utf8mb4", collation="utf8mb4_bin"),
        "mysql",
        "mariadb",
    )


def id_type() -> Any:
    """A 64-bit auto-incremented key (SQLite's rowid is 64-bit already)."""
    return BigInteger().with_variant(Integer(), "sqlite")


def table_options() -> dict[str, Any]:
    """Per-dialect table options shared by every table."""
    return {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB", "sqlite_autoincrement": True}


#: The `suspensions.queue` value that suspends a whole scope (no queue name is empty).
WHOLE_SCOPE = ""
#: Longest free text stored (errors, progress messages, reasons), in UTF-8 bytes: what a
#: MariaDB/MySQL TEXT column holds.
MAX_TEXT_BYTES = 65_535


def normalize_text(text: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    r"""`text` as every database stores it alike: NUL characters (which PostgreSQL
    refuses) and lone surrogates (which no UTF-8 column holds) are replaced with U+FFFD,
    and text longer than `max_bytes` in UTF-8 is cut, ending with "...".

    >>> normalize_text("bad\x00byte") == "bad\ufffdbyte"
    True
    """
    if not text.isascii():
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = text.replace("\x00", "\ufffd")
    if len(text) * 4 <= max_bytes:
        return text
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - 3].decode("utf-8", "ignore") + "..."


class FreeText(TypeDecorator[str]):
    """A free-text column (an error, a progress message, a reason): whatever is written
    is normalised by `normalize_text`, so that no text can fail to be stored."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else normalize_text(value)


def claim_token_type() -> Any:
    """The token of one claim of a queue (32 hex digits)."""
    return String(32)


def trace_context_type() -> Any:
    """The trace context of a job: the carrier an OpenTelemetry propagator fills (W3C
    `traceparent`, `tracestate`), as JSON text."""
    return Text()


@dataclass(frozen=True)
class Tables:
    """The tables of one prefix, bound to their own `MetaData`."""

    prefix: str
    metadata: MetaData
    jobs: Table
    queues: Table
    locks: Table
    suspensions: Table
    schedules: Table
    schema_version: Table


def build_tables(prefix: str = defaults.TABLE_PREFIX) -> Tables:
    """Describe the tables under `prefix` (validated): schema version 6.

    `jobs` holds one row a job. `queues` holds one row a queue with pending work (or
    locked): its head job, the head's due time, its pending count, and its lock, kept
    exact by the statements that change its jobs. `locks` holds the scope-wide locks
    of the nodes' own duties (the cleaner's). `suspensions` one row a suspended queue or
    scope.
    """
    check_prefix(prefix)
    metadata = MetaData()
    jobs = Table(
        f"{prefix}jobs",
        metadata,
        Column("id", id_type(), primary_key=True, autoincrement=True),
        Column("scope", name_type(), nullable=False),
        Column("queue", name_type(), nullable=False),
        Column("action", name_type(), nullable=False),
        Column("params", JSON(), nullable=False),
        Column("timeout_us", BigInteger(), nullable=False),
        Column("max_backoff_us", BigInteger(), nullable=False),
        Column("max_attempts", Integer(), nullable=False),
        Column("attempts", Integer(), nullable=False, server_default="0"),
        Column("attempted_at", UtcDateTime(), nullable=True),
        Column("attempted_by", String(defaults.MAX_NAME_LENGTH), nullable=True),
        Column("next_attempt_at", UtcDateTime(), nullable=True),
        Column("scheduled_at", UtcDateTime(), nullable=False),
        Column("done_at", UtcDateTime(), nullable=True),
        Column("error", FreeText(), nullable=True),
        Column("inserted_at", UtcDateTime(), nullable=False),
        # When it ended without success (set with its state), for the cleaner.
        Column("ended_at", UtcDateTime(), nullable=True),
        # A `job.OnFailure` value; "move_to" moves the job to `dead_letter_queue`.
        Column("on_failure", String(16), nullable=False, server_default="give_up"),
        Column("round_start", Integer(), nullable=False, server_default="0"),
        Column("failing_since", UtcDateTime(), nullable=True),
        Column("progress_message", FreeText(), nullable=True),
        Column("progress_fraction", Float(precision=53), nullable=True),
        Column("progress_at", UtcDateTime(), nullable=True),
        Column("result", JSON(none_as_null=True), nullable=True),
        Column("interventions", JSON(none_as_null=True), nullable=True),
        # A `job.STORED_STATES` value.
        Column("state", String(16), nullable=False, server_default="pending"),
        Column("dead_letter_queue", name_type(), nullable=True),
        # The claim of the job's latest attempt: fences what that attempt records.
        Column("claim_token", claim_token_type(), nullable=True),
        # At most one pending job of a scope holds a key (schema version 4).
        Column("unique_key", name_type(), nullable=True),
        # The trace context the job was created in, when tracing is on (schema version 6).
        Column("trace_context", trace_context_type(), nullable=True),
        # A queue's jobs in order (its head first), by state.
        Index(f"ix_{prefix}jobs_queue_order", "scope", "queue", "state", "scheduled_at", "id"),
        # A scope's jobs in order, by state: listings and the cleaner.
        Index(f"ix_{prefix}jobs_state_order", "scope", "state", "scheduled_at", "id"),
        unique_key_index(prefix),
        **table_options(),
    )
    for statement in unique_key_ddl(prefix):
        for dialect in _NO_PARTIAL:
            ddl = DDL(statement).execute_if(dialect=dialect)  # type: ignore[no-untyped-call]
            event.listen(jobs, "after_create", ddl)
    queues = Table(
        f"{prefix}queues",
        metadata,
        *queue_columns(prefix),
        Index(f"ix_{prefix}queues_due", "scope", "head_due", "queue"),
        Index(f"ix_{prefix}queues_lock", "scope", "locked_until"),
        Index(f"ix_{prefix}queues_blocked", "scope", "blocked_since", "queue"),
        **table_options(),
    )
    locks = Table(
        f"{prefix}locks",
        metadata,
        Column("scope", name_type(), nullable=False),
        Column("queue", name_type(), nullable=False),
        Column("token", String(36), nullable=False),
        Column("locked_at", UtcDateTime(), nullable=False),
        Column("locked_by_node", String(defaults.MAX_NAME_LENGTH), nullable=False),
        Column("locked_until", UtcDateTime(), nullable=False),
        Column("job_id", id_type(), nullable=True),
        PrimaryKeyConstraint("scope", "queue", name=f"pk_{prefix}locks"),
        Index(f"ix_{prefix}locks_expiry", "scope", "locked_until"),
        **table_options(),
    )
    suspensions = Table(
        f"{prefix}suspensions",
        metadata,
        Column("scope", name_type(), nullable=False),
        # WHOLE_SCOPE ("") for the whole scope.
        Column("queue", name_type(), nullable=False),
        Column("suspended_at", UtcDateTime(), nullable=False),
        Column("suspended_by", String(defaults.MAX_NAME_LENGTH), nullable=False),
        Column("reason", FreeText(), nullable=True),
        PrimaryKeyConstraint("scope", "queue", name=f"pk_{prefix}suspensions"),
        **table_options(),
    )
    schedules = Table(f"{prefix}schedules", metadata, *schedule_columns(prefix), **table_options())
    schema_version = Table(
        f"{prefix}schema_version",
        metadata,
        Column("version", Integer(), primary_key=True, autoincrement=False),
        **table_options(),
    )
    return Tables(prefix, metadata, jobs, queues, locks, suspensions, schedules, schema_version)


#: Where a job holds its unique key: while it is pending.
UNIQUE_HELD = "state = 'pending' AND unique_key IS NOT NULL"
# The databases without partial indexes: a generated column holds the key of a pending
# job (NULL otherwise), under a unique index (which ignores NULLs).
_NO_PARTIAL = ("mysql", "mariadb")


def unique_key_index(prefix: str) -> Index:
    """PostgreSQL and SQLite: the partial unique index on the keys of pending jobs."""
    return Index(
        f"ux_{prefix}jobs_unique_key",
        "scope",
        "unique_key",
        unique=True,
        postgresql_where=text(UNIQUE_HELD),
        sqlite_where=text(UNIQUE_HELD),
    ).ddl_if(dialect=("postgresql", "sqlite"))  # type: ignore[arg-type]


def unique_key_ddl(prefix: str) -> list[str]:
    """MariaDB and MySQL: the statements that add `unique_pending` (the key of a pending
    job, NULL otherwise) and its unique index, after the `unique_key` column (where
    version 4 appended it; a fresh table has later columns after it too)."""
    jobs = f"{prefix}jobs"
    return [
        f"ALTER TABLE {jobs} ADD COLUMN unique_pending VARCHAR({defaults.MAX_NAME_LENGTH})"
        " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        " AS (CASE WHEN state = 'pending' THEN unique_key END) VIRTUAL AFTER unique_key",
        f"CREATE UNIQUE INDEX ux_{prefix}jobs_unique_key ON {jobs} (scope, unique_pending)",
    ]


def unique_held(jobs: Table, dialect: str) -> list[Any]:
    """Conditions on `jobs` of the pending job holding the key bound as `b_unique_key`,
    spelled to use the unique index of the dialect."""
    key = bindparam("b_unique_key", type_=jobs.c.unique_key.type)
    if dialect in _NO_PARTIAL:
        return [literal_column("unique_pending") == key]
    return [jobs.c.unique_key == key, jobs.c.state == "pending", jobs.c.unique_key.is_not(None)]


def schedule_columns(prefix: str) -> list[Any]:
    """Columns and key of the schedules table (schema version 5): one row a schedule of a
    scope, locked while a node creates its jobs."""
    return [
        Column("scope", name_type(), nullable=False),
        Column("name", name_type(), nullable=False),
        # What the schedule was defined as when its row was last written ("cron ..." or
        # "every ..."): a schedule defined anew starts over from that moment.
        Column("definition", String(defaults.MAX_NAME_LENGTH), nullable=False),
        # The latest fire time dealt with (a job created, or skipped by its catch-up).
        Column("last_fire_at", UtcDateTime(), nullable=False),
        Column("last_job_id", id_type(), nullable=True),
        Column("next_fire_at", UtcDateTime(), nullable=True),
        Column("updated_at", UtcDateTime(), nullable=False),
        PrimaryKeyConstraint("scope", "name", name=f"pk_{prefix}schedules"),
    ]


def queue_columns(prefix: str) -> list[Any]:
    """Columns and key of the queues table (schema version 3)."""
    return [
        Column("scope", name_type(), nullable=False),
        Column("queue", name_type(), nullable=False),
        # Jobs of the queue that hold their place in it (state "pending").
        Column("pending", Integer(), nullable=False),
        # The head: the first pending job in queue order (NULL: none), its
        # `scheduled_at` (to compare a new job with), its `next_attempt_at` (NULL: none, or
        # blocked until an operator acts) and, while it fails, its `failing_since`.
        Column("head_id", id_type(), nullable=True),
        Column("head_at", UtcDateTime(), nullable=True),
        Column("head_due", UtcDateTime(), nullable=True),
        Column("blocked_since", UtcDateTime(), nullable=True),
        # The queue's lock: held by `locked_by` for the attempt of `locked_job` under the
        # claim `token` until `locked_until` (NULLs: not locked).
        Column("token", claim_token_type(), nullable=True),
        Column("locked_by", String(defaults.MAX_NAME_LENGTH), nullable=True),
        Column("locked_at", UtcDateTime(), nullable=True),
        Column("locked_until", UtcDateTime(), nullable=True),
        Column("locked_job", id_type(), nullable=True),
        PrimaryKeyConstraint("scope", "queue", name=f"pk_{prefix}queues"),
    ]
