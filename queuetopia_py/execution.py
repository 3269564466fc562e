"""Executors: where `perform` runs, and how an attempt that outlives its timeout ends.

- `ThreadExecutor` (default) runs each attempt on a thread of this process. A thread
  cannot be killed: an attempt past its timeout is reported as timed out while its thread
  goes on, and the caller keeps the queue locked until `Outcome.wait_stopped` says it ended.
- `ProcessExecutor` runs attempts in worker processes that are killed at the timeout and
  replaced, so a timed-out attempt has really stopped when its outcome is reported.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from queuetopia_py import defaults
from queuetopia_py.job import Job
from queuetopia_py.performer import Performer

logger = logging.getLogger(__name__)

_MAX_ERROR_LENGTH = 8000


def describe_exception(exc: BaseException) -> str:
    """The error recorded for a failed attempt: type, message and traceback."""
    text = "".join(traceback.format_exception(exc)).strip()
    return text if len(text) <= _MAX_ERROR_LENGTH else text[: _MAX_ERROR_LENGTH - 3] + "..."


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended. `error` is None on success.

    `wait_stopped(seconds) -> bool` tells whether the attempt's code has stopped running,
    waiting at most that long; it is None when it has stopped already.
    """

    error: str | None
    timed_out: bool = False
    wait_stopped: Callable[[float], bool] | None = None


class Executor(Protocol):
    """Runs one attempt of a job and reports its outcome by `deadline` (monotonic time)."""

    def run(self, job: Job, deadline: float) -> Outcome:
        """Run `performer.perform(job)`, giving up at `deadline`."""
        ...

    def close(self) -> None:
        """Release the executor's resources."""
        ...


class ThreadExecutor:
    """Runs each attempt on its own daemon thread of this process."""

    def __init__(self, performer: Performer) -> None:
        self.performer = performer

    def run(self, job: Job, deadline: float) -> Outcome:
        """Run the attempt on a new thread and wait for it until `deadline`."""
        future: Future[object] = Future()

        def target() -> None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(self.performer.perform(job))
            except BaseException as exc:
                future.set_exception(exc)

        thread = threading.Thread(
            target=target, name=f"queuetopia-perform-{job.queue}-{job.id}", daemon=True
        )
        thread.start()
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:

            def wait_stopped(seconds: float) -> bool:
                thread.join(seconds)
                return not thread.is_alive()

            return Outcome(defaults.TIMEOUT_ERROR, timed_out=True, wait_stopped=wait_stopped)
        except BaseException as exc:
            return Outcome(describe_exception(exc))
        return Outcome(None)

    def close(self) -> None:
        """Nothing to release: attempt threads end by themselves."""


def _die_with_parent() -> None:
    # Linux: the kernel kills this worker when its parent dies, so a killed node
    # leaves no attempt running behind it.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(conn: Connection, performer: type[Performer] | Performer) -> None:
    """Body of a worker process: run the jobs sent on `conn`, one at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _die_with_parent()
    instance = performer() if isinstance(performer, type) else performer
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        try:
            instance.perform(job)
            reply: tuple[str, str | None] = ("ok", None)
        except BaseException as exc:
            reply = ("error", describe_exception(exc))
        conn.send(reply)


@dataclass
class _Worker:
    process: Any
    conn: Connection


class ProcessExecutor:
    """Runs attempts in worker processes, killed at the timeout and replaced.

    The performer (a class, or a picklable instance) must be importable by the worker
    processes, which are started with the `spawn` method.
    """

    def __init__(self, performer: type[Performer] | Performer) -> None:
        self.performer = performer
        self._context = multiprocessing.get_context("spawn")
        # Linux delivers PR_SET_PDEATHSIG when the *thread* that started a worker ends,
        # so workers are started from this one thread, which lives as long as the
        # executor, never from the short-lived queue runners.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queuetopia-spawner")
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    return worker
                worker.conn.close()
        return self._spawner.submit(self._spawn).result()

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, self.performer),
            daemon=True,
            name="queuetopia-worker",
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.process.kill()
        worker.process.join()
        worker.conn.close()

    def run(self, job: Job, deadline: float) -> Outcome:
        """Send the attempt to a worker; kill the worker if it is not done by `deadline`."""
        worker = self._take()
        try:
            worker.conn.send(job)
            if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                self._kill(worker)
                return Outcome(defaults.TIMEOUT_ERROR, timed_out=True)
            status, error = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._kill(worker)
            code = worker.process.exitcode
            return Outcome(f"worker process exited during the attempt (exit code {code})")
        with self._lock:
            if self._closed:
                self._kill(worker)
            else:
                self._idle.append(worker)
        return Outcome(None if status == "ok" else error)

    def close(self) -> None:
        """Stop the idle worker processes."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            self._kill(worker)
        self._spawner.shutdown(wait=False)
