"""Which driver errors are database outages (`DatabaseUnavailableError`, retried by the
scheduler) and which are errors of the call (`DatabaseError`, raised at once).

An outage is judged by what happened to the connection: it could not be made, or it was
lost. An error the driver raises on the client side, on a sound connection, is not one,
even when it carries no error code."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from types import ModuleType

import pytest
import sqlalchemy as sa

from queuetopia_py import DatabaseError, DatabaseUnavailableError
from queuetopia_py._store.database import create_engine, is_transient, translate

URLS = {
    "psycopg": "postgresql+psycopg://postgres@127.0.0.1:{port}/x",
    "pymysql": "mysql+pymysql://root@127.0.0.1:{port}/x",
}


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local TCP port that accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def _connect_error(url: str) -> sa.exc.DBAPIError:
    engine = create_engine(
        url, statement_timeout=timedelta(seconds=2), connect_args={"connect_timeout": 2}
    )
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised:
            engine.connect()
        return raised.value
    finally:
        engine.dispose()


def _wrapped(orig: Exception, dbapi: ModuleType) -> sa.exc.DBAPIError:
    """`orig` as SQLAlchemy raises it from a statement on a sound connection."""
    return sa.exc.DBAPIError.instance("SELECT 1", {}, orig, dbapi.Error)


def _assert_unavailable(exc: sa.exc.DBAPIError) -> None:
    assert is_transient(exc)
    translated = translate(exc)
    assert isinstance(translated, DatabaseUnavailableError), translated
    assert str(translated).startswith("database unreachable: ")
    assert is_transient(translated)


def _assert_error_of_the_call(exc: sa.exc.DBAPIError) -> None:
    assert not is_transient(exc)
    translated = translate(exc)
    assert isinstance(translated, DatabaseError), translated
    assert not isinstance(translated, DatabaseUnavailableError)
    assert str(translated).startswith("database error: ")
    assert not is_transient(translated)


@pytest.mark.parametrize("driver", sorted(URLS))
def test_a_refused_connection_is_an_outage(driver: str, closed_port: int) -> None:
    pytest.importorskip(driver)
    _assert_unavailable(_connect_error(URLS[driver].format(port=closed_port)))


@pytest.mark.timeout(60)  # fails rather than hangs
@pytest.mark.parametrize("driver", sorted(URLS))
def test_a_connection_attempt_without_answer_is_an_outage(driver: str, silent_port: int) -> None:
    pytest.importorskip(driver)
    _assert_unavailable(_connect_error(URLS[driver].format(port=silent_port)))


def test_psycopg_errors_raised_on_the_client_side_are_errors_of_the_call() -> None:
    psycopg = pytest.importorskip("psycopg")
    for orig in (
        psycopg.OperationalError(
            "sending query and params failed: number of parameters must be between 0 and 65535"
        ),
        psycopg.ProgrammingError("the query has 1 placeholder but 2 parameters were passed"),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ):
        _assert_error_of_the_call(_wrapped(orig, psycopg))


def test_pymysql_errors_raised_on_the_client_side_are_errors_of_the_call() -> None:
    pymysql = pytest.importorskip("pymysql")
    with pytest.raises(pymysql.ProgrammingError) as raised:
        pymysql.converters.escape_float(float("nan"))  # the driver refuses NaN itself
    for orig in (raised.value, pymysql.ProgrammingError("execute() first")):
        _assert_error_of_the_call(_wrapped(orig, pymysql))


def test_sqlite_errors_are_errors_of_the_call() -> None:
    for orig in (
        sqlite3.OperationalError("too many SQL variables"),
        sqlite3.OperationalError("disk I/O error"),
    ):
        _assert_error_of_the_call(_wrapped(orig, sqlite3))


def test_lost_connections_and_statements_out_of_time_are_outages() -> None:
    psycopg = pytest.importorskip("psycopg")
    pymysql = pytest.importorskip("pymysql")
    for orig, dbapi in (
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), psycopg),
        (
            pymysql.OperationalError(2013, "Lost connection to server during query (timed out)"),
            pymysql,
        ),
        (
            psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
            psycopg,
        ),
        (pymysql.OperationalError(2006, "MySQL server has gone away"), pymysql),
    ):
        _assert_unavailable(_wrapped(orig, dbapi))
