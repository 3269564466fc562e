"""The event loop an async performer's coroutines run on.

The application's loop when the scheduler was started from async code (`astart`), so
that `perform` shares the application's clients and connections; else a loop of the
node's own, on a daemon thread started with the scheduler. The scheduler's threads hand
coroutines to the loop and wait for their outcome; the loop never waits for them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class PerformerLoop:
    """Runs coroutines on `loop` (None: a loop of its own, on a thread of its own)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._own = loop is None
        self._thread: threading.Thread | None = None
        if loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name="queuetopia-performer-loop", daemon=True
            )
            self._thread.start()
        self.loop = loop

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coroutine` as a task of the loop; cancelling the future cancels the task.
        The future fails with `RuntimeError` when the loop is closed."""
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop is closed: the coroutine never runs
            coroutine.close()
            raise RuntimeError("the event loop of the async performer is closed") from None

    def call(self, hook: Callable[..., Any], *args: Any) -> Any:
        """`hook(*args)`, awaited on the loop if it is a coroutine (an async hook); from a
        thread of the scheduler, which waits for it."""
        value = hook(*args)
        if inspect.iscoroutine(value):
            return self.submit(value).result()
        return value

    def close(self) -> None:
        """Stop and close the loop of its own (an application's loop is left alone)."""
        if not self._own or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join()
        self.loop.close()
