"""The SQLAlchemy Core tables. Every name carries a prefix (default `queuetopia_`).

`jobs` holds one row a job; `locks` one row a locked queue. The column types are shared
with the migration history, which must produce exactly these tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
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
)
from sqlalchemy.dialects import mysql, postgresql

from queuetopia_py import defaults
from queuetopia_py.errors import ConfigurationError

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


def ops_columns() -> list[Column[Any]]:
    """Columns of the jobs table added by schema version 2 (operations)."""
    return [
        # None while pending or done; how the job ended otherwise (see job.OUTCOMES).
        Column("outcome", String(16), nullable=True),
        # When it ended without success (set with `outcome`), for the cleaner.
        Column("ended_at", UtcDateTime(), nullable=True),
        Column("on_failure", String(defaults.MAX_NAME_LENGTH + 16), nullable=True),
        Column("round_start", Integer(), nullable=False, server_default="0"),
        Column("failing_since", UtcDateTime(), nullable=True),
        Column("progress_message", Text(), nullable=True),
        Column("progress_fraction", Float(precision=53), nullable=True),
        Column("progress_at", UtcDateTime(), nullable=True),
        Column("result", JSON(none_as_null=True), nullable=True),
        Column("interventions", JSON(none_as_null=True), nullable=True),
    ]


def lock_job_column() -> Column[Any]:
    """The job whose attempt a lock was taken for (schema version 2)."""
    return Column("job_id", id_type(), nullable=True)


def suspension_columns(prefix: str) -> list[Any]:
    """Columns and key of the suspensions table (schema version 2)."""
    return [
        Column("scope", name_type(), nullable=False),
        # WHOLE_SCOPE ("") for the whole scope.
        Column("queue", name_type(), nullable=False),
        Column("suspended_at", UtcDateTime(), nullable=False),
        Column("suspended_by", String(defaults.MAX_NAME_LENGTH), nullable=False),
        Column("reason", Text(), nullable=True),
        PrimaryKeyConstraint("scope", "queue", name=f"pk_{prefix}suspensions"),
    ]


@dataclass(frozen=True)
class Tables:
    """The tables of one prefix, bound to their own `MetaData`."""

    prefix: str
    metadata: MetaData
    jobs: Table
    locks: Table
    suspensions: Table
    schema_version: Table


def build_tables(prefix: str = defaults.TABLE_PREFIX) -> Tables:
    """Describe the tables under `prefix` (validated)."""
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
        Column("error", Text(), nullable=True),
        Column("inserted_at", UtcDateTime(), nullable=False),
        *ops_columns(),
        # Head of a queue, and a queue's jobs in order.
        Index(
            f"ix_{prefix}jobs_queue_order",
            "scope",
            "queue",
            "done_at",
            "outcome",
            "scheduled_at",
            "id",
        ),
        # Pending work of a scope that is due, without touching ended jobs.
        Index(f"ix_{prefix}jobs_due", "scope", "done_at", "outcome", "next_attempt_at", "queue"),
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
        lock_job_column(),
        PrimaryKeyConstraint("scope", "queue", name=f"pk_{prefix}locks"),
        Index(f"ix_{prefix}locks_expiry", "scope", "locked_until"),
        **table_options(),
    )
    suspensions = Table(
        f"{prefix}suspensions",
        metadata,
        *suspension_columns(prefix),
        **table_options(),
    )
    schema_version = Table(
        f"{prefix}schema_version",
        metadata,
        Column("version", Integer(), primary_key=True, autoincrement=False),
        **table_options(),
    )
    return Tables(prefix, metadata, jobs, locks, suspensions, schema_version)
