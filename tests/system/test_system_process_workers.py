"""`ProcessExecutor` worker processes, driven directly: they must live exactly as long as
their node, whichever thread started them.

Defects found by the system tests are reproduced deterministically here, so that they
stay fixed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import factories
import pytest
from cluster import HERE, process_gone
from history import attempts_of, read_events
from node import LOG_ENV, NODE_ENV, HistoryPerformer

from queuetopia_py import Job, Performer, report_progress
from queuetopia_py._execution import Outcome, ProcessExecutor

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]


def make_job(job_id: int, *, timeout: float = 10.0, **params: object) -> Job:
    """A claimed job as the scheduler hands it to an executor."""
    return factories.make_job(
        id=job_id,
        scope="process-workers",
        action="system",
        params={"seq": job_id, **params},
        timeout=timedelta(seconds=timeout),
        max_backoff=timedelta(hours=1),
        attempted_by="test",
    )


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The attempt history that worker processes of this process write to."""
    path = tmp_path / "history.jsonl"
    monkeypatch.setenv(LOG_ENV, str(path))
    monkeypatch.setenv(NODE_ENV, str(os.getpid()))
    return path


def test_a_pooled_worker_process_outlives_the_runner_thread_that_spawned_it(
    history: Path,
) -> None:
    executor = ProcessExecutor(HistoryPerformer)
    first_done = threading.Event()
    release_first = threading.Event()
    outcomes: dict[str, Outcome] = {}

    # PR_SET_PDEATHSIG fires when the *thread* that started a worker ends: a worker started
    # by a queue's short-lived runner thread would be killed mid-attempt of another queue.
    def first_runner() -> None:  # a queue's runner: one quick job, then its queue is empty
        outcomes["first"] = executor.run(make_job(1), time.monotonic() + 30)
        first_done.set()
        release_first.wait(10)

    def second_runner() -> None:  # another queue's runner, reusing the pooled worker
        outcomes["second"] = executor.run(make_job(2, work=1.0), time.monotonic() + 30)

    first = threading.Thread(target=first_runner)
    second = threading.Thread(target=second_runner)
    try:
        first.start()
        assert first_done.wait(30)
        second.start()
        wait_until(lambda: any(a.job == 2 for a in attempts_of(read_events(history))))
        release_first.set()  # the first runner thread ends while job 2 runs
        first.join(10)
        second.join(30)
    finally:
        release_first.set()
        executor.close()
    assert outcomes["first"].error is None
    assert outcomes["second"].error is None, outcomes["second"].error


def test_a_worker_process_still_booting_when_its_node_is_killed_never_runs_the_job(
    tmp_path: Path,
) -> None:
    history = tmp_path / "history.jsonl"
    history.touch()
    script = textwrap.dedent(
        f"""
        import multiprocessing, os, signal, sys, threading, time
        sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent)!r}]
        from test_system_process_workers import make_job
        from node import HistoryPerformer
        from queuetopia_py._execution import ProcessExecutor

        executor = ProcessExecutor(HistoryPerformer)
        # timeout 0.5 s: the queue's lock would live 1.5 s; the attempt works 2.5 s.
        job = make_job(1, timeout=0.5, work=2.5)
        threading.Thread(target=executor.run, args=(job, time.monotonic() + 0.5)).start()
        while not multiprocessing.active_children():
            time.sleep(0.001)
        time.sleep(0.05)  # the job is on the worker's pipe; the worker is still booting
        print(multiprocessing.active_children()[0].pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, LOG_ENV: str(history), NODE_ENV: "0"}
    output = tmp_path / "node.out"
    with output.open("wb") as out, (tmp_path / "node.err").open("wb") as err:
        node = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=HERE, stdout=out, stderr=err, timeout=30
        )
    died_at = time.time()
    assert node.returncode == -signal.SIGKILL
    worker = int(output.read_text())
    try:
        # A correct worker dies with its node, or at least never starts the job.
        wait_until(lambda: process_gone(worker), timeout=10)
        attempts = attempts_of(read_events(history))
        late = [a for a in attempts if a.start > died_at or (a.end or 0) > died_at]
        assert late == [], f"the worker ran an attempt after its node died at {died_at:.3f}: {late}"
    finally:
        for e in read_events(history):
            if e["event"] == "start" and not process_gone(e["pid"]):
                os.kill(e["pid"], signal.SIGKILL)


def test_an_attempt_doing_no_work_does_not_time_out_while_its_worker_process_starts(
    history: Path,
) -> None:
    executor = ProcessExecutor(HistoryPerformer)

    # A worker's start-up must not count against the attempt: with a 0.1 s timeout it
    # would always time out; with 2 s, it did as soon as a dozen workers started at once.
    def attempt(i: int) -> str | None:
        executor.prepare()  # as the scheduler does before it claims a queue
        return executor.run(make_job(i, timeout=0.1), time.monotonic() + 0.1).error

    try:
        errors = [attempt(i) for i in range(3)]
    finally:
        executor.close()
    started = len(attempts_of(read_events(history)))
    assert errors == [None, None, None], f"{started} of 3 attempts ever started perform"


class PidReporter(Performer):
    """Reports its worker's pid as progress, then works as long as the params say."""

    def perform(self, job: Job) -> object:
        report_progress(str(os.getpid()))
        time.sleep(job.params["work"])
        return "worked"


@pytest.mark.parametrize("raised", [RuntimeError("progress not taken"), KeyboardInterrupt()])
def test_a_worker_process_is_killed_when_its_attempt_leaves_without_an_outcome(
    raised: BaseException,
) -> None:
    executor = ProcessExecutor(PidReporter)
    pids: list[int] = []

    def progress(message: str | None, fraction: float | None) -> bool:
        pids.append(int(message or 0))
        raise raised

    def note(message: str | None, fraction: float | None) -> bool:
        pids.append(int(message or 0))
        return True

    try:
        # The attempt's outcome is never known: were its worker left running, the
        # attempt's next try would overlap it.
        with pytest.raises(type(raised)):
            executor.run(make_job(1, work=60), time.monotonic() + 30, progress)
        (first,) = pids
        wait_until(lambda: process_gone(first))
        assert executor.run(make_job(2, work=0), time.monotonic() + 30, note).error is None
        assert pids[1] != first
    finally:
        executor.close()
