"""Group commit: what many threads hand over, done together in batches.

A thread that hands an item over while no batch runs leads one at once, taking every
item waiting; the others wait for the batch that takes theirs. No item waits for a batch
to fill: alone, it is done at once, by its own thread; under load, the items that
arrive while a batch runs go together in the next one (one transaction for all of them,
instead of one each).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 (the item type)
R = TypeVar("R")


@dataclass(eq=False, slots=True)
class _Entry(Generic[I, R]):
    item: I
    result: R | None = None
    error: BaseException | None = None
    done: bool = False
    #: Set when the entry is done, or when its thread is to lead the next batch.
    wake: threading.Event = field(default_factory=threading.Event)


class GroupCommit(Generic[I, R]):
    """Runs `run_batch(items) -> results` (one result per item, in order) for the items
    handed to `submit`, several at a time: at most `limit` a batch, and never two with
    the same `key`. If `run_batch` raises, every item of its batch raises that error.

    A batch's end wakes only the threads of its items and the one thread that leads the
    next batch (the first in line), not every waiting thread."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[I]], Sequence[R]],
        key: Callable[[I], Hashable],
        limit: int = 100,
    ) -> None:
        self._run_batch = run_batch
        self._key = key
        self._limit = limit
        self._lock = threading.Lock()
        self._waiting: list[_Entry[I, R]] = []
        # Whether a batch runs, or a thread has been woken to lead the next one.
        self._running = False

    def submit(self, item: I) -> R:
        """Do `item` (in a batch of its own or with others); its result."""
        entry: _Entry[I, R] = _Entry(item)
        with self._lock:
            self._waiting.append(entry)
            lead = not self._running
            self._running = True
        while True:
            if not lead:
                entry.wake.wait()
                entry.wake.clear()
            if entry.done:
                if entry.error is not None:
                    raise entry.error
                return entry.result  # type: ignore[return-value]
            # This thread leads the next batch (the line's turn was handed to it).
            with self._lock:
                batch = self._take()
            self._lead(batch)
            lead = False

    def _take(self) -> list[_Entry[I, R]]:
        """The next batch, taken out of the line (called with the lock held)."""
        batch: list[_Entry[I, R]] = []
        keys: set[Hashable] = set()
        left: list[_Entry[I, R]] = []
        for entry in self._waiting:
            key = self._key(entry.item)
            if len(batch) < self._limit and key not in keys:
                batch.append(entry)
                keys.add(key)
            else:
                left.append(entry)
        self._waiting = left
        return batch

    def _lead(self, batch: list[_Entry[I, R]]) -> None:
        try:
            results = self._run_batch([entry.item for entry in batch])
            for entry, result in zip(batch, results, strict=True):
                entry.result = result
        except BaseException as exc:
            for entry in batch:
                entry.error = exc
        finally:
            with self._lock:
                for entry in batch:
                    entry.done = True
                    entry.wake.set()
                if self._waiting:
                    self._waiting[0].wake.set()  # leads the next batch
                else:
                    self._running = False
