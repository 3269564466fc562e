"""`create_jobs`: many jobs in one transaction, in the order given, on each database."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from recording import Recorder, wait_until

from queuetopia_py import Event, EventKind, InvalidJobError, MoveTo
from queuetopia_py.testing import drain


def test_jobs_are_stored_in_the_order_given_and_run_in_it(make_queue: Callable) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder)
    items = [{"queue": f"q{i % 3}", "action": "send", "params": {"i": i}} for i in range(2500)]
    created = queue.create_jobs(items)
    assert [j.params["i"] for j in created] == list(range(2500))
    assert all(a.id < b.id for a, b in itertools.pairwise(created))
    assert [j.id for j in queue.list_jobs()] == sorted(j.id for j in created)
    drain(queue)
    for q in range(3):
        assert recorder.order(f"q{q}") == list(range(q, 2500, 3))


def test_each_item_takes_create_jobs_arguments_and_the_instance_defaults(
    make_queue: Callable,
) -> None:
    queue = make_queue(max_attempts=7, on_failure="block")
    later = datetime.now(UTC) + timedelta(hours=1)
    plain, custom = queue.create_jobs(
        [
            {"queue": "q", "action": "a", "params": {}},
            {
                "queue": "q",
                "action": "b",
                "params": {"x": [1, 2]},
                "timeout": 5,
                "max_backoff": timedelta(minutes=1),
                "max_attempts": 2,
                "scheduled_at": later,
                "on_failure": MoveTo("dead"),
            },
        ]
    )
    assert (plain.max_attempts, plain.on_failure) == (7, "block")
    assert plain.scheduled_at == plain.next_attempt_at and plain.scheduled_at < later
    assert (custom.timeout, custom.max_backoff) == (timedelta(seconds=5), timedelta(minutes=1))
    assert (custom.max_attempts, custom.on_failure, custom.dead_letter_queue) == (
        2,
        "move_to",
        "dead",
    )
    assert custom.scheduled_at == later and custom.next_attempt_at == later
    assert queue.get_job(custom.id) == custom


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"queue": "", "action": "a", "params": {}}, r"jobs\[1\]\.queue"),
        ({"queue": "q", "action": "a", "params": []}, r"jobs\[1\]\.params"),
        ({"queue": "q", "action": "a", "params": {}, "timeout": 0}, r"jobs\[1\]\.timeout"),
        ({"queue": "q", "action": "a"}, r"jobs\[1\]: missing params"),
        ({"queue": "q", "action": "a", "params": {}, "color": 1}, r"unknown key\(s\) color"),
        (("q", "a", {}), r"jobs\[1\]: must be a mapping"),
    ],
)
def test_one_invalid_item_writes_nothing(make_queue: Callable, bad: object, message: str) -> None:
    queue = make_queue()
    with pytest.raises(InvalidJobError, match=message):
        queue.create_jobs([{"queue": "q", "action": "a", "params": {}}, bad])  # type: ignore[list-item]
    assert queue.list_jobs() == []


def test_no_items_writes_nothing(make_queue: Callable) -> None:
    assert make_queue().create_jobs([]) == []


def test_jobs_join_the_callers_transaction(make_queue: Callable) -> None:
    queue = make_queue()
    announced: list[Event] = []
    queue.subscribe(announced.append, kinds=[EventKind.JOB_CREATED])
    items = [{"queue": "q", "action": "a", "params": {"i": i}} for i in range(3)]
    with queue.engine.connect() as conn:
        queue.create_jobs(items, connection=conn)
        conn.rollback()
        assert queue.list_jobs() == []
        kept = queue.create_jobs(items, connection=conn)
        conn.execute(sa.text("SELECT 1"))
        conn.commit()
    assert [j.id for j in queue.list_jobs()] == [j.id for j in kept]
    wait_until(lambda: len(announced) == 3, 10, "the committed jobs announced")
    assert [e.job_id for e in announced] == [j.id for j in kept]


def test_created_jobs_are_announced_and_wake_the_scheduler(make_queue: Callable) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=60)
    events: list[Event] = []
    queue.subscribe(events.append, kinds=[EventKind.JOB_CREATED])
    queue.start()
    created = queue.create_jobs(
        [{"queue": "q", "action": "a", "params": {"i": i}} for i in range(5)]
    )
    assert [e.job_id for e in events] == [j.id for j in created]
    recorder.wait(lambda r: len(r.finished) == 5, 20)  # long before the next poll
    assert recorder.order("q") == list(range(5))
