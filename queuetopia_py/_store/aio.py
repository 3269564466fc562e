"""Coroutines' calls: the store's statements, run for asyncio code without blocking its loop.

The statements and transactions are written once, synchronously. For a coroutine, on
PostgreSQL through psycopg, they run on an asyncio engine of the same URL and settings
(psycopg's async connection) inside SQLAlchemy's greenlet bridge, the mechanism of its
own `AsyncSession`: each round trip is awaited on the caller's loop, and no thread is
used. Elsewhere (SQLite, MariaDB/MySQL, an engine the application made itself, or
without greenlet installed), the call runs on a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import URL

from queuetopia_py._store.database import ON_LOOP, Database, create_async_engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


def _has_greenlet() -> bool:
    """Whether SQLAlchemy's asyncio bridge can run here: it needs greenlet (which the
    `postgresql` extra installs)."""
    try:
        import greenlet  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


class AsyncCalls:
    """Runs calls of the store's (synchronous) code for coroutines (see the module).

    `url` is the URL the database's engine was made from, normalised (`normalize_url`;
    None: an engine the application made, whose settings cannot be repeated: worker
    threads then).
    """

    def __init__(
        self, db: Database, url: URL | None, *, statement_timeout: timedelta | None, pool_size: int
    ) -> None:
        self.db = db
        self.native = (
            url is not None
            and url.get_backend_name() == "postgresql"
            and url.drivername.endswith("+psycopg")
            and _has_greenlet()
        )
        self._url = url
        self._statement_timeout = statement_timeout
        self._pool_size = pool_size
        self._lock = threading.Lock()

    async def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, its statements awaited on the running loop (or, where
        the database has no asyncio driver here, on a worker thread)."""
        if not self.native:
            return await asyncio.to_thread(fn, *args, **kwargs)
        from sqlalchemy.util import greenlet_spawn

        self._engine()
        token = ON_LOOP.set(True)
        try:
            return await greenlet_spawn(fn, *args, **kwargs)
        finally:
            ON_LOOP.reset(token)

    def _engine(self) -> AsyncEngine:
        """The asyncio engine, made on the first call."""
        with self._lock:
            engine = self.db.async_engine
            if engine is None:
                assert self._url is not None
                engine = self.db.async_engine = create_async_engine(
                    self._url,
                    statement_timeout=self._statement_timeout,
                    pool_size=self._pool_size,
                )
            return engine

    async def dispose(self) -> None:
        """Close the asyncio engine's connections (a later call opens new ones)."""
        with self._lock:
            engine, self.db.async_engine = self.db.async_engine, None
        if engine is not None:
            await engine.dispose()
