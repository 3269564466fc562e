"""Progress reports, stored results, the success hook and `wait_for`, on each database
and with both executors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
from recording import Recorder, wait_until

from queuetopia_py import (
    Job,
    JobAbortedError,
    JobCancelledError,
    JobDeadLetteredError,
    JobGivenUpError,
    JobNotFoundError,
    MoveTo,
    Performer,
    WaitTimeoutError,
    report_progress,
)
from queuetopia_py.testing import drain


class ReportingPerformer(Performer):
    """Reports progress, then returns a JSON result (importable by worker processes)."""

    def perform(self, job: Job) -> object:
        assert report_progress("step 1 of 2", 0.5)
        return {"sent": job.params["n"], "to": ["a@b.c"]}


class NotJsonPerformer(Performer):
    def perform(self, job: Job) -> object:
        return object()


def test_progress_is_visible_while_the_attempt_runs(make_queue: Callable) -> None:
    release = threading.Event()

    def behaviour(job: Job) -> None:
        report_progress("halfway", 0.5)
        release.wait(20)

    queue = make_queue(performer=Recorder(behaviour), node="n1")
    job = queue.create_job("q", "a", {})
    queue.start()
    wait_until(lambda: queue.get_job(job.id).progress is not None, 20, "progress stored")
    progress = queue.get_job(job.id).progress
    assert (progress.message, progress.fraction) == ("halfway", 0.5)
    assert progress.at.tzinfo is not None
    (running,) = queue.status().nodes["n1"]
    assert running.job.id == job.id and running.job.progress == progress
    release.set()
    wait_until(lambda: queue.get_job(job.id).done, 20, "job done")


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_the_result_and_progress_are_stored_with_either_executor(
    make_queue: Callable, executor: str
) -> None:
    queue = make_queue(performer=ReportingPerformer, executor=executor, poll_interval=0.2)
    job = queue.create_job("q", "a", {"n": 3})
    queue.start()
    assert queue.wait_for(job.id, timeout=60) == {"sent": 3, "to": ["a@b.c"]}
    stored = queue.get_job(job.id)
    assert stored.result == {"sent": 3, "to": ["a@b.c"]}
    assert stored.progress is not None and stored.progress.message == "step 1 of 2"


def test_a_result_that_is_not_json_is_stored_as_none_with_a_warning(
    make_queue: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(performer=NotJsonPerformer())
    job = queue.create_job("q", "a", {})
    with caplog.at_level(logging.WARNING, logger="queuetopia_py"):
        drain(queue)
    stored = queue.get_job(job.id)
    assert stored.done and stored.result is None
    assert any("not JSON" in r.getMessage() for r in caplog.records)


def test_a_new_attempt_clears_the_previous_progress(make_queue: Callable) -> None:
    calls = {"n": 0}

    def behaviour(job: Job) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            report_progress("first attempt")
            raise RuntimeError("fails")

    queue = make_queue(performer=Recorder(behaviour))
    job = queue.create_job("q", "a", {}, max_backoff=0)
    drain(queue)
    stored = queue.get_job(job.id)
    assert stored.done and stored.attempts == 2 and stored.progress is None


def test_the_success_hook_gets_the_done_job_and_its_failure_is_only_logged(
    make_queue: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Job] = []

    class Hooked(Performer):
        def perform(self, job: Job) -> object:
            return job.params["i"] * 2

        def handle_succeeded_job(self, job: Job) -> None:
            seen.append(job)
            if job.params["i"] == 2:
                raise RuntimeError("alerting is down")

    queue = make_queue(performer=Hooked())
    first = queue.create_job("q", "a", {"i": 1})
    second = queue.create_job("q", "a", {"i": 2})
    with caplog.at_level(logging.ERROR):
        drain(queue)
    assert [(j.id, j.done, j.result) for j in seen] == [(first.id, True, 2), (second.id, True, 4)]
    assert queue.get_job(second.id).done
    assert any("handle_succeeded_job raised" in r.getMessage() for r in caplog.records)


def test_report_progress_outside_an_attempt_does_nothing_and_checks_its_input() -> None:
    assert report_progress("not in an attempt") is False
    with pytest.raises(ValueError, match="fraction"):
        report_progress(fraction=1.5)
    with pytest.raises(ValueError, match="fraction"):
        report_progress(fraction=float("nan"))
    with pytest.raises(ValueError, match="message"):
        report_progress()
    with pytest.raises(ValueError, match="message"):
        report_progress(42)  # type: ignore[arg-type]


def test_a_long_progress_message_is_cut(make_queue: Callable) -> None:
    queue = make_queue(performer=Recorder(lambda job: report_progress("x" * 5000)))
    job = queue.create_job("q", "a", {})
    drain(queue)
    message = queue.get_job(job.id).progress.message
    assert len(message) == 1000 and message.endswith("...")


def test_wait_for_raises_when_the_job_ends_without_success(make_queue: Callable) -> None:
    def behaviour(job: Job) -> None:
        raise RuntimeError("nope")

    queue = make_queue(performer=Recorder(behaviour))
    given_up = queue.create_job("q1", "a", {}, max_attempts=1)
    moved = queue.create_job("q2", "a", {}, max_attempts=1, on_failure=MoveTo("dead"))
    cancelled = queue.create_job("q3", "a", {}, scheduled_at=None)
    queue.cancel_job(cancelled.id)
    aborted = queue.create_job("q4", "a", {})
    queue.abort_job(aborted.id)
    drain(queue)
    with pytest.raises(JobGivenUpError, match="nope") as raised:
        queue.wait_for(given_up.id, timeout=5)
    assert raised.value.job.id == given_up.id
    with pytest.raises(JobDeadLetteredError):
        queue.wait_for(moved.id, timeout=5)
    with pytest.raises(JobCancelledError):
        queue.wait_for(cancelled.id, timeout=5)
    with pytest.raises(JobAbortedError):
        queue.wait_for(aborted.id, timeout=5)
    with pytest.raises(JobNotFoundError):
        queue.wait_for(999999, timeout=5)


def test_wait_for_times_out_on_a_job_that_does_not_run(make_queue: Callable) -> None:
    queue = make_queue()
    job = queue.create_job("q", "a", {})
    with pytest.raises(WaitTimeoutError, match="still pending") as raised:
        queue.wait_for(job.id, timeout=0.2)
    assert isinstance(raised.value, TimeoutError)
    with pytest.raises(ValueError, match="timeout"):
        queue.wait_for(job.id, timeout=-1)


def test_wait_for_returns_once_another_instance_runs_the_job(
    make_queue: Callable, url: str
) -> None:
    worker = make_queue(performer=ReportingPerformer(), scope="shared", poll_interval=0.1)
    client = make_queue(scope="shared")
    job = client.create_job("q", "a", {"n": 7})
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(client.wait_for(job.id, 30)))
    waiter.start()
    worker.start()
    waiter.join(40)
    assert result == [{"sent": 7, "to": ["a@b.c"]}]


class DecliningPerformer(Performer):
    def perform(self, job: Job) -> object:
        return self.charge(job.params["card"])

    def charge(self, card: str) -> object:
        raise RuntimeError(f"card {card} declined")


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_stored_traceback_starts_at_the_performers_own_frame(
    make_queue: Callable, executor: str
) -> None:
    queue = make_queue(performer=DecliningPerformer, executor=executor, poll_interval=0.2)
    job = queue.create_job("q", "a", {"card": "4242"}, max_attempts=1)
    queue.start()
    with pytest.raises(JobGivenUpError):
        queue.wait_for(job.id, timeout=60)
    error = queue.get_job(job.id).error or ""
    lines = error.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].startswith(f'  File "{__file__}"') and lines[1].endswith("in perform")
    assert "queuetopia_py" not in error and "concurrent" not in error, error
    assert lines[-1] == "RuntimeError: card 4242 declined"
