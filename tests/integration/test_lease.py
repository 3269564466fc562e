"""The lock lease: a long attempt's lock is renewed while it runs, is never taken over while
its node lives, and is taken over one lease after its node died; node names are unique
per instance and process."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from recording import Recorder, wait_until

from queuetopia_py import ConfigurationError, DatabaseError, Job, Performer, Queuetopia
from queuetopia_py._backoff import lock_lifetime, needs_renewal
from queuetopia_py._lease import LeaseKeeper
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Busy, Claim, LockStore

LEASE = timedelta(seconds=1.5)


def _claims(queue: Queuetopia, node: str, lease: timedelta = LEASE) -> ClaimStore:
    return ClaimStore(queue._db, queue.scope, node, lease)


def _lock_span(store: ClaimStore) -> timedelta:
    (lock,) = store.locks.locks_held()
    return lock["locked_until"] - lock["locked_at"]


def test_the_lock_of_a_job_longer_than_the_lease_lives_one_lease(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {}, timeout=600, max_backoff=0)
    queue.create_job("q", "a", {}, timeout=600, max_backoff=0)
    queue.create_job("short", "a", {}, timeout=0.25)
    store = _claims(queue, "node-a")
    first = store.claim("q")
    assert isinstance(first, Claim)
    assert _lock_span(store) == LEASE
    # Passed on with a success to the queue's next job: one lease again.
    done, following = store.records.record_success_and_claim(first, None)
    assert done is not None and isinstance(following, Claim)
    assert _lock_span(store) == LEASE
    assert following.locked_until - following.job.attempted_at == LEASE
    store.records.record_success(following)
    # A job shorter than the lease keeps the lock of its timeout + 1 s, never renewed.
    short = store.claim("short")
    assert isinstance(short, Claim)
    assert _lock_span(store) == timedelta(seconds=1.25)
    assert not needs_renewal(short.job.timeout, LEASE)


def test_lock_lifetime_is_the_timeout_plus_a_margin_capped_by_the_lease() -> None:
    assert lock_lifetime(timedelta(seconds=5)) == timedelta(seconds=6)
    assert lock_lifetime(timedelta(hours=1)) == timedelta(seconds=60)
    assert lock_lifetime(timedelta(seconds=59)) == timedelta(seconds=60)
    assert not needs_renewal(timedelta(seconds=59))
    assert needs_renewal(timedelta(seconds=59.5))
    assert lock_lifetime(timedelta(hours=1), timedelta(minutes=5)) == timedelta(minutes=5)


def test_a_long_attempt_keeps_its_lock_while_it_runs_and_nobody_takes_it(
    make_queue: Callable,
) -> None:
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(60))
    queue = make_queue(performer=recorder, lock_lease=LEASE.total_seconds(), poll_interval=30)
    job = queue.create_job("q", "long", {}, timeout=120)
    queue.start()
    recorder.wait(lambda r: len(r.started) == 1)
    other = _claims(queue, "other-node")
    first_until = other.locks.locks_held()[0]["locked_until"]
    # Renewed every third of the lease: the lock is pushed further on each time, until
    # well past its first lifetime and the head's backoff (2 s from the claim).
    seen = [first_until]

    def renewed_past_the_backoff() -> bool:
        until = other.locks.locks_held()[0]["locked_until"]
        if until > seen[-1]:
            seen.append(until)
        return until > first_until + timedelta(seconds=3)

    wait_until(renewed_past_the_backoff, 20, "renewals of the lock")
    assert len(seen) >= 4
    assert isinstance(other.claim("q"), Busy)
    assert queue.status().queues[0].lock is not None
    release.set()
    wait_until(lambda: queue.get_job(job.id).done, 20, "the job done")
    stored = queue.get_job(job.id)
    assert stored.attempts == 1 and stored.error is None
    assert other.locks.locks_held() == []


def test_a_long_attempt_outliving_many_leases_is_never_run_twice(make_queue: Callable) -> None:
    """Two nodes with a 1 s lease; the job runs for several leases and is run once."""
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(60))
    nodes = [
        make_queue(performer=recorder, lock_lease=1, poll_interval=0.2, node=f"n{i}")
        for i in range(2)
    ]
    job = nodes[0].create_job("q", "long", {}, timeout=120, max_backoff=0)
    for node in nodes:
        node.start()
    recorder.wait(lambda r: len(r.started) == 1)
    lock = _claims(nodes[0], "observer").locks.locks_held()[0]
    wait_until(
        lambda: (
            _claims(nodes[0], "observer").locks.locks_held()[0]["locked_until"]
            > lock["locked_until"] + timedelta(seconds=3)
        ),
        30,
        "the lock renewed three leases on",
    )
    release.set()
    wait_until(lambda: nodes[0].get_job(job.id).done, 20, "the job done")
    assert len(recorder.started) == 1 and recorder.max_running_per_queue == 1
    assert nodes[0].get_job(job.id).attempts == 1


def test_a_failing_renewal_is_logged_once_and_retried_until_it_succeeds(
    make_queue: Callable, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(60))
    queue = make_queue(performer=recorder, lock_lease=LEASE.total_seconds(), poll_interval=30)
    job = queue.create_job("q", "long", {}, timeout=120)
    failures = threading.Semaphore(0)
    real_renew = LockStore.renew

    def unreachable(self: LockStore, claim: Claim, *, retry: bool = True) -> bool:
        if failures.acquire(blocking=False):
            raise DatabaseError("database error: connection refused")
        return real_renew(self, claim, retry=retry)

    monkeypatch.setattr(LockStore, "renew", unreachable)
    caplog.set_level(logging.WARNING, logger="queuetopia_py.lease")
    queue.start()
    recorder.wait(lambda r: len(r.started) == 1)
    for _ in range(3):
        failures.release()
    wait_until(
        lambda: "renewed the lock of a running attempt again" in caplog.text,
        20,
        "the renewal to succeed again",
    )
    assert caplog.text.count("could not renew the lock of a running attempt") == 1
    assert not isinstance(_claims(queue, "other").claim("q"), Claim)
    assert _claims(queue, "other").locks.locks_held()[0]["locked_by_node"] == queue.node
    release.set()
    wait_until(lambda: queue.get_job(job.id).done, 20, "the job done")
    assert queue.get_job(job.id).attempts == 1 and len(recorder.started) == 1


def test_a_lock_lost_while_its_attempt_runs_is_reported(
    make_queue: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(60))
    queue = make_queue(performer=recorder, lock_lease=LEASE.total_seconds(), poll_interval=30)
    queue.create_job("q", "long", {}, timeout=120)
    caplog.set_level(logging.ERROR, logger="queuetopia_py.lease")
    queue.start()
    recorder.wait(lambda r: len(r.started) == 1)
    queues = queue._db.tables.queues
    with queue.engine.begin() as conn:  # an operator removes the lock by hand
        conn.execute(queues.update().values(token=None, locked_until=None))
    wait_until(
        lambda: "the lock of a running attempt was lost" in caplog.text, 20, "the loss reported"
    )
    release.set()


def test_a_dead_nodes_long_job_is_taken_over_one_lease_after_its_last_renewal(
    url: str,
) -> None:
    """A node process running a 10-minute job is killed; another node runs the job again
    within seconds (the lease), not after its timeout."""
    script = f"""
import time
from queuetopia_py import Queuetopia, Performer
class Sleeper(Performer):
    def perform(self, job):
        print("started", flush=True)
        time.sleep(3600)
q = Queuetopia(repo={url!r}, scope="lease", performer=Sleeper, lock_lease=1, poll_interval=0.2)
q.start()
time.sleep(3600)
"""
    holder = Queuetopia(repo=url, scope="lease")
    job = holder.create_job("q", "long", {}, timeout=600, max_backoff=0)
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"started"
        # Alive for several leases: not taken over meanwhile.
        store = _claims(holder, "observer")
        first = store.locks.locks_held()[0]["locked_until"]
        wait_until(
            lambda: store.locks.locks_held()[0]["locked_until"] > first + timedelta(seconds=2),
            30,
            "the holder to renew its lock twice",
        )
        assert isinstance(store.claim("q"), Busy)
        process.kill()
        process.wait(10)
        killed = time.monotonic()
        recorder = Recorder()
        survivor = Queuetopia(
            repo=url, scope="lease", performer=recorder, lock_lease=1, poll_interval=0.2
        )
        survivor.start()
        try:
            recorder.wait(lambda r: len(r.started) == 1, 30)
            took = time.monotonic() - killed
            # The first attempt's backoff (2 s) or the lease (1 s), not the 600 s timeout.
            assert took < 15
            wait_until(lambda: holder.get_job(job.id).done, 20, "the job done")
            assert holder.get_job(job.id).attempts == 2
        finally:
            survivor.stop(10)
    finally:
        process.kill()
        process.wait(10)
        holder.stop()


def test_the_lease_is_an_option_of_at_least_one_second(make_queue: Callable) -> None:
    assert make_queue().options.lock_lease == timedelta(seconds=60)
    assert make_queue(lock_lease=5).options.lock_lease == timedelta(seconds=5)
    with pytest.raises(ConfigurationError, match="lock_lease"):
        make_queue(lock_lease=0.5)
    with pytest.raises(ConfigurationError, match="lock_lease"):
        make_queue(lock_lease=-1)


def test_node_names_are_unique_per_instance_and_per_process_start(make_queue: Callable) -> None:
    names = {make_queue().node for _ in range(3)}
    script = (
        "from queuetopia_py import Queuetopia; "
        f"print(Queuetopia(repo={make_queue().options.repo!r}).node)"
    )
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, check=True, text=True
        )
        names.add(out.stdout.strip())
    assert len(names) == 5


def test_a_restarted_node_reusing_its_name_does_not_inherit_its_live_locks(
    make_queue: Callable,
) -> None:
    """Locks are fenced by a random token per claim, never by the node's name: an
    instance given the name of a dead one waits for its locks to expire like any other."""
    queue = make_queue()
    queue.create_job("q", "a", {}, timeout=30, max_backoff=0)
    dead = _claims(queue, "worker-1")
    assert isinstance(dead.claim("q"), Claim)
    reborn = _claims(queue, "worker-1")
    assert isinstance(reborn.claim("q"), Busy)
    assert not reborn.locks.renew(
        Claim(queue.list_jobs()[0], "not-the-token", queue.list_jobs()[0].attempted_at, 0.0)
    )


class _HangsOnce(Performer):
    def perform(self, job: Job) -> object:
        if job.attempts == 1:
            time.sleep(3600)
        return "second"


def test_under_the_process_executor_an_attempt_whose_lock_cannot_be_renewed_is_stopped(
    make_queue: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals fail (this node cannot reach the database, others may): the attempt is
    killed before its lock runs out, so no other node can run the queue meanwhile."""
    renewals = 0

    def unreachable(self: LockStore, claim: Claim, *, retry: bool = True) -> bool:
        nonlocal renewals
        renewals += 1
        raise DatabaseError("database error: connection refused")

    monkeypatch.setattr(LockStore, "renew", unreachable)
    queue = make_queue(
        performer=_HangsOnce,
        executor="process",
        lock_lease=LEASE.total_seconds(),
        poll_interval=0.2,
    )
    job = queue.create_job("q", "a", {}, timeout=600, max_backoff=0)
    queue.start()
    wait_until(lambda: queue.get_job(job.id).done, 60, "the job done")
    stored = queue.get_job(job.id)
    assert stored.attempts == 2 and stored.result == "second"
    assert stored.error == "lock_lease_lapsed"
    assert renewals >= 2  # it kept trying until the lease was nearly out


def test_a_late_renewal_of_a_passed_lock_leaves_the_next_job_kept(make_queue: Callable) -> None:
    """The keeper renews job 1 while its success passes the queue's lock to job 2: the
    renewal answers False for job 1, and job 2's lock must still be kept and renewed."""
    queue = make_queue()
    queue.create_job("q", "long", {"n": 1}, timeout=600)
    queue.create_job("q", "long", {"n": 2}, timeout=600)
    renewing_first, go_on = threading.Event(), threading.Event()

    store = ClaimStore(queue._db, queue.scope, "node-a", LEASE)
    renew = store.locks.renew

    def slow_first_renewal(claim: Claim, *, retry: bool = True) -> bool:
        if claim.job.params["n"] == 1:
            renewing_first.set()
            go_on.wait(20)
        return renew(claim, retry=retry)

    store.locks.renew = slow_first_renewal  # type: ignore[method-assign]
    keeper = LeaseKeeper(store.locks)
    first = store.claim("q")
    assert isinstance(first, Claim)
    with keeper.keep(first):
        assert renewing_first.wait(20)  # the keeper is renewing job 1 now...
        done, second = store.records.record_success_and_claim(first)  # ... as the lock passes on
    assert done is not None and isinstance(second, Claim)
    with keeper.keep(second):
        go_on.set()  # job 1's renewal answers: its lock is gone
        until = second.locked_until
        wait_until(
            lambda: (
                bool(store.locks.locks_held())
                and store.locks.locks_held()[0]["locked_until"] > until + timedelta(seconds=1)
            ),
            20,
            "job 2's lock renewed after job 1's renewal failed",
        )
        assert keeper.kept == 1
    store.records.record_success(second)
