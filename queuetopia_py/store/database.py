"""The database edge: engines, the database clock, transactions, error translation, retries."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    NoSuchModuleError,
    NoSuchTableError,
    OperationalError,
    ProgrammingError,
)
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from queuetopia_py.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaMissingError,
)
from queuetopia_py.schema import Tables, UtcDateTime, build_tables

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Drivers used when a URL names only the database ("postgresql://", "mysql://").
_DEFAULT_DRIVERS = {
    "postgresql": "psycopg",
    "postgres": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
}

# Seconds a connection attempt to PostgreSQL may take (PyMySQL's default is the same).
_CONNECT_TIMEOUT = 10
# A pooled connection idle for longer than this is checked before use.
_PING_AFTER_IDLE = 2.0
# SQLSTATE codes and MySQL error numbers after which the transaction was rolled back
# and may simply be run again: serialization failure, deadlock, lock wait timeout.
_ROLLED_BACK_SQLSTATES = {"40001", "40P01", "55P03"}
_ROLLED_BACK_MYSQL = {1205, 1213}
# Lost connections and servers going away: transient, but a commit may or may not
# have happened, so only idempotent or fenced work retries them.
_CONNECTION_SQLSTATE_PREFIXES = ("08", "57P")
_CONNECTION_MYSQL = {2002, 2003, 2006, 2013, 2055, 1927, 1053}
_MISSING_TABLE_SQLSTATES = {"42P01"}
_MISSING_TABLE_MYSQL = {1146}


def normalize_url(url: str | URL) -> URL:
    """Parse a URL, filling in the supported driver when only the database is named."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError, ValueError...
        raise ConfigurationError(f"repo: not a database URL ({url!r}): {exc}") from None
    if "+" not in parsed.drivername and parsed.drivername in _DEFAULT_DRIVERS:
        parsed = parsed.set(drivername=f"{parsed.drivername}+{_DEFAULT_DRIVERS[parsed.drivername]}")
    return parsed


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine set up for queuetopia: SQLite gets WAL and `BEGIN IMMEDIATE` transactions."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigurationError(
                "repo: an in-memory SQLite database is private to one connection; "
                "use a file (sqlite:///path/to/jobs.db)"
            )
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = sa.create_engine(parsed, **kwargs)
        _setup_sqlite(engine)
        return engine
    # The most recently used connections first: a few warm connections serve a node,
    # with their prepared statements, instead of every connection of the pool in turn.
    kwargs.setdefault("pool_use_lifo", True)
    # Every transaction here ends by its own commit or rollback (SQLAlchemy's `close()`
    # rolls back one left open), so the pool's extra rollback when a connection comes back
    # is a wasted round trip, and on a connection the server dropped meanwhile (a restart)
    # it logs a traceback for each.
    kwargs.setdefault("pool_reset_on_return", None)
    if parsed.get_backend_name() == "postgresql" and "+psycopg" in parsed.drivername:
        # The scheduler runs a small, fixed set of statements: prepare each on its first
        # execution (psycopg sends it in the same round trip) rather than its fifth.
        kwargs.setdefault("connect_args", {}).setdefault("prepare_threshold", 0)
        # A server that does not answer (host down, network cut) fails a connection
        # attempt after this many seconds, as PyMySQL's default does, instead of never.
        kwargs["connect_args"].setdefault("connect_timeout", _CONNECT_TIMEOUT)
    try:
        engine = sa.create_engine(parsed, **kwargs)
        if not kwargs.get("pool_pre_ping"):
            _ping_after_idle(engine)
        return engine
    except NoSuchModuleError:
        raise ConfigurationError(
            f"repo: unsupported database {parsed.drivername!r} "
            "(use sqlite, postgresql+psycopg or mysql+pymysql)"
        ) from None
    except ModuleNotFoundError as exc:
        extra = "postgresql" if parsed.get_backend_name() == "postgresql" else "mysql"
        raise ConfigurationError(
            f"repo: the driver for {parsed.drivername} is not installed "
            f"(pip install 'queuetopia_py[{extra}]'): {exc}"
        ) from None


def _ping_after_idle(engine: Engine) -> None:
    """Check a pooled connection before use when it has been idle for a while (the server
    may have restarted since): a busy node reuses its connections without a round trip."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["queuetopia_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("queuetopia_idle_since")
        if since is None or time.monotonic() - since < _PING_AFTER_IDLE:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()
        except Exception as exc:
            # The pool drops this connection and hands out a new one.
            raise DisconnectionError(f"pooled connection unusable: {exc}") from exc


def _enable_wal(cursor: Any) -> None:
    """Switch the database file to WAL (once per file; it persists).

    The switch needs the file to itself and SQLite answers "database is locked" at once,
    without waiting, when other connections open it at the same moment: try again.
    """
    for pause in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 0.0):
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or not pause:
                raise
            time.sleep(pause)


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock up front: no deferred transaction can fail to upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_sqlite_writers: dict[str, threading.RLock] = {}
_sqlite_writers_lock = threading.Lock()


def _sqlite_writer(engine: Engine) -> threading.RLock:
    """The lock this process's writers of one SQLite file queue on."""
    key = str(engine.url.database)
    with _sqlite_writers_lock:
        return _sqlite_writers.setdefault(key, threading.RLock())


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _codes(exc: BaseException) -> tuple[str | None, int | None]:
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    errno: int | None = None
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        errno = args[0]
    return sqlstate, errno


def is_rolled_back_conflict(exc: BaseException) -> bool:
    """A deadlock, serialization failure or lock timeout: the transaction can be rerun."""
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate, errno = _codes(exc)
    if sqlstate in _ROLLED_BACK_SQLSTATES or errno in _ROLLED_BACK_MYSQL:
        return True
    return "database is locked" in str(exc.orig)


def is_transient(exc: BaseException) -> bool:
    """Whether the error is likely to pass: a conflict or a lost database connection."""
    if is_rolled_back_conflict(exc):
        return True
    if isinstance(exc, DatabaseError) and isinstance(exc.__cause__, BaseException):
        return is_transient(exc.__cause__)
    return isinstance(exc, DBAPIError) and _connection_lost(exc)


def _connection_lost(exc: DBAPIError) -> bool:
    """Whether the connection was lost, or could not be made, as the driver tells it.

    Judged by what happened to the connection, never by a missing error code: a driver
    refuses some statements on the client side (psycopg: more than 65,535 parameters)
    with an error that has no code either, on a connection that is still sound.
    """
    if exc.connection_invalidated:  # the dialect saw the connection closed or broken
        return True
    sqlstate, errno = _codes(exc)
    if sqlstate and sqlstate.startswith(_CONNECTION_SQLSTATE_PREFIXES):
        return True
    return errno in _CONNECTION_MYSQL or _psycopg_connect_failed(exc.orig)


def _psycopg_connect_failed(orig: BaseException | None) -> bool:
    """A failed psycopg connection attempt (refused, unreachable, timed out).

    psycopg gives no code for these; it attaches the failed connection to the error of a
    connection attempt, and to no other error.
    """
    psycopg = sys.modules.get("psycopg")
    return (
        psycopg is not None
        and isinstance(orig, psycopg.Error)
        and (orig.pgconn is not None or isinstance(orig, psycopg.errors.ConnectionTimeout))
    )


def _is_missing_table(exc: BaseException) -> bool:
    if isinstance(exc, NoSuchTableError):
        return True
    if not isinstance(exc, OperationalError | ProgrammingError):
        return False
    sqlstate, errno = _codes(exc)
    return (
        sqlstate in _MISSING_TABLE_SQLSTATES
        or errno in _MISSING_TABLE_MYSQL
        or "no such table" in str(exc.orig)
    )


def translate(exc: BaseException) -> BaseException:
    """Our own exception for a driver error (the original is kept as `__cause__`)."""
    if _is_missing_table(exc):
        error: DatabaseError = SchemaMissingError(
            "the queuetopia tables are missing: run `queuetopia migrate URL` "
            f"or queuetopia_py.migrate(url) first ({exc.__class__.__name__})"
        )
    else:
        text = str(getattr(exc, "orig", exc)).strip().splitlines()
        first = text[0] if text else repr(exc)
        if is_transient(exc) and not is_rolled_back_conflict(exc):
            error = DatabaseUnavailableError(f"database unreachable: {first}")
        else:
            error = DatabaseError(f"database error: {first}")
    error.__cause__ = exc
    return error


class Database:
    """One engine and the tables of one prefix, with the database's clock."""

    def __init__(self, engine: Engine, tables: Tables | None = None) -> None:
        self.engine = engine
        self.tables = tables or build_tables()
        self.dialect = engine.dialect.name
        self._local = threading.local()
        # SQLite has one writer at a time, and every transaction here writes (BEGIN
        # IMMEDIATE): this process's threads queue for it on a lock instead of in
        # SQLite's busy handler, which sleeps and retries.
        self._writer: contextlib.AbstractContextManager[Any] = (
            _sqlite_writer(engine) if self.dialect == "sqlite" else contextlib.nullcontext()
        )

    def now(self) -> sa.ColumnElement[datetime]:
        """The database's current time as an SQL expression (SQLite: this machine's)."""
        if self.dialect == "postgresql":
            return sa.func.now(type_=UtcDateTime())
        if self.dialect in ("mysql", "mariadb"):
            return sa.literal_column("UTC_TIMESTAMP(6)", UtcDateTime())
        # SQLite runs in this process: its clock is this machine's, read when the
        # statement runs (so that statements built once keep telling the time).
        return sa.bindparam("now", type_=UtcDateTime(), callable_=_utc_now, unique=True)

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Run this thread's transactions on one connection until the block ends,
        instead of taking one from the pool (and checking it) for each."""
        if getattr(self._local, "connection", None) is not None:
            yield
            return
        try:
            conn = self.engine.connect()
        except DBAPIError as exc:
            raise translate(exc) from exc
        self._local.connection = conn
        try:
            yield
        finally:
            self._local.connection = None
            conn.close()

    @contextmanager
    def raw_autocommit(self) -> Iterator[Any]:
        """The DB-API connection under this thread's pinned connection (or a pooled one),
        in autocommit mode, for the few hot statements run without SQLAlchemy's
        execution layer. Driver errors come out as `transaction` raises them."""
        pinned: Connection | None = getattr(self._local, "connection", None)
        with contextlib.ExitStack() as stack:
            try:
                conn = pinned if pinned is not None else stack.enter_context(self.engine.connect())
                if conn.invalidated and conn.in_transaction():
                    conn.rollback()
                dbapi = conn.connection.dbapi_connection
            except DBAPIError as exc:
                raise translate(exc) from exc
            assert dbapi is not None
            driver_error = self.engine.dialect.loaded_dbapi.Error
            try:
                dbapi.autocommit = True
                try:
                    yield dbapi
                finally:
                    if not dbapi.closed:
                        dbapi.autocommit = False
            except driver_error as exc:
                lost = self.engine.dialect.is_disconnect(exc, dbapi, None)
                if lost:
                    conn.invalidate(exc)
                wrapped = DBAPIError.instance(
                    None,
                    None,
                    exc,
                    driver_error,
                    connection_invalidated=lost,
                    dialect=self.engine.dialect,
                )
                raise translate(wrapped) from wrapped

    @contextmanager
    def transaction(self, connection: Connection | None = None) -> Iterator[Connection]:
        """A short transaction (or the caller's `connection`), with errors translated."""
        try:
            if connection is not None:
                yield connection
                return
            with self._writer:
                yield from self._transaction()
        except DBAPIError as exc:
            raise translate(exc) from exc
        except NoSuchTableError as exc:
            raise translate(exc) from exc

    def _transaction(self) -> Iterator[Connection]:
        pinned: Connection | None = getattr(self._local, "connection", None)
        if pinned is not None:
            if pinned.invalidated and pinned.in_transaction():
                pinned.rollback()  # the connection was lost: start over on a new one
            with pinned.begin():
                yield pinned
            return
        with self.engine.begin() as conn:
            yield conn

    def retrying(
        self, fn: Callable[[], T], *, conflicts_only: bool = False, max_seconds: float = 30.0
    ) -> T:
        """Run `fn` (one whole transaction), retrying transient failures with a bounded backoff.

        `conflicts_only` limits retries to deadlocks and serialization failures, whose
        transaction surely rolled back: for work that must not run twice.
        """

        def retryable(exc: BaseException) -> bool:
            cause = exc.__cause__ if isinstance(exc, DatabaseError) else exc
            if cause is None:
                return False
            return is_rolled_back_conflict(cause) if conflicts_only else is_transient(cause)

        # The first attempt runs without the retry machinery (the hot path succeeds).
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            logger.warning(
                "transient database error, retrying for up to %.0f s: %s", max_seconds, exc
            )
        began = time.monotonic()
        # Later failures of the same call are logged at DEBUG: one outage, one warning
        # per call (the scheduler logs the outage and its end once more).
        retryer = Retrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_delay(max_seconds),
            wait=wait_exponential(multiplier=0.02, max=2.0) + wait_random(0, 0.02),
            before_sleep=before_sleep_log(logger, logging.DEBUG),
            reraise=True,
        )
        result = retryer(fn)
        logger.warning("database call succeeded after %.1f s of retries", time.monotonic() - began)
        return result


def check_schema(db: Database) -> None:
    """Raise `SchemaMissingError` unless the tables are at the newest schema version."""
    from queuetopia_py.migrations import LATEST, check_known, current_version

    try:
        with db.engine.connect() as conn:
            version = current_version(conn, db.tables.prefix)
    except DBAPIError as exc:
        raise translate(exc) from exc
    check_known(version)
    if version < LATEST:
        raise SchemaMissingError(
            f"the queuetopia tables are at schema version {version}, this version needs "
            f"{LATEST}: run `queuetopia migrate URL` or queuetopia_py.migrate(url) first"
        )
