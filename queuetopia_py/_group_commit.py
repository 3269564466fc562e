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
from dataclasses import dataclass
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 (the item type)
R = TypeVar("R")


@dataclass(eq=False, slots=True)
class _Entry(Generic[I, R]):
    item: I
    result: R | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit(Generic[I, R]):
    """Runs `run_batch(items) -> results` (one result per item, in order) for the items
    handed to `submit`, several at a time: at most `limit` a batch, and never two with
    the same `key`. If `run_batch` raises, every item of its batch raises that error."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[I]], Sequence[R]],
        key: Callable[[I], Hashable],
        limit: int = 100,
    ) -> None:
        self._run_batch = run_batch
        self._key = key
        self._limit = limit
        self._changed = threading.Condition()
        self._waiting: list[_Entry[I, R]] = []
        self._running = False

    def submit(self, item: I) -> R:
        """Do `item` (in a batch of its own or with others); its result."""
        entry: _Entry[I, R] = _Entry(item)
        with self._changed:
            self._waiting.append(entry)
        while True:
            with self._changed:
                while self._running and not entry.done:
                    self._changed.wait()
                if entry.done:
                    if entry.error is not None:
                        raise entry.error
                    return entry.result  # type: ignore[return-value]
                batch = self._take()
                self._running = True
            self._lead(batch)

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
            with self._changed:
                for entry in batch:
                    entry.done = True
                self._running = False
                self._changed.notify_all()
