"""Helpers of the integration tests: a recording performer and condition waits.

A module of its own (not conftest.py): worker processes started with `spawn` import the
test modules, and several conftest.py files would shadow each other there.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from queuetopia_py import Job, Performer


class Recorder(Performer):
    """Records every attempt; `behaviour(job)` may raise or block to shape the attempt."""

    def __init__(self, behaviour: Callable[[Job], object] | None = None) -> None:
        self.behaviour = behaviour
        self.cond = threading.Condition()
        self.started: list[Job] = []
        self.finished: list[Job] = []
        self.running: dict[tuple[str, str], int] = defaultdict(int)
        self.max_running_per_queue = 0
        self.max_running = 0
        self.failed: list[Job] = []

    def perform(self, job: Job) -> object:
        key = (job.scope, job.queue)
        with self.cond:
            self.running[key] += 1
            self.max_running_per_queue = max(self.max_running_per_queue, self.running[key])
            self.max_running = max(self.max_running, sum(self.running.values()))
            self.started.append(job)
            self.cond.notify_all()
        try:
            return self.behaviour(job) if self.behaviour else None
        finally:
            with self.cond:
                self.running[key] -= 1
                self.finished.append(job)
                self.cond.notify_all()

    def handle_failed_job(self, job: Job) -> None:
        with self.cond:
            self.failed.append(job)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[Recorder], bool], timeout: float = 20.0) -> None:
        """Block until `predicate(self)` holds; fail the test after `timeout` seconds."""
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                pytest.fail(
                    f"condition not reached within {timeout} s; started: "
                    f"{[(j.queue, j.params, j.attempts) for j in self.started]}"
                )

    def order(self, queue: str) -> list[Any]:
        """The `i` param of each attempt started in `queue`, in start order."""
        with self.cond:
            return [j.params.get("i") for j in self.started if j.queue == queue]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll a database condition until it holds (used only where no event exists)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s: {what}")
        time.sleep(0.02)
