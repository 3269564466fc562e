"""Free text stored as the database can hold it: an error, a progress message or an
operator's reason holding a NUL character (which PostgreSQL refuses) or too long for a
MariaDB TEXT column is stored normalised, never lost with what came with it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from recording import Recorder, wait_until

from queuetopia_py import Job, Performer, report_progress
from queuetopia_py._schema import MAX_TEXT_BYTES, normalize_text


class NulError(Exception):
    pass


def test_an_error_holding_a_nul_is_recorded_and_reported_as_raised(
    make_queue: Callable,
) -> None:
    failed: list[Job] = []

    class Fails(Performer):
        def perform(self, job: Job) -> object:
            raise NulError("bad\x00byte")

        def handle_failed_job(self, job: Job) -> None:
            failed.append(job)

    queue = make_queue(performer=Fails)
    given_up: list[str] = []
    queue.subscribe(lambda e: given_up.append(e.error or ""), kinds=["job_given_up"])
    first = queue.create_job("q", "a", {}, max_attempts=2, max_backoff=0)
    after = queue.create_job("q", "a", {}, max_attempts=1)
    queue.start()
    wait_until(lambda: not queue.get_job(after.id).pending, 30, "both jobs given up")
    # handle_failed_job runs once the failure is recorded: the stored state comes first.
    wait_until(lambda: len(failed) == 3, 30, "handle_failed_job called for each failure")
    stored = queue.get_job(first.id)
    assert stored is not None and stored.given_up and stored.attempts == 2
    assert "NulError: bad\ufffdbyte" in (stored.error or "")
    assert "interrupted" not in (stored.error or "")
    assert [j.id for j in failed] == [first.id, first.id, after.id]
    assert len(given_up) == 2 and "NulError: bad" in given_up[0]


def test_a_progress_message_holding_a_nul_is_stored(make_queue: Callable) -> None:
    release = threading.Event()

    def behaviour(job: Job) -> None:
        report_progress("sent\x00 half", 0.5)
        release.wait(20)

    queue = make_queue(performer=Recorder(behaviour))
    job = queue.create_job("q", "a", {})
    queue.start()
    wait_until(lambda: queue.get_job(job.id).progress is not None, 20, "progress stored")
    assert queue.get_job(job.id).progress.message == "sent\ufffd half"  # type: ignore[union-attr]
    release.set()
    wait_until(lambda: queue.get_job(job.id).done, 20, "job done")


def test_an_operators_reason_holding_a_nul_or_too_long_is_stored(make_queue: Callable) -> None:
    queue = make_queue()
    job = queue.create_job("q", "a", {})
    suspension = queue.suspend("q", reason="deploy\x00 window " + "é" * MAX_TEXT_BYTES)
    assert suspension.reason is not None
    assert suspension.reason.startswith("deploy\ufffd window é")
    assert len(suspension.reason.encode()) <= MAX_TEXT_BYTES
    cancelled = queue.cancel_job(job.id, reason="dup\x00licate")
    assert cancelled.interventions[-1].reason == "dup\ufffdlicate"
    assert queue.get_job(job.id) == cancelled


def test_text_is_normalised_once_at_the_storage_edge() -> None:
    assert normalize_text("plain") == "plain"
    assert normalize_text("a\x00b") == "a\ufffdb"
    assert normalize_text("lone \ud800 surrogate") == "lone \ufffd\ufffd\ufffd surrogate"
    cut = normalize_text("€" * 30_000)
    assert cut.endswith("...") and len(cut.encode()) <= MAX_TEXT_BYTES
