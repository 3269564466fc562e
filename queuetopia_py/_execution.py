"""Executors: where `perform` runs, and how an attempt that outlives its timeout ends.

- `ThreadExecutor` (default) runs each attempt on a thread of this process. A thread
  cannot be killed: an attempt past its timeout is reported as timed out while its thread
  goes on, and the caller keeps the queue locked until `Outcome.wait_stopped` says it ended.
- `ProcessExecutor` runs attempts in worker processes that are killed at the timeout and
  replaced, so a timed-out attempt has really stopped when its outcome is reported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import inspect
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Protocol

from queuetopia_py import _tracing as tracing
from queuetopia_py import defaults
from queuetopia_py._event_loop import PerformerLoop
from queuetopia_py._job import Job, to_result
from queuetopia_py._performer import Performer, is_async
from queuetopia_py._progress import Reporter, reporting
from queuetopia_py._tracing import AttemptTrace

logger = logging.getLogger("queuetopia_py.execution")

_MAX_ERROR_LENGTH = 8000
# How long a new worker process may take to import the performer and say it is ready.
_WORKER_START_TIMEOUT = 120.0
# How long a cancelled task (an async attempt past its timeout) may take to stop before
# its queue is held locked until it does.
_CANCEL_GRACE = 1.0
# While an attempt's lock depends on renewals, look this often whether it lapsed.
_LEASE_CHECK = 0.1


def call_perform(performer: Performer, job: Job) -> object:
    """Call `performer.perform(job)`: what it returns, or raise. An async perform runs to
    its end on a loop of its own (`asyncio.run`: the inline and process executors). An
    awaitable returned by a `def perform` (a sync def calling an async function) is
    refused, never counted as a success: nothing here would run its body.
    """
    if is_async(performer):
        return asyncio.run(performer.perform(job))  # type: ignore[arg-type]
    value = performer.perform(job)
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # not run: no "never awaited" warning when it is collected
        raise TypeError(
            f"perform returned an awaitable ({type(value).__qualname__}) from a def: "
            "define perform with async def to have it awaited"
        )
    return value


# Frames of the machinery that calls `perform` (this package, and the futures an
# attempt thread hands its outcome through): left out of a stored traceback's start.
_MACHINERY = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)) + os.sep,
)


def _own_frames(tb: TracebackType | None) -> TracebackType | None:
    """`tb` from its first frame outside the machinery (all of it when the error was
    raised inside the machinery itself)."""
    start = tb
    while start is not None and start.tb_frame.f_code.co_filename.startswith(_MACHINERY):
        start = start.tb_next
    return start if start is not None else tb


def describe_exception(exc: BaseException) -> str:
    """The error recorded for a failed attempt: type, message and traceback, the
    traceback starting at the performer's own code."""
    lines = traceback.format_exception(type(exc), exc, _own_frames(exc.__traceback__))
    text = "".join(lines).strip()
    return text if len(text) <= _MAX_ERROR_LENGTH else text[: _MAX_ERROR_LENGTH - 3] + "..."


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended. `error` is None on success; `result` is then the JSON value
    `perform` returned, and `result_problem` says why it was not JSON (None stored).

    `wait_stopped(seconds) -> bool` tells whether the attempt's code has stopped running,
    waiting at most that long; it is None when it has stopped already.
    """

    error: str | None
    timed_out: bool = False
    wait_stopped: Callable[[float], bool] | None = None
    result: Any = None
    result_problem: str | None = None


def succeeded(value: object) -> Outcome:
    """The outcome of an attempt whose `perform` returned `value`."""
    result, problem = to_result(value)
    return Outcome(None, result=result, result_problem=problem)


class Executor(Protocol):
    """Runs one attempt of a job and reports its outcome by `deadline` (monotonic time)."""

    def run(
        self,
        job: Job,
        deadline: float,
        progress: Reporter | None = None,
        lapsed: Callable[[], bool] | None = None,
        trace: AttemptTrace | None = None,
    ) -> Outcome:
        """Run `performer.perform(job)`, giving up at `deadline`; the attempt's
        `report_progress` calls go to `progress` (a `ProgressWriter`'s reporter, which
        returns at once and does not raise). `lapsed` tells when the queue's lock
        may be about to expire unrenewed: an executor that can stop the attempt then
        does. `trace` (see `_tracing`) is made current where `perform` runs."""
        ...

    def prepare(self) -> None:
        """Get ready for this thread's next `run` (before the queue is claimed)."""
        ...

    def release(self) -> None:
        """Give back what `prepare` held for this thread (its runner ends)."""
        ...

    def close(self) -> None:
        """Release the executor's resources."""
        ...


# What an attempt thread is handed: the job, its progress reporter and trace, and the
# future its outcome is set on.
_Item = tuple[Job, Reporter | None, AttemptTrace | None, Future[object]]


class _AttemptThread:
    """A daemon thread that runs a runner's attempts one after the other. It is given up
    (told to end once its attempt returns) when an attempt outlives its deadline."""

    def __init__(self, performer: Performer) -> None:
        self.performer = performer
        self._inbox: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="queuetopia-perform", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self._inbox.get()) is not None:
            job, progress, trace, future = item
            future.set_running_or_notify_cancel()
            try:
                with reporting(progress), tracing.current(trace):
                    future.set_result(call_perform(self.performer, job))
            except BaseException as exc:
                future.set_exception(exc)

    def submit(
        self, job: Job, progress: Reporter | None, trace: AttemptTrace | None
    ) -> Future[object]:
        future: Future[object] = Future()
        self._inbox.put((job, progress, trace, future))
        return future

    def end(self) -> None:
        """End the thread once its current attempt (if any) returns."""
        self._inbox.put(None)


class ThreadExecutor:
    """Runs attempts on threads of this process: each runner thread hands its attempts
    to an attempt thread of its own, replaced when an attempt outlives its timeout.

    With `loop` (an async performer), an attempt is a task of that loop instead, which
    the runner thread waits for, and which is cancelled at the timeout.
    """

    def __init__(self, performer: Performer, loop: PerformerLoop | None = None) -> None:
        self.performer = performer
        self.loop = loop
        self._local = threading.local()

    def _worker(self) -> _AttemptThread:
        worker: _AttemptThread | None = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = _AttemptThread(self.performer)
        return worker

    def run(
        self,
        job: Job,
        deadline: float,
        progress: Reporter | None = None,
        lapsed: Callable[[], bool] | None = None,
        trace: AttemptTrace | None = None,
    ) -> Outcome:
        """Run the attempt on this runner's attempt thread and wait for it until
        `deadline`. A thread cannot be stopped: `lapsed` is not used."""
        if self.loop is not None:
            return self._run_task(self.loop, job, deadline, progress, trace)
        worker = self._worker()
        future = worker.submit(job, progress, trace)
        try:
            value = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            # The thread cannot be stopped: it ends after this attempt returns, and the
            # runner's next attempt gets a new one.
            self._local.worker = None
            worker.end()

            def wait_stopped(seconds: float) -> bool:
                worker.thread.join(seconds)
                return not worker.thread.is_alive()

            return Outcome(defaults.TIMEOUT_ERROR, timed_out=True, wait_stopped=wait_stopped)
        except BaseException as exc:
            return Outcome(describe_exception(exc))
        return succeeded(value)

    def _run_task(
        self,
        loop: PerformerLoop,
        job: Job,
        deadline: float,
        progress: Reporter | None,
        trace: AttemptTrace | None,
    ) -> Outcome:
        """Run an async perform as a task of `loop`; cancel it at `deadline`."""
        stopped = threading.Event()
        perform = self.performer.perform

        async def attempt() -> object:
            try:
                with reporting(progress), tracing.current(trace):
                    return await perform(job)  # type: ignore[misc]
            finally:
                stopped.set()

        try:
            future = loop.submit(attempt())
            value = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()
            # A task that catches its cancellation may go on: its queue stays locked
            # until it has stopped, as a thread's would.
            if stopped.wait(_CANCEL_GRACE):
                return Outcome(defaults.TIMEOUT_ERROR, timed_out=True)
            return Outcome(defaults.TIMEOUT_ERROR, timed_out=True, wait_stopped=stopped.wait)
        except concurrent.futures.CancelledError:
            return Outcome("the attempt's task was cancelled (its event loop is stopping)")
        except BaseException as exc:
            return Outcome(describe_exception(exc))
        return succeeded(value)

    def prepare(self) -> None:
        """Nothing to prepare: the attempt thread starts with the first attempt."""

    def release(self) -> None:
        """End this runner's attempt thread."""
        worker: _AttemptThread | None = getattr(self._local, "worker", None)
        if worker is not None:
            self._local.worker = None
            worker.end()

    def close(self) -> None:
        """Nothing to release: runners end their attempt threads."""


class InlineExecutor:
    """Runs each attempt on the calling thread, without a timeout (test helpers' drain);
    with `loop` (an async performer), as a task of that loop, waited for."""

    def __init__(self, performer: Performer, loop: PerformerLoop | None = None) -> None:
        self.performer = performer
        self.loop = loop

    def run(
        self,
        job: Job,
        deadline: float,
        progress: Reporter | None = None,
        lapsed: Callable[[], bool] | None = None,
        trace: AttemptTrace | None = None,
    ) -> Outcome:
        """Run the attempt now, on this thread; neither `deadline` nor `lapsed` is
        enforced."""
        try:
            # The task gets this thread's context: its reporter and trace.
            with reporting(progress), tracing.current(trace):
                if self.loop is not None:
                    value = self.loop.call(self.performer.perform, job)
                else:
                    value = call_perform(self.performer, job)
        except Exception as exc:
            return Outcome(describe_exception(exc))
        return succeeded(value)

    def prepare(self) -> None:
        """Nothing to prepare."""

    def release(self) -> None:
        """Nothing held."""

    def close(self) -> None:
        """Nothing to release."""


def _die_with_parent(parent: int) -> None:
    # Linux: the kernel kills this worker when its parent dies, so a killed node
    # leaves no attempt running behind it. The parent may have died while this
    # interpreter was still starting, before the request could be made: check after.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:  # elsewhere, and as a second line of defence
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(conn: Connection, performer: type[Performer] | Performer, parent: int) -> None:
    """Body of a worker process: say it is ready, then run the jobs sent on `conn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _die_with_parent(parent)
    try:
        instance = performer() if isinstance(performer, type) else performer
    except BaseException as exc:
        conn.send(("broken", describe_exception(exc)))
        return
    conn.send(("ready", None))

    def progress(message: str | None, fraction: float | None) -> bool:
        conn.send(("progress", (message, fraction)))
        return True

    while True:
        try:
            job, activate = conn.recv()
        except (EOFError, OSError):
            return
        try:
            with reporting(progress), nullcontext() if activate is None else activate():
                value = call_perform(instance, job)
            reply: tuple[str, object] = ("ok", to_result(value))
        except BaseException as exc:
            reply = ("error", describe_exception(exc))
        conn.send(reply)


class WorkerStartError(RuntimeError):
    """A worker process could not be started (its performer failed to load)."""


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
        self._reserved = threading.local()
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
            args=(child_conn, self.performer, os.getpid()),
            daemon=True,
            name="queuetopia-worker",
        )
        process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn)
        try:
            if not parent_conn.poll(_WORKER_START_TIMEOUT):
                raise WorkerStartError(f"worker process not ready in {_WORKER_START_TIMEOUT} s")
            status, error = parent_conn.recv()
        except (EOFError, OSError):
            status, error = "broken", f"worker process exited (exit code {process.exitcode})"
        except WorkerStartError:
            self._kill(worker)
            raise
        if status != "ready":
            self._kill(worker)
            raise WorkerStartError(f"worker process could not load the performer: {error}")
        return worker

    def prepare(self) -> None:
        """Hold a started, ready worker for this thread's next attempt.

        Called before a queue is claimed, so that a worker's start-up never eats into an
        attempt's timeout or its lock's lifetime.
        """
        worker: _Worker | None = getattr(self._reserved, "worker", None)
        if worker is None or not worker.process.is_alive():
            self._reserved.worker = self._take()

    def release(self) -> None:
        """Give this thread's held worker back to the pool."""
        worker: _Worker | None = getattr(self._reserved, "worker", None)
        self._reserved.worker = None
        if worker is not None:
            self._put_back(worker)

    def _put_back(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        self._kill(worker)

    def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.process.kill()
        worker.process.join()
        worker.conn.close()

    def run(
        self,
        job: Job,
        deadline: float,
        progress: Reporter | None = None,
        lapsed: Callable[[], bool] | None = None,
        trace: AttemptTrace | None = None,
    ) -> Outcome:
        """Send the attempt (and what makes `trace` current there) to a worker; kill the
        worker if it is not done by `deadline`, or as soon as `lapsed()` says the queue's
        lock may expire unrenewed (so that the attempt never runs on while another node
        takes the queue over). Should anything raise meanwhile (`progress`, an
        interrupt), the worker is killed before the exception leaves: an attempt never
        runs on without an outcome."""
        worker: _Worker | None = getattr(self._reserved, "worker", None)
        self._reserved.worker = None
        if worker is None or not worker.process.is_alive():
            worker = self._take()
        try:
            worker.conn.send((job, None if trace is None else trace.carried()))
            while True:
                remaining = deadline - time.monotonic()
                wait = remaining if lapsed is None else min(remaining, _LEASE_CHECK)
                if not worker.conn.poll(max(0.0, wait)):
                    if lapsed is not None and lapsed():
                        self._kill(worker)
                        return Outcome(defaults.LEASE_LAPSED_ERROR)
                    if time.monotonic() < deadline:
                        continue
                    self._kill(worker)
                    return Outcome(defaults.TIMEOUT_ERROR, timed_out=True)
                status, payload = worker.conn.recv()
                if status != "progress":
                    break
                if progress is not None:
                    progress(*payload)
        except (EOFError, OSError, BrokenPipeError):
            self._kill(worker)
            code = worker.process.exitcode
            return Outcome(f"worker process exited during the attempt (exit code {code})")
        except BaseException:
            # Leaving without an outcome (the progress callback raised, an interrupt):
            # the attempt may still run in the worker, and would overlap the queue's
            # next one. It ends here.
            self._kill(worker)
            raise
        self._put_back(worker)
        if status != "ok":
            return Outcome(payload)
        result, problem = payload
        return Outcome(None, result=result, result_problem=problem)

    def close(self) -> None:
        """Stop the idle worker processes."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            self._kill(worker)
        self._spawner.shutdown(wait=False)
