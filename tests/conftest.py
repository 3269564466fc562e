"""Fixtures shared by every test: one fresh database per test and per backend.

Backends: SQLite always; PostgreSQL and MariaDB when reachable. Their admin URLs come
from QUEUETOPIA_TEST_POSTGRESQL_URL and QUEUETOPIA_TEST_MARIADB_URL (defaults: the local
servers). The tests of an unreachable backend are left out of the run, with one line
in the summary; a backend named in QUEUETOPIA_REQUIRE_DATABASES (comma separated, or
"all") fails its tests when unreachable instead. The system tests (marker `system`) run
only with QUEUETOPIA_SYSTEM_TESTS=1.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from queue_rows import inconsistencies

from queuetopia_py import Queuetopia, migrate
from queuetopia_py._schema import build_tables
from queuetopia_py._store.database import create_engine

BACKENDS = ("sqlite", "postgresql", "mariadb")
ADMIN_URLS = {
    "postgresql": os.environ.get(
        "QUEUETOPIA_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get(
        "QUEUETOPIA_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}


def _required() -> set[str]:
    raw = os.environ.get("QUEUETOPIA_REQUIRE_DATABASES", "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    return set(BACKENDS) if "all" in names else names


@cache
def _unreachable(backend: str) -> str | None:
    """Why `backend` cannot be used here, or None when it can."""
    if backend == "sqlite":
        return None
    try:
        engine = sa.create_engine(ADMIN_URLS[backend], connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        first = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]
        return f"{backend} unreachable at {ADMIN_URLS[backend]}: {first}"
    return None


SYSTEM_TESTS = "QUEUETOPIA_SYSTEM_TESTS"
SYSTEM_DIR = Path(__file__).resolve().parent / "system"


def _system_tests_on() -> bool:
    return os.environ.get(SYSTEM_TESTS, "") not in ("", "0")


def _is_system(item: pytest.Item) -> bool:
    return item.get_closest_marker("system") is not None or SYSTEM_DIR in item.path.parents


def _not_run(item: pytest.Item) -> str | None:
    """Why `item` is left out of this run, or None: a system test while they are off, a
    test of a backend that is unreachable here and not required."""
    if _is_system(item) and not _system_tests_on():
        return (
            "system tests (real worker processes, several minutes): set"
            f" {SYSTEM_TESTS}=1 to run them (bash .ci/run does)"
        )
    callspec = getattr(item, "callspec", None)
    backend = None if callspec is None else callspec.params.get("backend")
    if isinstance(backend, str) and backend not in _required():
        return _unreachable(backend)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out, at once and without a line each, the tests this run cannot or need not
    run (see `_not_run`); the summary says how many, and why, in a line per reason."""
    kept: list[pytest.Item] = []
    left: list[pytest.Item] = []
    reasons: dict[str, int] = {}
    for item in items:
        reason = _not_run(item)
        if reason is None:
            kept.append(item)
        else:
            left.append(item)
            reasons[reason] = reasons.get(reason, 0) + 1
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept
    for item in kept:
        if _is_system(item):
            # With pytest-xdist, the system tests (several processes each, timing under
            # chaos) run one after another on one worker, beside the rest of the suite.
            item.add_marker(pytest.mark.xdist_group("system"))
    config.stash[_NOT_RUN] = reasons
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: its controller prints the summary
        workeroutput["not_run"] = reasons


_NOT_RUN = pytest.StashKey[dict[str, int]]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """A pytest-xdist worker ended: keep what it left out (every worker collects every
    test and leaves out the same ones) for the summary."""
    reasons = getattr(node, "workeroutput", {}).get("not_run")
    if reasons:
        node.config.stash[_NOT_RUN] = reasons


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for reason, count in config.stash.get(_NOT_RUN, {}).items():
        terminalreporter.write_line(f"not run: {count} tests: {reason}")


def require_backend(backend: str) -> None:
    """Skip (or fail, when required) a test whose backend is not reachable."""
    reason = _unreachable(backend)
    if reason is None:
        return
    if backend in _required():
        pytest.fail(f"{reason} (required by QUEUETOPIA_REQUIRE_DATABASES)", pytrace=False)
    pytest.skip(reason)


def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    require_backend(backend)
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'queuetopia.db'}"
        return
    name = f"qt_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(ADMIN_URLS[backend], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        url = sa.make_url(ADMIN_URLS[backend]).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if backend == "postgresql" else ""
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty database of the current backend."""
    yield from fresh_database(backend, tmp_path)


@pytest.fixture
def url(db_url: str) -> str:
    """The URL of a fresh database with the queuetopia tables installed."""
    migrate(db_url)
    return db_url


@pytest.fixture
def make_queue(url: str) -> Iterator[Callable[..., Queuetopia]]:
    """Build Queuetopia instances on the test database; all are stopped afterwards."""
    made: list[Queuetopia] = []

    def make(cls: type[Queuetopia] = Queuetopia, **options: Any) -> Queuetopia:
        options.setdefault("repo", url)
        instance = cls(**options)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.stop(timeout=30)
    # Whatever the test did, the queues table must summarise the jobs exactly.
    engine = create_engine(url)
    try:
        for prefix in sorted({instance.options.table_prefix for instance in made}):
            problems = inconsistencies(engine, build_tables(prefix))
            assert problems == [], "the queues table departs from the jobs:\n" + "\n".join(problems)
    finally:
        engine.dispose()
