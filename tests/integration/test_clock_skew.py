"""A running node whose clock is off by minutes: the database's clock decides when a job
is due and when a lock has expired, so the node neither runs a job early nor takes a live
lock, and does not hold back due work either.

PostgreSQL and MariaDB only: on SQLite the clock is the one of the machine holding the
file, shared by every node on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from recording import Recorder, wait_until

from queuetopia_py import Queuetopia
from queuetopia_py._store.claims import ClaimStore, PollResult
from queuetopia_py._store.locks import Claim


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize(
    "offset", [timedelta(minutes=10), -timedelta(minutes=10)], ids=["ahead", "behind"]
)
def test_a_running_node_with_a_skewed_clock_runs_what_the_database_says_is_due(
    make_queue: Callable[..., Queuetopia],
    monkeypatch: pytest.MonkeyPatch,
    offset: timedelta,
) -> None:
    queue = make_queue()
    future = queue.create_job(
        "future", "a", {}, scheduled_at=datetime.now(UTC) + timedelta(minutes=5)
    )
    locked = queue.create_job("locked", "a", {}, timeout=300)
    holder = ClaimStore(queue._db, queue.scope, "holder")
    assert isinstance(holder.claim("locked"), Claim)  # live for 5 minutes more
    due = queue.create_job("due", "a", {})

    polls = 0
    polled = threading.Condition()
    real_poll = ClaimStore.poll

    def counting_poll(self: ClaimStore, limit: int) -> PollResult:
        nonlocal polls
        result = real_poll(self, limit)
        with polled:
            polls += 1
            polled.notify_all()
        return result

    monkeypatch.setattr(ClaimStore, "poll", counting_poll)
    recorder = Recorder()
    real_now = datetime.now(UTC)
    with freeze_time(real_now + offset, tick=True):
        assert abs(datetime.now(UTC) - real_now - offset) < timedelta(seconds=5)
        skewed = make_queue(performer=recorder, poll_interval=0.1, node="skewed")
        skewed.start()
        recorder.wait(lambda r: len(r.finished) == 1)
        wait_until(lambda: skewed.get_job(due.id).done, 20, "the due job recorded")
        with polled:  # many more polls, none of which may start the others
            seen = polls
            assert polled.wait_for(lambda: polls >= seen + 10, 30)
        skewed.stop()
    assert [j.id for j in recorder.started] == [due.id]
    assert queue.get_job(future.id).attempts == 0
    assert queue.get_job(locked.id).attempts == 1  # the holder's claim only
    assert [lock["locked_by_node"] for lock in holder.locks.locks_held()] == ["holder"]
