"""Live pages: a server-sent event `change` whenever a scope's queues change.

One watcher per scope, shared by every page open on it and stopped when the last one
closes: it reads the scope's fingerprint (`Board.fingerprint`, one short transaction)
every `poll_interval` seconds, and on PostgreSQL at once when a node announces new or
freed work (LISTEN/NOTIFY, through the process's listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from queuetopia_py import _listener
from queuetopia_py._scopes import Scopes
from queuetopia_py._store.announcements import channel

logger = logging.getLogger("queuetopia_py.web")

#: A comment line sent this often keeps proxies from closing a quiet stream.
KEEP_ALIVE = 15.0


def digest(fingerprint: tuple[Any, ...]) -> str:
    """A short digest of a scope's fingerprint (`Board.fingerprint`), that a page
    passes to its live feed."""
    return hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:20]


class _Watch:
    """The watcher of one scope: `version` grows at each change seen."""

    def __init__(self) -> None:
        self.version = 0
        self.changed = asyncio.Event()
        self.wake = asyncio.Event()
        self.users = 0
        self.task: asyncio.Task[None] | None = None
        #: The digest of the latest fingerprint read, once `ready` is set.
        self.digest: str | None = None
        self.ready = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


class Live:
    """The change feeds of the scopes of one set of tables."""

    def __init__(self, scopes: Scopes, poll_interval: float) -> None:
        self.scopes = scopes
        self.poll_interval = poll_interval
        self._watches: dict[str, _Watch] = {}
        self._origin = f"dashboard:{uuid.uuid4()}"

    async def events(self, scope: str, seen: str | None) -> AsyncIterator[str]:
        """The event stream of `scope`: `change` events, and keep-alive comments. `seen`
        is the digest of the fingerprint the page was read after (see `digest`): when
        the scope has changed since, or it is not known, a `change` comes first."""
        watch = self._watches.get(scope)
        if watch is None:
            watch = self._watches[scope] = _Watch()
        watch.users += 1
        if watch.task is None:
            watch.task = asyncio.create_task(self._watch(scope, watch))
        try:
            version = watch.version
            yield "retry: 2000\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.ready.wait(), KEEP_ALIVE)
            if seen is None or watch.digest != seen:
                # Changed between the page's reading and this connection (or while the
                # connection was lost).
                yield f"event: change\ndata: {version}\n\n"
            seen_version = watch.version
            while True:
                waiting = watch.changed
                if watch.version == seen_version:
                    try:
                        await asyncio.wait_for(waiting.wait(), KEEP_ALIVE)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                seen_version = watch.version
                yield f"event: change\ndata: {seen_version}\n\n"
        finally:
            watch.users -= 1
            if watch.users == 0:
                self._watches.pop(scope, None)
                if watch.task is not None:
                    watch.task.cancel()

    async def _watch(self, scope: str, watch: _Watch) -> None:
        board = self.scopes.board(scope)
        loop = asyncio.get_running_loop()
        registration: Any = None
        if self.scopes.engine.dialect.name == "postgresql":
            registration = _listener.subscribe(
                self.scopes.engine,
                channel(board.db.tables),
                scope,
                self._origin,
                lambda _queue: self._wake(loop, watch),
            )
        last: Any = None
        try:
            while True:
                try:
                    current = await run_in_threadpool(board.fingerprint)
                except Exception as exc:  # the database may be away: try again later
                    logger.warning("dashboard: cannot read scope %r: %s", scope, exc)
                else:
                    if last is not None and current != last:
                        watch.bump()
                    last = current
                    watch.digest = digest(current)
                    watch.ready.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.wake.wait(), self.poll_interval)
                watch.wake.clear()
        finally:
            if registration is not None:
                registration.close()

    @staticmethod
    def _wake(loop: asyncio.AbstractEventLoop, watch: _Watch) -> None:
        """From the listener's thread: look at the scope now."""
        loop.call_soon_threadsafe(watch.wake.set)

    def close(self) -> None:
        """Stop every watcher."""
        for watch in self._watches.values():
            if watch.task is not None:
                watch.task.cancel()
        self._watches.clear()
