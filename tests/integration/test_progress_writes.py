"""Progress is best effort: a progress write that fails or hangs never fails, blocks or
duplicates the attempt that reported it, with either executor, on each database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from recording import Recorder, wait_until

from queuetopia_py import DatabaseUnavailableError, Job, Performer, report_progress
from queuetopia_py._store.records import RecordStore

# How long a worker process's attempt waits for the test's release file at most.
_RELEASE_LIMIT = 60.0


def _append(path: Path, line: str) -> None:
    with path.open("a") as history:
        history.write(line + "\n")


class ReleasedPerformer(Performer):
    """Reports progress, then waits for the test's release file (it runs in worker
    processes, so a file stands for an event); its history file shows when each attempt
    started and ended."""

    def perform(self, job: Job) -> object:
        history = Path(job.params["history"])
        _append(history, f"start {job.attempts}")
        for step in range(3):
            report_progress(f"step {step + 1} of 3", (step + 1) / 3)
        release = Path(job.params["release"])
        deadline = time.monotonic() + _RELEASE_LIMIT
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        _append(history, f"end {job.attempts}")
        return {"attempt": job.attempts}


def _unreachable(self: RecordStore, job: Job, message: str | None, fraction: float | None) -> bool:
    raise DatabaseUnavailableError("database unreachable: test")


def test_a_failing_progress_write_in_a_worker_process_neither_fails_nor_overlaps_the_attempt(
    make_queue: Callable,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The worker process sends its progress to the node (this process), which writes it.
    monkeypatch.setattr(RecordStore, "set_progress", _unreachable)
    history, release = tmp_path / "history", tmp_path / "release"
    queue = make_queue(performer=ReleasedPerformer, executor="process", poll_interval=0.2)
    job = queue.create_job(
        "q",
        "a",
        {"history": str(history), "release": str(release)},
        max_backoff=0,
        max_attempts=3,
        timeout=120,
    )

    def progress_failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("progress not stored")]

    with caplog.at_level(logging.WARNING, logger="queuetopia_py"):
        queue.start()
        try:
            # Either the node dealt with the failed write (logged it), or it counted the
            # attempt as failed and started the next one while the first still runs.
            wait_until(
                lambda: bool(progress_failures()) or "start 2" in _lines(history),
                60,
                "the failed progress write dealt with",
            )
            running = queue.get_job(job.id)
            assert (running.attempts, running.error) == (1, None), running.error
        finally:
            release.touch()
        wait_until(lambda: queue.get_job(job.id).state != "pending", 60, "the attempt recorded")
    assert _lines(history) == ["start 1", "end 1"]
    done = queue.get_job(job.id)
    assert (done.state, done.attempts, done.result) == ("done", 1, {"attempt": 1}), done.error
    assert len(progress_failures()) == 1, "a failing progress write is logged once"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_hanging_then_failing_progress_write_neither_blocks_nor_fails_perform(
    make_queue: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing = threading.Event()
    unblock = threading.Event()

    def hanging(self: RecordStore, job: Job, message: str | None, fraction: float | None) -> bool:
        writing.set()
        unblock.wait(60)  # as a write does while the database is unreachable
        raise DatabaseUnavailableError("database unreachable: test")

    monkeypatch.setattr(RecordStore, "set_progress", hanging)
    went_on = threading.Event()
    reported: list[bool] = []

    def behaviour(job: Job) -> object:
        reported.append(report_progress("halfway", 0.5))
        went_on.set()
        return "finished"

    queue = make_queue(performer=Recorder(behaviour), poll_interval=0.2)
    job = queue.create_job("q", "a", {}, max_backoff=0, max_attempts=2)
    queue.start()
    try:
        assert writing.wait(20), "the progress write never started"
        assert went_on.wait(20), "perform was held up by its progress write"
        assert reported == [True]
    finally:
        unblock.set()
    assert queue.wait_for(job.id, timeout=60) == "finished"
    assert queue.get_job(job.id).attempts == 1
