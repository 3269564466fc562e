"""What happens when a job has used `max_attempts`, on each database: give up (the
default), stay blocked until an operator acts, or move to a dead-letter queue."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from recording import Recorder

from queuetopia_py import ConfigurationError, InvalidJobError, Job, MoveTo
from queuetopia_py.events import EventKind
from queuetopia_py.testing import drain


def always_fails(job: Job) -> None:
    raise RuntimeError(f"boom {job.params.get('i')}")


def fails_first(job: Job) -> None:
    if job.params.get("i") == 0:
        raise RuntimeError("head fails")


def test_by_default_a_job_is_given_up_and_its_queue_moves_on(make_queue: Callable) -> None:
    recorder = Recorder(fails_first)
    queue = make_queue(performer=recorder)
    head = queue.create_job("q", "a", {"i": 0}, max_attempts=1)
    queue.create_job("q", "a", {"i": 1})
    drain(queue)
    assert recorder.order("q") == [0, 1]
    stored = queue.get_job(head.id)
    assert stored.on_failure == "give_up" and stored.state == "given_up" and stored.given_up


def test_block_keeps_the_head_in_place_until_an_operator_retries_it(
    make_queue: Callable,
) -> None:
    recorder = Recorder(fails_first)
    queue = make_queue(performer=recorder)
    events: list[EventKind] = []
    queue.subscribe(lambda e: events.append(e.kind))
    head = queue.create_job("q", "a", {"i": 0}, max_attempts=1, on_failure="block")
    queue.create_job("q", "a", {"i": 1})
    drain(queue)
    drain(queue)
    assert recorder.order("q") == [0]  # the next job waits behind the blocked head
    stored = queue.get_job(head.id)
    assert stored.state == "blocked" and stored.next_attempt_at is None and stored.pending
    assert "head fails" in (stored.error or "")
    assert EventKind.JOB_BLOCKED in events and EventKind.JOB_GIVEN_UP not in events
    status = queue.status().queue("q")
    assert status is not None and status.blocked and status.head.id == head.id
    assert recorder.failed[-1].state == "blocked"  # handle_failed_job saw it
    queue.retry_job(head.id)
    drain(queue)
    assert recorder.order("q") == [0, 0]  # it failed again (max_attempts 1): blocked again
    assert queue.get_job(head.id).state == "blocked"
    queue.abort_job(head.id)
    drain(queue)
    assert recorder.order("q") == [0, 0, 1]


def test_move_to_puts_a_copy_in_the_dead_letter_queue(make_queue: Callable) -> None:
    recorder = Recorder(fails_first)
    queue = make_queue(performer=recorder)
    moved_events = []
    queue.subscribe(moved_events.append, kinds=[EventKind.JOB_DEAD_LETTERED])
    head = queue.create_job(
        "q", "send", {"i": 0}, max_attempts=2, max_backoff=0, on_failure=MoveTo("dead")
    )
    queue.create_job("q", "send", {"i": 1})
    drain(queue)
    drain(queue)
    original = queue.get_job(head.id)
    assert original.state == "dead_lettered" and original.attempts == 2
    (copy,) = queue.list_jobs("dead")
    assert (copy.action, copy.params, copy.max_attempts) == ("send", {"i": 0}, 2)
    assert copy.on_failure == "give_up" and copy.id != head.id
    assert [i.action for i in original.interventions] == ["dead_letter"]
    assert f"as job {copy.id}" in (original.interventions[0].reason or "")
    assert [i.action for i in copy.interventions] == ["moved_from"]
    assert f"job {head.id}" in (copy.interventions[0].reason or "")
    (event,) = moved_events
    assert event.moved_to is not None and event.moved_to.id == copy.id
    assert recorder.order("q") == [0, 0, 1]  # the queue moved on
    # The copy runs in its own queue (and fails there too: the performer is the same),
    # then is given up rather than moved again.
    assert recorder.order("dead") == [0, 0]
    assert queue.get_job(copy.id).state == "given_up"


def test_the_instance_option_sets_the_default_and_a_job_may_override_it(
    make_queue: Callable,
) -> None:
    queue = make_queue(performer=Recorder(always_fails), on_failure="block")
    blocked = queue.create_job("q1", "a", {}, max_attempts=1)
    given_up = queue.create_job("q2", "a", {}, max_attempts=1, on_failure="give_up")
    moved = queue.create_job("q3", "a", {}, max_attempts=1, on_failure="move_to:dead")
    drain(queue)
    assert [queue.get_job(j.id).state for j in (blocked, given_up, moved)] == [
        "blocked",
        "given_up",
        "dead_lettered",
    ]


def test_an_interrupted_final_attempt_meets_the_failure_mode(
    make_queue: Callable, url: str
) -> None:
    queue = make_queue(performer=Recorder())
    job = queue.create_job("q", "a", {}, max_attempts=1, on_failure=MoveTo("dead"))
    # A node claimed the final attempt and died: attempts used, lock long expired.
    jobs = queue._db.tables.jobs
    past = datetime.now(UTC) - timedelta(hours=1)
    with queue.engine.begin() as conn:
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(attempts=1, attempted_at=past, attempted_by="dead-node", next_attempt_at=past)
        )
    drain(queue)
    stored = queue.get_job(job.id)
    assert stored.state == "dead_lettered" and "interrupted" in (stored.error or "")
    assert len(queue.list_jobs("dead")) == 1


@pytest.mark.parametrize("bad", ["retry", "move_to:", "move_to: x", 3, MoveTo("")])
def test_an_invalid_failure_mode_is_refused(make_queue: Callable, bad: object) -> None:
    queue = make_queue()
    with pytest.raises(InvalidJobError, match="on_failure"):
        queue.create_job("q", "a", {}, on_failure=bad)
    with pytest.raises(ConfigurationError, match="on_failure"):
        make_queue(on_failure=bad)
    assert queue.list_jobs() == []


def test_jobs_written_before_version_2_keep_their_meaning(db_url: str) -> None:
    from queuetopia_py import Queuetopia, migrate

    migrate(db_url, to=1)
    engine = sa.create_engine(db_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    row = {
        "scope": "s",
        "queue": "q",
        "action": "a",
        "params": "{}",
        "timeout_us": 1_000_000,
        "max_backoff_us": 1_000_000,
        "max_attempts": 1,
        "attempts": 1,
        "scheduled_at": now,
        "inserted_at": now,
    }
    with engine.begin() as conn:
        insert = sa.text(
            "INSERT INTO queuetopia_jobs (scope, queue, action, params, timeout_us,"
            " max_backoff_us, max_attempts, attempts, scheduled_at, next_attempt_at,"
            " done_at, inserted_at) VALUES (:scope, :queue, :action, :params, :timeout_us,"
            " :max_backoff_us, :max_attempts, :attempts, :scheduled_at, :next_attempt_at,"
            " :done_at, :inserted_at)"
        )
        conn.execute(insert, {**row, "next_attempt_at": None, "done_at": None})  # given up
        conn.execute(insert, {**row, "next_attempt_at": now, "done_at": now})  # done
        conn.execute(insert, {**row, "attempts": 0, "next_attempt_at": now, "done_at": None})
    engine.dispose()
    migrate(db_url)
    queue = Queuetopia(repo=db_url, scope="s")
    try:
        assert [j.state for j in queue.list_jobs()] == ["given_up", "done", "pending"]
        assert all(j.on_failure == "give_up" for j in queue.list_jobs())
        migrate(db_url, to=1)  # and back: the given-up job stays given up
        migrate(db_url)
        assert [j.state for j in queue.list_jobs()] == ["given_up", "done", "pending"]
    finally:
        queue.stop()
