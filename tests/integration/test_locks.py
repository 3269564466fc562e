"""Queue locks: exclusivity, take-over after expiry, fencing, and the database clock."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from recording import wait_until

from queuetopia_py import Job, Performer, Queuetopia
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Busy, Claim, NotDue


def _claims(queue: Queuetopia, node: str) -> ClaimStore:
    return ClaimStore(queue._db, queue.scope, node)


def _expire_lock(queue: Queuetopia, name: str) -> None:
    queues = queue._db.tables.queues
    with queue.engine.begin() as conn:
        conn.execute(
            queues.update()
            .where(queues.c.queue == name, queues.c.token.is_not(None))
            .values(locked_until=datetime.now(UTC) - timedelta(hours=1))
        )


def test_a_claimed_queue_is_busy_for_every_other_node(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {}, timeout=30, max_backoff=0)
    claim = _claims(queue, "node-a").claim("q")
    assert isinstance(claim, Claim) and claim.job.attempts == 1
    assert isinstance(_claims(queue, "node-b").claim("q"), Busy)
    assert isinstance(_claims(queue, "node-a").claim("q"), Busy)  # even for its holder


def test_the_lock_lives_the_job_timeout_plus_one_second(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {}, timeout=5)
    store = _claims(queue, "node-a")
    claim = store.claim("q")
    assert isinstance(claim, Claim)
    (lock,) = store.locks.locks_held()
    assert lock["locked_until"] - lock["locked_at"] == timedelta(seconds=6)
    assert lock["locked_by_node"] == "node-a" and lock["token"] == claim.token
    assert claim.job.attempted_at == lock["locked_at"]


def test_concurrent_claims_of_one_queue_give_exactly_one_winner(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {}, max_backoff=0)
    barrier = threading.Barrier(8)
    results: list[object] = []

    def claim(i: int) -> None:
        store = _claims(queue, f"node-{i}")
        barrier.wait()
        results.append(store.claim("q"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Claim) for r in results) == 1
    # the losers either saw the lock (Busy) or skipped the head being claimed (None)
    assert all(r is None or isinstance(r, Claim | Busy) for r in results)
    assert queue.list_jobs()[0].attempts == 1


def test_an_expired_lock_is_taken_over_and_its_old_holder_cannot_record(
    make_queue: Callable,
) -> None:
    queue = make_queue()
    job = queue.create_job("q", "a", {}, timeout=30, max_backoff=0)
    old, new = _claims(queue, "old"), _claims(queue, "new")
    old_claim = old.claim("q")
    assert isinstance(old_claim, Claim)
    _expire_lock(queue, "q")
    new_claim = new.claim("q")
    assert isinstance(new_claim, Claim) and new_claim.job.attempts == 2
    # The old holder wakes up late: nothing it records lands.
    assert old.records.record_success(old_claim) is None
    assert old.records.record_failure(old_claim, "late", None, keep_lock=False) is None
    assert not old.locks.renew(old_claim)
    old.locks.release(old_claim)
    assert new.locks.locks_held()[0]["token"] == new_claim.token
    assert queue.get_job(job.id).done_at is None
    assert new.records.record_success(new_claim) is not None
    stored = queue.get_job(job.id)
    assert stored.done and stored.attempted_by == "new" and stored.error is None
    assert new.locks.locks_held() == []


def test_an_expired_lock_puts_its_queue_back_in_the_polls(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {}, timeout=30, max_backoff=0)
    store = _claims(queue, "a")
    assert isinstance(store.claim("q"), Claim)
    assert store.poll(10).queues == []  # locked: not offered
    _expire_lock(queue, "q")
    assert store.poll(10).queues == ["q"]
    taken = _claims(queue, "b").claim("q")  # taken over in place
    assert isinstance(taken, Claim)
    assert [lock["locked_by_node"] for lock in store.locks.locks_held()] == ["b"]


def test_a_head_backing_off_is_not_due_even_when_later_jobs_are(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("blocked", "a", {})
    queue.create_job("blocked", "a", {})
    queue.create_job("free", "a", {})
    store = _claims(queue, "a")
    claim = store.claim("blocked")
    assert isinstance(claim, Claim)
    retry_at = claim.job.attempted_at + timedelta(minutes=10)
    store.records.record_failure(claim, "boom", retry_at, keep_lock=False)
    result = store.poll(10)
    assert result.queues == ["free"]  # the head decides, whatever is due behind it
    not_due = store.claim("blocked")
    assert isinstance(not_due, NotDue) and timedelta(minutes=9) < not_due.wait
    assert result.next_in is not None and timedelta(minutes=9) < result.next_in


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_a_node_whose_clock_is_ahead_neither_steals_a_live_lock_nor_runs_early(
    make_queue: Callable,
) -> None:
    queue = make_queue()
    queue.create_job("locked", "a", {}, timeout=60, max_backoff=0)
    later = queue.create_job(
        "future", "a", {}, scheduled_at=datetime.now(UTC) + timedelta(minutes=30)
    )
    holder = _claims(queue, "holder")
    assert isinstance(holder.claim("locked"), Claim)
    with freeze_time(datetime.now(UTC) + timedelta(hours=2)):  # this node's clock is off
        skewed = _claims(queue, "skewed")
        assert isinstance(skewed.claim("locked"), Busy)
        assert isinstance(skewed.claim("future"), NotDue)
        assert skewed.poll(10).queues == []
    assert queue.get_job(later.id).attempts == 0


def test_a_node_killed_mid_attempt_is_taken_over_after_its_lock_expires(
    make_queue: Callable,
) -> None:
    """A crashed holder (its lock left behind) delays its queue by the lock's lifetime."""
    queue = make_queue()
    job = queue.create_job("q", "a", {}, timeout=0.5)
    crashed = _claims(queue, "crashed")
    assert isinstance(crashed.claim("q"), Claim)  # ... and the node dies here
    started = time.monotonic()
    done = threading.Event()

    class Record(Performer):
        def perform(self, job: Job) -> object:
            done.set()
            return None

    survivor = make_queue(performer=Record, poll_interval=30)
    survivor.start()
    assert done.wait(20)
    took = time.monotonic() - started
    assert 1.0 <= took < 10  # not before the lock (0.5 s + 1 s) expired
    survivor.stop()
    assert queue.get_job(job.id).done and queue.get_job(job.id).attempts == 2


class _KillsItself(Performer):
    def perform(self, job: Job) -> object:
        if job.attempts == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return None


class _Hangs(Performer):
    def perform(self, job: Job) -> object:
        if job.attempts == 1:
            time.sleep(3600)
        return None


def test_process_executor_survives_a_worker_that_dies_mid_attempt(
    make_queue: Callable,
) -> None:
    queue = make_queue(performer=_KillsItself, executor="process")
    job = queue.create_job("q", "a", {}, max_backoff=0)
    queue.start()
    wait_until(lambda: queue.get_job(job.id).done, 60, "job done")
    stored = queue.get_job(job.id)
    assert stored.done and stored.attempts == 2
    assert "worker process exited" in (stored.error or "")


def test_process_executor_kills_an_attempt_at_its_timeout_and_frees_the_queue(
    make_queue: Callable,
) -> None:
    queue = make_queue(performer=_Hangs, executor="process")
    job = queue.create_job("q", "a", {}, timeout=1, max_backoff=0)
    queue.start()
    wait_until(lambda: queue.get_job(job.id).done, 60, "job done")
    stored = queue.get_job(job.id)
    assert stored.done and stored.attempts == 2 and stored.error == "job_timeout"


class _Brief(Performer):
    def perform(self, job: Job) -> object:
        time.sleep(0.05)
        return None


def test_process_workers_outlive_the_queue_runners_that_started_them(
    make_queue: Callable,
) -> None:
    # Runners come and go (queues are handed back when others wait); workers are reused
    # across them and must never be killed mid-attempt when a runner thread ends.
    queue = make_queue(performer=_Brief, executor="process", max_concurrency=2)
    jobs = [queue.create_job(f"q{q}", "a", {"i": i}) for i in range(4) for q in range(4)]
    queue.start()
    wait_until(lambda: all(queue.get_job(j.id).done for j in jobs), 90, "all jobs done")
    assert [(queue.get_job(j.id).attempts, queue.get_job(j.id).error) for j in jobs] == [
        (1, None)
    ] * len(jobs)


def test_a_job_whose_final_attempt_was_interrupted_is_given_up_and_its_queue_goes_on(
    make_queue: Callable,
) -> None:
    queue = make_queue()
    last_chance = queue.create_job("q", "a", {}, timeout=0.2, max_attempts=1, max_backoff=0)
    after = queue.create_job("q", "a", {})
    crashed = _claims(queue, "crashed")
    assert isinstance(crashed.claim("q"), Claim)  # ... and the node dies here
    done = threading.Event()
    failed: list[Job] = []

    class Record(Performer):
        def perform(self, job: Job) -> object:
            done.set()
            return None

        def handle_failed_job(self, job: Job) -> None:
            failed.append(job)

    make_queue(performer=Record).start()
    assert done.wait(20)
    given_up = queue.get_job(last_chance.id)
    assert given_up.given_up and given_up.attempts == 1
    assert "interrupted" in (given_up.error or "") and "crashed" in (given_up.error or "")
    assert [j.id for j in failed] == [last_chance.id]
    wait_until(lambda: queue.get_job(after.id).done, 20, "next job done")


def test_an_interrupted_attempt_counts_as_failed_and_backs_off(make_queue: Callable) -> None:
    queue = make_queue()
    job = queue.create_job("q", "a", {}, timeout=30)
    claim = _claims(queue, "crashed").claim("q")
    assert isinstance(claim, Claim)
    stored = queue.get_job(job.id)
    assert stored.next_attempt_at == stored.attempted_at + timedelta(seconds=2)


class _Unpicklable(Performer):
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def perform(self, job: Job) -> object:
        return None


def test_an_executor_that_cannot_run_the_attempt_records_a_failure(
    make_queue: Callable,
) -> None:
    queue = make_queue(performer=_Unpicklable(), executor="process")
    job = queue.create_job("q", "a", {}, max_attempts=1)
    queue.start()
    wait_until(lambda: queue.get_job(job.id).given_up, 60, "job given up")
    assert "pickle" in (queue.get_job(job.id).error or "")


def test_stop_leaves_a_timed_out_thread_holding_its_queue_until_it_returns(
    make_queue: Callable,
) -> None:
    release = threading.Event()

    class Stuck(Performer):
        def perform(self, job: Job) -> object:
            release.wait(60)
            return None

    queue = make_queue(performer=Stuck)
    queue.create_job("q", "a", {}, timeout=0.2)
    queue.start()
    claims = _claims(queue, "observer")
    wait_until(lambda: queue.list_jobs()[0].error == "job_timeout", 20, "timed out")
    assert queue.stop(timeout=5)  # not held up by the unkillable thread
    first = claims.locks.locks_held()[0]["locked_until"]
    wait_until(
        lambda: claims.locks.locks_held() and claims.locks.locks_held()[0]["locked_until"] > first,
        20,
        "lock renewed after stop",
    )
    release.set()
    wait_until(
        lambda: claims.locks.locks_held() == [], 20, "lock released once the thread returned"
    )


def test_a_final_attempt_still_running_under_its_lock_is_not_given_up(
    make_queue: Callable,
) -> None:
    queue = make_queue()
    job = queue.create_job("q", "a", {}, timeout=30, max_attempts=1, max_backoff=0)
    holder = _claims(queue, "holder")
    claim = holder.claim("q")
    assert isinstance(claim, Claim)  # due again at once (max_backoff=0), but locked
    assert isinstance(_claims(queue, "other").claim("q"), Busy)
    assert not queue.get_job(job.id).given_up
    assert holder.records.record_success(claim) is not None
    assert queue.get_job(job.id).done
