"""Fixtures of the system tests: `cluster`, worker processes on a fresh test database
of each backend (see cluster.py), all killed when the test ends; `private_server`, a
fresh database on a private server that the test may stop, restart or crash (see
servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from cluster import SCOPE, Cluster
from servers import PrivateDatabase, ServerPool, ServerUnavailable

from queuetopia_py import Queuetopia

SHARED_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


@pytest.fixture
def cluster(url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Nodes of the `system-tests` scope on a fresh database of the current backend."""
    queue = Queuetopia(repo=url, scope=SCOPE)
    history = tmp_path / "history.jsonl"
    history.touch()
    made = Cluster(url=url, tmp_path=tmp_path, queue=queue, history=history)
    try:
        yield made
    finally:
        made.close()


def _shared_conftest(config: pytest.Config) -> ModuleType:
    """tests/conftest.py as loaded by pytest (its `_required` says which backends must
    not be skipped)."""
    for plugin in config.pluginmanager.get_plugins():
        path = getattr(plugin, "__file__", None)
        if isinstance(plugin, ModuleType) and path and Path(path).resolve() == SHARED_CONFTEST:
            return plugin
    raise RuntimeError(f"{SHARED_CONFTEST} is not loaded")


@pytest.fixture(scope="session")
def private_servers() -> Iterator[ServerPool]:
    """The private servers of this session, one per backend, started on first use."""
    pool = ServerPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(params=["postgresql", "mariadb"])
def private_server(
    request: pytest.FixtureRequest, private_servers: ServerPool
) -> Iterator[PrivateDatabase]:
    """A fresh database on a private server of the backend (shared by the session's
    tests, restarted if a test left it down), which the test may stop, start, restart
    and crash. Skips when the server cannot run here, or fails when the backend is
    required (QUEUETOPIA_REQUIRE_DATABASES). Parametrize it indirectly with "sqlite"
    for a SQLite file standing in (not restartable)."""
    backend = str(request.param)
    try:
        database = private_servers.database(backend)
    except ServerUnavailable as exc:
        reason = f"private {backend} server unavailable: {exc}"
        if backend in _shared_conftest(request.config)._required():
            pytest.fail(f"{reason} (required by QUEUETOPIA_REQUIRE_DATABASES)", pytrace=False)
        pytest.skip(reason)
    try:
        yield database
    finally:
        private_servers.release(database)
