"""The helpers users call from their own test suites."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from recording import Recorder

from queuetopia_py import ConfigurationError
from queuetopia_py.testing import assert_job_created, drain, refute_job_created


def test_assert_job_created_matches_the_given_attributes(make_queue: Callable) -> None:
    queue = make_queue()
    made = queue.create_job("mails", "send", {"to": "a@b.c"}, max_attempts=3)
    assert assert_job_created(queue, "mails", action="send", params={"to": "a@b.c"}) == made
    assert assert_job_created(queue, max_attempts=3, count=1) == made
    with pytest.raises(AssertionError, match=r"expected a job with queue='mails'.*found 0") as e:
        assert_job_created(queue, "mails", params={"to": "other@b.c"})
    assert "params={'to': 'a@b.c'}" in str(e.value)  # lists what exists
    with pytest.raises(AssertionError, match="expected 2 job"):
        assert_job_created(queue, "mails", count=2)


def test_refute_job_created(make_queue: Callable) -> None:
    queue = make_queue()
    refute_job_created(queue)
    queue.create_job("mails", "send", {"to": "a@b.c"})
    refute_job_created(queue, "sms")
    refute_job_created(queue, "mails", params={"to": "x"})
    with pytest.raises(AssertionError, match="expected no job"):
        refute_job_created(queue, action="send")


def test_helpers_see_only_their_scope(make_queue: Callable) -> None:
    mine, theirs = make_queue(scope="mine"), make_queue(scope="theirs")
    theirs.create_job("q", "a", {})
    refute_job_created(mine)
    with pytest.raises(AssertionError):
        assert_job_created(mine, "q")


def test_drain_runs_due_jobs_in_order_and_leaves_the_rest(make_queue: Callable) -> None:
    from datetime import UTC, datetime, timedelta

    recorder = Recorder(lambda job: 1 / 0 if job.queue == "bad" else None)
    queue = make_queue(performer=recorder)
    for i in range(3):
        queue.create_job("q", "a", {"i": i})
    queue.create_job("bad", "a", {"i": 0})
    queue.create_job("bad", "a", {"i": 1})
    later = queue.create_job(
        "q2", "a", {"i": 0}, scheduled_at=datetime.now(UTC) + timedelta(hours=1)
    )
    attempted = drain(queue)
    assert recorder.order("q") == [0, 1, 2]
    assert recorder.order("bad") == [0]  # failed once: it backs off and blocks its queue
    assert len(attempted) == 4 and [j.state for j in attempted].count("done") == 3
    assert queue.get_job(later.id).state == "pending"


def test_drain_needs_a_performer(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {})
    with pytest.raises(ConfigurationError, match="performer"):
        drain(queue)
    recorder = Recorder()
    assert len(drain(queue, performer=recorder)) == 1
