"""Fresh, throw-away databases for the benchmarks (imported by the scripts beside it)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from queuetopia_py import migrate

ADMIN = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}


@contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """An empty database of `backend` (SQLite: a file in `tmp`); dropped afterwards."""
    if backend == "sqlite":
        path = tmp / f"{uuid.uuid4().hex}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                leftover.unlink(missing_ok=True)
        return
    name = f"qt_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN[backend], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        yield sa.make_url(ADMIN[backend]).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if backend == "postgresql" else ""
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


def fresh_databases(backends: str) -> Iterator[tuple[str, str]]:
    """(backend, URL) of a fresh database with the queuetopia tables, for each backend
    of the comma-separated list in turn; each is dropped as the loop moves on or ends."""
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends.split(","):
            with fresh_database(backend, Path(tmp)) as url:
                migrate(url)
                yield backend, url
