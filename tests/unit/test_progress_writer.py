"""`ProgressWriter`: reports return at once, only the latest unwritten one is written, an
attempt's reports end with it, and a failing write is logged once."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from factories import make_job

from queuetopia_py import DatabaseUnavailableError, Job
from queuetopia_py._progress import ProgressWriter

Report = tuple[str | None, float | None]


class FakeWrite:
    """Records the reports written; each write may be held until `unblock` is set."""

    def __init__(self, *, held: bool = False, stored: bool = True) -> None:
        self.written: list[Report] = []
        self.entered = threading.Event()
        self.unblock = threading.Event()
        self.stored = stored
        self.failing = False
        if not held:
            self.unblock.set()

    def __call__(self, job: Job, message: str | None, fraction: float | None) -> bool:
        self.entered.set()
        assert self.unblock.wait(20), "the write was never let go"
        if self.failing:
            raise DatabaseUnavailableError("database unreachable: test")
        self.written.append((message, fraction))
        return self.stored


def test_reports_return_while_a_write_hangs_and_only_the_latest_waits() -> None:
    write = FakeWrite(held=True)
    writer = ProgressWriter(write)
    with writer.attempt(make_job()) as report:
        assert report("first", 0.1)
        assert write.entered.wait(20)
        assert report("second", 0.2) and report("third", 0.3)  # while "first" hangs
        write.unblock.set()
    assert write.written == [("first", 0.1), ("third", 0.3)]


def test_the_last_report_is_written_when_the_attempt_ends() -> None:
    write = FakeWrite()
    writer = ProgressWriter(write)
    with writer.attempt(make_job()) as report:
        for step in range(1, 6):
            report(f"step {step}", step / 5)
    assert write.written[-1] == ("step 5", 1.0)


def test_the_end_of_an_attempt_waits_for_its_write_under_way() -> None:
    write = FakeWrite(held=True)
    writer = ProgressWriter(write)
    leaving = threading.Event()

    def let_go() -> None:
        leaving.wait(20)
        write.unblock.set()

    helper = threading.Thread(target=let_go)
    helper.start()
    with writer.attempt(make_job()) as report:
        report("under way", None)
        assert write.entered.wait(20)
        leaving.set()
    assert write.written == [("under way", None)]
    helper.join(20)


def test_reports_after_the_attempt_ended_are_refused() -> None:
    write = FakeWrite()
    writer = ProgressWriter(write)
    with writer.attempt(make_job()) as report:
        pass
    assert report("too late", 1.0) is False
    assert write.written == []


def test_reports_are_refused_once_a_write_found_the_claim_lost() -> None:
    write = FakeWrite(stored=False)
    writer = ProgressWriter(write)
    with writer.attempt(make_job()) as report:
        deadline = time.monotonic() + 20
        while report("still running?", None):
            assert time.monotonic() < deadline, "the lost claim was never noticed"
            write.entered.wait(0.01)


def test_a_failing_write_is_logged_once_until_a_write_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    write = FakeWrite()
    write.failing = True
    writer = ProgressWriter(write)
    with caplog.at_level(logging.DEBUG, logger="queuetopia_py.progress"):
        for attempt in range(1, 4):
            with writer.attempt(make_job(id=attempt)) as report:
                assert report(f"job {attempt}", None)  # the failure never reaches perform
        write.failing = False
        write.entered.clear()
        with writer.attempt(make_job(id=4)) as report:
            report("job 4", None)
            assert write.entered.wait(20)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("progress not stored")
    assert warnings[1] == "progress stored again"
    assert write.written == [("job 4", None)]
