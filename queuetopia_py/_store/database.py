"""The database edge: engines, the database clock, transactions, error translation, retries."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
from sqlalchemy.util import await_only
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from queuetopia_py._errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaMissingError,
)
from queuetopia_py._schema import Tables, UtcDateTime, build_tables

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger("queuetopia_py.store.database")
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
# psycopg has no timeout of its own: a call that has had no answer for this long past the
# statement timeout has its connection closed (a server that is there answers a statement
# it timed out well before).
_SILENCE_GRACE = 5.0
# PostgreSQL's millisecond settings are 32-bit: a longer bound is as good as none.
_MAX_MILLIS = 2**31 - 1
# Seconds between TCP keepalive probes at most, however long the statement timeout.
_MAX_KEEPALIVE_PROBE = 60
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
# A statement the server cancelled (its statement_timeout ran out, or an administrator's
# cancel): unavailable as well, the database did not answer in time.
_CANCELLED_SQLSTATES = {"57014"}
_MISSING_TABLE_SQLSTATES = {"42P01"}
_MISSING_TABLE_MYSQL = {1146}

#: True while a coroutine's call runs the store's statements on the asyncio engine of its
#: `Database` (see `aio.AsyncCalls`): connections come from that engine, and waits await.
ON_LOOP: ContextVar[bool] = ContextVar("queuetopia_on_loop", default=False)


def normalize_url(url: str | URL) -> URL:
    """Parse a URL, filling in the supported driver when only the database is named."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError, ValueError...
        raise ConfigurationError(f"repo: not a database URL ({url!r}): {exc}") from None
    if "+" not in parsed.drivername and parsed.drivername in _DEFAULT_DRIVERS:
        parsed = parsed.set(drivername=f"{parsed.drivername}+{_DEFAULT_DRIVERS[parsed.drivername]}")
    return parsed


@contextmanager
def named_lock(connection: Connection, name: str, holder: str) -> Iterator[None]:
    """Hold the database-wide lock `name` (at most 64 characters) on `connection` for the
    block, across its transactions: one holder at a time in every process. `holder` says
    who held it in the error raised after 60 s of waiting on MariaDB/MySQL. On SQLite
    nothing is taken: `BEGIN IMMEDIATE` transactions already take turns."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        # The holder may keep it for long: no statement timeout while waiting for it.
        connection.execute(sa.text("SET LOCAL statement_timeout = 0"))
        connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    elif dialect in ("mysql", "mariadb"):
        got = connection.execute(sa.text("SELECT GET_LOCK(:n, 60)"), {"n": name}).scalar()
        if got != 1:
            raise DatabaseError(f"{holder} held the lock {name!r} for 60 s")
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
    else:
        yield


def create_engine(
    url: str | URL, *, statement_timeout: timedelta | None = None, **kwargs: Any
) -> Engine:
    """An engine set up for queuetopia: SQLite gets WAL and `BEGIN IMMEDIATE` transactions.

    On PostgreSQL and MariaDB/MySQL, `statement_timeout` bounds each statement and each
    wait for the server (see `_statement_bounds`); None leaves them unbounded.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_url(parsed)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        try:
            engine = sa.create_engine(parsed, **kwargs)
        except sa.exc.ArgumentError as exc:
            first_line = str(exc).splitlines()[0]
            raise ConfigurationError(f"repo: {first_line}") from None
        _setup_sqlite(engine)
        return engine
    silence = _server_settings(parsed, statement_timeout, kwargs)
    engine = _made(sa.create_engine, parsed, kwargs)
    _watch(engine, silence, kwargs)
    return engine


def create_async_engine(
    url: str | URL, *, statement_timeout: timedelta | None = None, **kwargs: Any
) -> AsyncEngine:
    """The asyncio engine of a PostgreSQL URL (psycopg's async connection), with the
    settings of `create_engine`: for the statements of coroutines' calls (`aio`)."""
    from sqlalchemy.ext import asyncio as sa_asyncio  # needs greenlet: only when used

    parsed = normalize_url(url)
    silence = _server_settings(parsed, statement_timeout, kwargs)
    engine = _made(sa_asyncio.create_async_engine, parsed, kwargs)
    _watch(engine.sync_engine, silence, kwargs)
    return engine


def _server_settings(parsed: URL, statement_timeout: timedelta | None, kwargs: Any) -> float | None:
    """Set the engine arguments of a database server's URL in `kwargs` (those given win);
    return how long a psycopg call may go unanswered (None: not watched)."""
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # Claims and records lock rows by key: without gap locks (which REPEATABLE READ
        # takes, and which deadlock concurrent claims), nodes do not wait on each other.
        kwargs.setdefault("isolation_level", "READ COMMITTED")
    # The most recently used connections first: a few warm connections serve a node,
    # with their prepared statements, instead of every connection of the pool in turn.
    kwargs.setdefault("pool_use_lifo", True)
    # Every transaction here ends by its own commit or rollback (SQLAlchemy's `close()`
    # rolls back one left open), so the pool's extra rollback when a connection comes back
    # is a wasted round trip, and on a connection the server dropped meanwhile (a restart)
    # it logs a traceback for each.
    kwargs.setdefault("pool_reset_on_return", None)
    connect_args = kwargs.setdefault("connect_args", {})
    psycopg = parsed.get_backend_name() == "postgresql" and "+psycopg" in parsed.drivername
    if psycopg:
        # The scheduler runs a small, fixed set of statements: prepare each on its first
        # execution (psycopg sends it in the same round trip) rather than its fifth.
        connect_args.setdefault("prepare_threshold", 0)
        # A server that does not answer (host down, network cut) fails a connection
        # attempt after this many seconds, as PyMySQL's default does, instead of never.
        connect_args.setdefault("connect_timeout", _CONNECT_TIMEOUT)
    if statement_timeout is None:
        return None
    seconds = statement_timeout.total_seconds()
    for name, value in _statement_bounds(parsed, seconds).items():
        connect_args.setdefault(name, value)
    return seconds + _SILENCE_GRACE if _driver(parsed) == "psycopg" else None


def _made(factory: Callable[..., T], parsed: URL, kwargs: Any) -> T:
    """`factory(parsed, **kwargs)`, a missing or unknown driver said as configuration."""
    try:
        return factory(parsed, **kwargs)
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


def _watch(engine: Engine, silence: float | None, kwargs: Any) -> None:
    """Watch `engine`'s calls for `silence` seconds, and ping its idle connections."""
    if silence is not None:
        _watchdog.adopt(engine, silence)
    if not kwargs.get("pool_pre_ping"):
        _ping_after_idle(engine, silence)


def sqlite_file(url: URL) -> Path | None:
    """The absolute path of the file an SQLite URL names (None: not a plain file path,
    such as a `file:` URI)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if "uri" in url.query:
        return None
    return Path(url.database or "").absolute()


def _check_sqlite_url(url: URL) -> None:
    """Refuse the SQLite URLs SQLite would misread, naming the fix."""
    if url.host:
        named = f"{url.host}/{url.database or ''}"
        raise ConfigurationError(
            f"repo: this SQLite URL names a host ({url.host!r}), which SQLite has none of:"
            f" put three slashes before a relative path (sqlite:///{named}) and four before"
            f" an absolute one (sqlite:////{named})"
        )
    if url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "repo: an in-memory SQLite database is private to one connection; "
            "use a file (sqlite:///path/to/jobs.db)"
        )
    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():
        raise ConfigurationError(f"repo: the directory of the SQLite file {path} does not exist")


def _statement_bounds(url: URL, seconds: float) -> dict[str, Any]:
    """Connection settings bounding each statement and each wait for the server to
    `seconds`, but those the URL sets itself.

    PostgreSQL (psycopg): the server cancels a longer statement (`statement_timeout`),
    and TCP gives up on a server that stops acknowledging, whether a call waits for it
    (`tcp_user_timeout`) or the connection is idle (keepalives); the watchdog covers what
    these cannot see. MariaDB/MySQL (PyMySQL): socket timeouts, on every read and write.
    """
    millis = min(max(1, round(seconds * 1000)), _MAX_MILLIS)
    driver = _driver(url)
    if driver == "psycopg":
        probe = min(max(1, round(seconds / 3)), _MAX_KEEPALIVE_PROBE)
        own = url.query.get("options", ())
        bounds: dict[str, Any] = {
            # The URL's own options come after: its settings win.
            "options": " ".join(
                [f"-c statement_timeout={millis}", *([own] if isinstance(own, str) else own)]
            ),
            "tcp_user_timeout": millis,
            "keepalives": 1,
            "keepalives_idle": probe,
            "keepalives_interval": probe,
            "keepalives_count": 3,
        }
    elif driver == "pymysql":
        bounds = {"read_timeout": seconds, "write_timeout": seconds}
    else:
        return {}  # a driver queuetopia does not support: its own settings only
    return {
        name: value for name, value in bounds.items() if name == "options" or name not in url.query
    }


def _driver(url: URL) -> str:
    """The driver the URL names (`URL.get_driver_name()` loads the dialect, which may not
    exist: `create_engine` reports that)."""
    return url.drivername.partition("+")[2]


def _ping_after_idle(engine: Engine, silence: float | None) -> None:
    """Check a pooled connection before use when it has been idle for a while (the server
    may have restarted since): a busy node reuses its connections without a round trip.
    The check gives up after `silence` seconds without an answer (see `_Watchdog`)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["queuetopia_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("queuetopia_idle_since")
        if since is None or time.monotonic() - since < _PING_AFTER_IDLE:
            return
        try:
            with _watchdog.watch(dbapi_connection, silence):
                cursor = dbapi_connection.cursor()
                cursor.execute("SELECT 1")
                cursor.close()
                dbapi_connection.rollback()
        except Exception as exc:
            # The pool drops this connection and hands out a new one.
            raise DisconnectionError(f"pooled connection unusable: {exc}") from exc


@dataclass(slots=True)
class _Call:
    """A watched call: the connection's socket (a duplicate of its descriptor, which
    stays valid however the driver closes its own) and when the call is given up."""

    socket_fd: int
    seconds: float
    deadline: float
    fired: bool = False
    closed: bool = False
    # Orders the watchdog's shutdown of the socket with the call's closing of it.
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Watchdog:
    """Closes the connection of a psycopg call that has had no answer for too long.

    The server's `statement_timeout` ends a slow statement, and TCP notices a network that
    drops packets; but when something acknowledges the packets and never answers (a
    pooler or proxy whose server is gone, a frozen server), psycopg waits forever: it has
    no timeout of its own. A watched call gets a deadline, pushed back by each statement
    it sends; past it, the connection's socket is shut down, so the driver sees the
    connection closed and the call fails as a lost connection.

    The calls themselves take no shared lock (a statement only moves its call's deadline
    on): one thread looks at the deadlines a few times a second, a tenth of the shortest
    limit at the least.
    """

    def __init__(self) -> None:
        self._limits: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()
        self._start()
        if hasattr(os, "register_at_fork"):  # a forked child starts its own thread
            os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._thread: threading.Thread | None = None
        self._every = 1.0

    def adopt(self, engine: Engine, seconds: float) -> None:
        """Watch the calls that `Database` makes on `engine`, `seconds` each."""
        self._limits[engine] = seconds

        @event.listens_for(engine, "before_cursor_execute")
        def _on_statement(conn: Connection, *_: Any) -> None:
            self.heard(conn.connection.dbapi_connection)

    def limit(self, engine: Engine) -> float | None:
        """The seconds each call on `engine` is given, if it is watched."""
        return self._limits.get(engine)

    @contextmanager
    def watch(self, dbapi_connection: Any, seconds: float | None) -> Iterator[None]:
        """Give up the block's calls on `dbapi_connection` once one has had no answer for
        `seconds` (None: never): they then raise `DatabaseUnavailableError`."""
        key = id(dbapi_connection)
        call = None if seconds is None else self._arm(key, dbapi_connection, seconds)
        if call is None:  # not watched, already watched by an outer block, or closed
            yield
            return
        try:
            yield
        except Exception as exc:
            if call.fired:
                raise DatabaseUnavailableError(
                    f"database unreachable: no answer within {call.seconds:g} s, "
                    "the connection was closed"
                ) from exc
            raise
        finally:
            self._calls.pop(key, None)
            with call.lock:
                call.closed = True
                os.close(call.socket_fd)

    def heard(self, dbapi_connection: Any) -> None:
        """A new statement is sent on this connection: its call gets its time again."""
        call = self._calls.get(id(dbapi_connection))
        if call is not None:
            call.deadline = time.monotonic() + call.seconds

    def _arm(self, key: int, dbapi_connection: Any, seconds: float) -> _Call | None:
        # A connection serves one thread at a time: no other call of it is being armed.
        if key in self._calls:
            return None
        try:
            # An asyncio driver's connection is adapted: the driver's own has the socket.
            driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
            socket_fd = os.dup(driver.fileno())
        except Exception:  # closed or broken: the call fails at once by itself
            return None
        call = self._calls[key] = _Call(socket_fd, seconds, time.monotonic() + seconds)
        if self._thread is None or seconds / 10 < self._every:
            with self._lock:
                self._every = min(self._every, seconds / 10)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="queuetopia-watchdog", daemon=True
                    )
                    self._thread.start()
        return call

    def _run(self) -> None:
        while True:
            time.sleep(self._every)
            now = time.monotonic()
            for call in list(self._calls.values()):
                if call.deadline > now:
                    continue
                with call.lock:
                    if not call.closed and not call.fired:
                        call.fired = True
                        _shut_down(call.socket_fd)


def _shut_down(socket_fd: int) -> None:
    """End the connection of this socket both ways; its owner closes the descriptor."""
    sock = socket.socket(fileno=socket_fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already ended
    finally:
        sock.detach()


_watchdog = _Watchdog()


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
    """Whether the error is likely to pass: a conflict, a lost database connection or a
    statement that took too long."""
    if is_rolled_back_conflict(exc):
        return True
    if isinstance(exc, DatabaseError) and isinstance(exc.__cause__, BaseException):
        return is_transient(exc.__cause__)
    if not isinstance(exc, DBAPIError):
        return False
    return _connection_lost(exc) or _codes(exc)[0] in _CANCELLED_SQLSTATES


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
        #: The engine of coroutines' calls (`aio.AsyncCalls`), when they have their own.
        self.async_engine: AsyncEngine | None = None
        self.tables = tables or build_tables()
        self.dialect = engine.dialect.name
        self._local = threading.local()
        # SQLite has one writer at a time, and every transaction here writes (BEGIN
        # IMMEDIATE): this process's threads queue for it on a lock instead of in
        # SQLite's busy handler, which sleeps and retries.
        self._writer: contextlib.AbstractContextManager[Any] = (
            _sqlite_writer(engine) if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        self._packet_limit: int | None = None

    def statement_limit(self, conn: Connection) -> int | None:
        """The longest statement the server accepts, in bytes: MariaDB's and MySQL's
        `max_allowed_packet` (read once), None for the other databases (no such limit
        short of a gigabyte). A longer statement is not refused with an error of its own:
        the server drops the connection, which reads like an outage."""
        if self.dialect not in ("mysql", "mariadb"):
            return None
        if self._packet_limit is None:  # read on `conn`, in the caller's transaction
            limit = conn.execute(sa.text("SELECT @@max_allowed_packet")).scalar_one()
            self._packet_limit = int(limit)
        return self._packet_limit

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
            conn = self._connect()
        except DBAPIError as exc:
            raise translate(exc) from exc
        self._local.connection = conn
        try:
            yield
        finally:
            self._local.connection = None
            conn.close()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A pooled connection whose statements each commit by themselves (no BEGIN or
        COMMIT round trip), with errors translated: for one statement that says all."""
        try:
            with self._connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                with self._watched(conn):
                    yield conn
        except DBAPIError as exc:
            raise translate(exc) from exc

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
        if pinned is not None and not ON_LOOP.get():
            if pinned.invalidated and pinned.in_transaction():
                pinned.rollback()  # the connection was lost: start over on a new one
            with self._watched(pinned), pinned.begin():
                yield pinned
            return
        with self._connect() as conn, self._watched(conn), conn.begin():
            yield conn

    def _connect(self) -> Connection:
        """A pooled connection: of the asyncio engine in a coroutine's call (`ON_LOOP`)."""
        if self.async_engine is not None and ON_LOOP.get():
            return self.async_engine.sync_engine.connect()
        return self.engine.connect()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`: in a coroutine's call (`ON_LOOP`), without blocking its loop."""
        if ON_LOOP.get():
            await_only(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)

    def _watched(self, conn: Connection) -> contextlib.AbstractContextManager[None]:
        """Give up the block's calls on `conn` once one has had no answer for too long
        (engines made by `create_engine` with a statement timeout, on psycopg)."""
        silence = _watchdog.limit(conn.engine)
        if silence is None:
            return contextlib.nullcontext()
        return _watchdog.watch(conn.connection.dbapi_connection, silence)

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
            sleep=self.sleep,
            reraise=True,
        )
        result = retryer(fn)
        logger.warning("database call succeeded after %.1f s of retries", time.monotonic() - began)
        return result


class Deferred:
    """Writes held back until the end of a transaction, then sent statement by statement
    with all their rows at once (`executemany`: psycopg pipelines them, one round trip
    for many rows). Only for writes whose row counts nobody reads, and which nothing
    read later in the transaction depends on (`flush` first, where something does)."""

    def __init__(self) -> None:
        self._rows: dict[sa.Executable, list[dict[str, Any]]] = {}

    def add(self, statement: sa.Executable, params: dict[str, Any]) -> None:
        """Hold back `statement` with `params`."""
        self._rows.setdefault(statement, []).append(params)

    def flush(self, conn: Connection) -> None:
        """Send the writes held back, in the order their statements first came."""
        rows, self._rows = self._rows, {}
        for statement, params in rows.items():
            conn.execute(statement, params)


def execute(
    conn: Connection, statement: sa.Executable, params: dict[str, Any], writes: Deferred | None
) -> None:
    """Run a write now, or hold it back in `writes`."""
    if writes is None:
        conn.execute(statement, params)
    else:
        writes.add(statement, params)


def check_schema(db: Database) -> None:
    """Raise `SchemaMissingError` unless the tables are at the newest schema version."""
    from queuetopia_py.migrations import LATEST, check_known, current_version

    try:
        with db._connect() as conn, db._watched(conn):
            version = current_version(conn, db.tables.prefix)
    except DBAPIError as exc:
        raise translate(exc) from exc
    check_known(version)
    if version < LATEST:
        raise SchemaMissingError(
            f"the queuetopia tables are at schema version {version}, this version needs "
            f"{LATEST}: run `queuetopia migrate URL` or queuetopia_py.migrate(url) first"
        )
