"""Every way a node stops releases what it holds, or lets it expire: SIGTERM and SIGINT
(running attempts finish within a grace period, then their locks are released), a grace
period running out, exceptions inside the scheduler's loop, and a performer calling
`os._exit` under the process executor."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from recording import Recorder, wait_until

from queuetopia_py import Job, Performer, Queuetopia
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.records import RecordStore

SCOPE = "exits-test"
WORKER_MODULE = f"""
import pathlib, time
from queuetopia_py import Performer, Queuetopia

class FileLogPerformer(Performer):
    # Writes "<id> start" and "<id> end" to the file named by the params, and sleeps.
    def perform(self, job):
        log = pathlib.Path(job.params["log"])
        with log.open("a") as f:
            f.write(f"{{job.id}} start\\n")
        time.sleep(job.params.get("seconds", 0))
        with log.open("a") as f:
            f.write(f"{{job.id}} end\\n")

class ExitsQueue(Queuetopia, performer=FileLogPerformer, scope={SCOPE!r}, lock_lease=1):
    pass
"""


WORKER = [sys.executable, "-m", "queuetopia_py._cli", "worker", "exits_jobs:ExitsQueue"]


@pytest.fixture
def client(url: str) -> Iterator[Queuetopia]:
    """An instance of the worker's scope, to create and read jobs (never started)."""
    instance = Queuetopia(repo=url, scope=SCOPE)
    yield instance
    instance.stop()


def _locks(client: Queuetopia) -> list[dict[str, object]]:
    return ClaimStore(client._db, client.scope, "observer").locks.locks_held()


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def start_worker(url: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `queuetopia worker` on the test database with extra arguments."""
    (tmp_path / "exits_jobs.py").write_text(WORKER_MODULE)
    started: list[subprocess.Popen[bytes]] = []

    def start(*arguments: str) -> subprocess.Popen[bytes]:
        output = (tmp_path / f"worker-{len(started)}.log").open("wb")
        worker = subprocess.Popen(
            [*WORKER, "--poll-interval", "0.2", *arguments],
            cwd=tmp_path,
            env={**os.environ, "QUEUETOPIA_WORKER_REPO": url},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        output.close()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_lets_every_running_attempt_finish_then_releases_every_lock(
    client: Queuetopia,
    start_worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    log = tmp_path / "attempts.log"
    firsts = [
        client.create_job(f"q{i}", "sleep", {"log": str(log), "seconds": 1.0}) for i in range(3)
    ]
    seconds = [client.create_job(f"q{i}", "sleep", {"log": str(log)}) for i in range(3)]
    worker = start_worker("--max-concurrency", "3", "--grace-period", "60")
    wait_until(lambda: len(_lines(log)) == 3, 30, "the three first jobs to start")
    worker.send_signal(signum)
    assert worker.wait(30) == 0
    assert sorted(_lines(log)) == sorted(
        [f"{j.id} start" for j in firsts] + [f"{j.id} end" for j in firsts]
    )
    for job in firsts:
        stored = client.get_job(job.id)
        assert stored is not None and stored.done and stored.attempts == 1
    for job in seconds:  # nothing new started once the signal came
        stored = client.get_job(job.id)
        assert stored is not None and stored.attempts == 0
    assert _locks(client) == []


def test_past_its_grace_period_a_worker_exits_with_status_1_and_its_queue_is_taken_over(
    client: Queuetopia,
    start_worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    make_queue: Callable[..., Queuetopia],
) -> None:
    log = tmp_path / "attempts.log"
    job = client.create_job("q", "sleep", {"log": str(log), "seconds": 3600}, timeout=7200)
    worker = start_worker("--grace-period", "0.5")
    wait_until(lambda: _lines(log) == [f"{job.id} start"], 30, "the job to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 1
    output = (tmp_path / "worker-0.log").read_text()
    assert "worker stopped before its running attempts finished" in output
    assert "Traceback" not in output
    # The attempt died with the worker; its lock (1 s lease) expires and another node
    # runs the job again.
    recorder = Recorder()
    make_queue(performer=recorder, scope=SCOPE, lock_lease=1, poll_interval=0.2).start()
    recorder.wait(lambda r: len(r.started) == 1, 30)
    wait_until(lambda: client.get_job(job.id).done, 20, "the job done")
    assert client.get_job(job.id).attempts == 2


def test_exceptions_in_the_poll_are_logged_and_the_scheduler_goes_on(
    make_queue: Callable[..., Queuetopia],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_poll = ClaimStore.poll
    failures = [RuntimeError("injected poll failure")] * 2

    def failing_poll(self: ClaimStore, limit: int) -> object:
        if failures:
            raise failures.pop()
        return real_poll(self, limit)

    monkeypatch.setattr(ClaimStore, "poll", failing_poll)
    recorder = Recorder()
    other = make_queue()
    jobs = [other.create_job(f"q{i}", "a", {}) for i in range(3)]  # found by polls only
    queue = make_queue(performer=recorder, poll_interval=0.2)
    caplog.set_level(logging.WARNING, logger="queuetopia_py.scheduler")
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 3)
    assert "poll failed" in caplog.text and "injected poll failure" in caplog.text
    wait_until(lambda: all(queue.get_job(j.id).done for j in jobs), 20, "the jobs recorded")


def test_a_runner_failing_before_its_claim_holds_nothing_and_its_queue_runs_later(
    make_queue: Callable[..., Queuetopia], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_claim = ClaimStore.claim_all
    failures = [RuntimeError("injected claim failure")]

    def failing_claim(self: ClaimStore, requests: Any) -> Any:
        if failures:
            raise failures.pop()
        return real_claim(self, requests)

    monkeypatch.setattr(ClaimStore, "claim_all", failing_claim)
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=0.2)
    job = queue.create_job("q", "a", {})
    queue.start()
    wait_until(lambda: not failures, 10, "the injected failure")
    assert _locks(queue) == []
    recorder.wait(lambda r: len(r.finished) == 1, 30)  # after the queue's 5 s aside
    wait_until(lambda: queue.get_job(job.id).done, 20, "the job recorded")
    assert queue.get_job(job.id).attempts == 1


def test_a_runner_failing_while_recording_leaves_a_lock_that_expires(
    make_queue: Callable[..., Queuetopia], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_record = RecordStore.record_successes
    failures = [RuntimeError("injected record failure")]

    def failing_record(self: RecordStore, successes: Any) -> Any:
        if failures:
            raise failures.pop()
        return real_record(self, successes)

    monkeypatch.setattr(RecordStore, "record_successes", failing_record)
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=0.2)
    job = queue.create_job("q", "a", {}, timeout=0.5, max_backoff=0)
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 2, 30)  # run again once its lock expired
    wait_until(lambda: queue.get_job(job.id).done, 20, "the job recorded")
    assert queue.get_job(job.id).attempts == 2
    assert _locks(queue) == []


class _ExitsOnFirstAttempt(Performer):
    def perform(self, job: Job) -> object:
        if job.attempts == 1:
            os._exit(3)
        return "second"


def test_a_performer_calling_os_exit_under_the_process_executor_fails_only_its_attempt(
    make_queue: Callable[..., Queuetopia],
) -> None:
    queue = make_queue(performer=_ExitsOnFirstAttempt, executor="process", poll_interval=0.2)
    job = queue.create_job("q", "a", {}, max_backoff=0)
    after = queue.create_job("q", "a", {})
    queue.start()
    wait_until(lambda: queue.get_job(after.id).done, 60, "both jobs done")
    stored = queue.get_job(job.id)
    assert stored.done and stored.attempts == 2 and stored.result == "second"
    assert "worker process exited during the attempt (exit code 3)" in (stored.error or "")
    assert _locks(queue) == []
    assert threading.active_count() >= 1
