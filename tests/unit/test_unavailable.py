"""A database that cannot be reached: calls fail at once with `DatabaseUnavailableError`
naming the cause."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from queuetopia_py import DatabaseError, DatabaseUnavailableError, Queuetopia


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local TCP port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://postgres@127.0.0.1:{port}/x", "mysql+pymysql://root@127.0.0.1:{port}/x"],
)
def test_create_job_on_an_unreachable_database_raises_a_clear_error(
    url: str, closed_port: int
) -> None:
    pytest.importorskip("psycopg" if "psycopg" in url else "pymysql")
    queue = Queuetopia(repo=url.format(port=closed_port), scope="s")
    with pytest.raises(DatabaseUnavailableError, match=r"^database unreachable: ") as raised:
        queue.create_job("q", "a", {})
    assert isinstance(raised.value, DatabaseError)  # callers catching DatabaseError still do
    with pytest.raises(DatabaseUnavailableError):
        queue.list_jobs()
    with pytest.raises(DatabaseUnavailableError):
        queue.status()
