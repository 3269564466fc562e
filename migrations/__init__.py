"""The migration history of the queuetopia tables: numbered, reversible, append-only.

Each `vNNN_*.py` module has `upgrade(op, prefix)` and `downgrade(op, prefix)` written
with Alembic operations. `migrate(url_or_engine)` applies them and records the version
in `<prefix>schema_version`. From your own Alembic environment, call `up(op)` in a
revision's `upgrade()` and `down(op)` in its `downgrade()` instead.
"""

from __future__ import annotations

import importlib
import logging
import threading
from contextlib import AbstractContextManager
from types import ModuleType
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from queuetopia_py import defaults
from queuetopia_py._errors import ConfigurationError, DatabaseError
from queuetopia_py._schema import check_prefix
from queuetopia_py._store.database import named_lock

if TYPE_CHECKING:  # alembic loads only when migrating: worker processes stay light
    from alembic.operations import Operations

_MODULES = [
    "v001_initial",
    "v002_operations",
    "v003_queues",
    "v004_unique_keys",
    "v005_schedules",
    "v006_trace_context",
]


def _versions() -> list[ModuleType]:
    return [importlib.import_module(f"{__name__}.{name}") for name in _MODULES]


# Alembic reports at INFO what it sets up for each migration context (its plugins, the
# dialect's implementation): noise for `migrate()`'s callers, who did not ask for Alembic.
_ALEMBIC_LOGGERS = ("alembic.runtime.migration", "alembic.runtime.plugins")


class _QuietThread(logging.Filter):
    """Drops the records below WARNING logged by one thread."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.thread != self.thread


def _operations(connection: Connection) -> Operations:
    """Alembic operations on `connection`, set up without Alembic's INFO lines (those it
    logs for other threads and for the application's own migrations still pass)."""
    quiet = _QuietThread()
    loggers = [logging.getLogger(name) for name in _ALEMBIC_LOGGERS]
    for each in loggers:
        each.addFilter(quiet)
    try:
        from alembic.migration import MigrationContext
        from alembic.operations import Operations

        return Operations(MigrationContext.configure(connection))
    finally:
        for each in loggers:
            each.removeFilter(quiet)


#: The newest schema version.
LATEST = len(_MODULES)


def current_version(connection: Connection, prefix: str = defaults.TABLE_PREFIX) -> int:
    """The schema version recorded in the database (0 when nothing is installed)."""
    table = f"{check_prefix(prefix)}schema_version"
    if not sa.inspect(connection).has_table(table):
        return 0
    version = connection.execute(sa.text(f"SELECT MAX(version) FROM {table}")).scalar()
    return int(version or 0)


def check_known(version: int) -> None:
    """Raise `DatabaseError` if `version` is newer than this queuetopia_py knows: tables
    that a newer release migrated are neither used nor migrated (down or up) by this one."""
    if version > LATEST:
        raise DatabaseError(
            f"the queuetopia tables are at schema version {version}, newer than this "
            f"version of queuetopia_py knows ({LATEST}): upgrade queuetopia_py"
        )


def _known_version(connection: Connection, prefix: str) -> int:
    version = current_version(connection, prefix)
    check_known(version)
    return version


def _record(op: Operations, prefix: str, version: int) -> None:
    table = f"{prefix}schema_version"
    if version == 0:
        return  # version 1's downgrade dropped the table
    op.execute(sa.text(f"DELETE FROM {table}"))
    op.execute(sa.text(f"INSERT INTO {table} (version) VALUES ({int(version)})"))


def up(op: Operations, prefix: str = defaults.TABLE_PREFIX, to: int | None = None) -> int:
    """Upgrade the tables to version `to` (default: the newest) with Alembic operations.

    Use it in a revision of your own Alembic environment::

        from queuetopia_py.migrations import up
        def upgrade() -> None:
            up(op)
    """
    check_prefix(prefix)
    target = LATEST if to is None else to
    if not 0 <= target <= LATEST:
        raise ConfigurationError(f"to: no schema version {target} (newest is {LATEST})")
    current = _known_version(op.get_bind(), prefix)
    for number, module in enumerate(_versions()[current:target], start=current + 1):
        module.upgrade(op, prefix)
        _record(op, prefix, number)
    return max(current, target)


def down(op: Operations, prefix: str = defaults.TABLE_PREFIX, to: int = 0) -> int:
    """Downgrade the tables to version `to` (default 0: drop everything)."""
    check_prefix(prefix)
    if not 0 <= to <= LATEST:
        raise ConfigurationError(f"to: no schema version {to} (newest is {LATEST})")
    current = _known_version(op.get_bind(), prefix)
    modules = _versions()
    for number in range(current, to, -1):
        modules[number - 1].downgrade(op, prefix)
        _record(op, prefix, number - 1)
    return min(current, to)


def _unbounded(connection: Connection) -> None:
    """Lift PostgreSQL's statement timeout for the current transaction: a migration (a
    backfill) may take long, and an engine given to `migrate`, such as a `Queuetopia`'s
    own, may bound statements. The engine `migrate` makes from a URL bounds nothing."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SET LOCAL statement_timeout = 0"))


def _migration_lock(connection: Connection, prefix: str) -> AbstractContextManager[None]:
    """Serialize concurrent `migrate` calls (several nodes starting at once)."""
    return named_lock(connection, f"queuetopia_migrate_{prefix}", "migrate: another migration")


def migrate(
    repo: str | URL | Engine,
    *,
    prefix: str = defaults.TABLE_PREFIX,
    to: int | None = None,
) -> int:
    """Create or upgrade (or, with a lower `to`, downgrade) the queuetopia tables.

    Idempotent and safe to run from several processes at once. Returns the version.
    Tables at a version newer than this code knows raise `DatabaseError`, unchanged.

    >>> migrate("postgresql+psycopg://localhost/app")
    2
    """
    from queuetopia_py._store.database import create_engine, translate

    check_prefix(prefix)
    # The engine made from a URL bounds no statement: a migration may take long.
    engine = repo if isinstance(repo, Engine) else create_engine(repo)
    try:
        with engine.connect() as connection, _migration_lock(connection, prefix):
            connection.commit()
            with connection.begin():
                _unbounded(connection)
                op = _operations(connection)
                current = _known_version(connection, prefix)
                target = LATEST if to is None else to
                if target >= current:
                    return up(op, prefix, target)
                return down(op, prefix, target)
    except sa.exc.DBAPIError as exc:
        raise translate(exc) from exc
    finally:
        if not isinstance(repo, Engine):
            engine.dispose()
