"""The scheduler's behaviour, end to end, on each database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from recording import Recorder, wait_until
from sqlalchemy import event

from queuetopia_py import Job, Performer, Queuetopia
from queuetopia_py import _scheduler as scheduler
from queuetopia_py._store.database import create_engine


class MailQueue(Queuetopia):
    pass


class SmsQueue(Queuetopia):
    pass


def test_jobs_of_each_queue_run_in_creation_order(make_queue: Callable) -> None:
    recorder = Recorder()
    queue = make_queue(MailQueue, performer=recorder, poll_interval=30)
    for i in range(10):
        for name in ("q1", "q2", "q3"):
            queue.create_job(name, "a", {"i": i})
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 30)
    assert all(recorder.order(name) == list(range(10)) for name in ("q1", "q2", "q3"))
    assert queue.stop()
    assert all(job.done for job in queue.list_jobs())


def test_an_earlier_scheduled_at_puts_a_job_ahead_in_its_queue(make_queue: Callable) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder)
    queue.create_job("q", "a", {"i": "created first"})
    queue.create_job(
        "q", "a", {"i": "scheduled earlier"}, scheduled_at=datetime.now(UTC) - timedelta(hours=1)
    )
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 2)
    assert recorder.order("q") == ["scheduled earlier", "created first"]


def test_a_failing_head_blocks_only_its_queue(make_queue: Callable) -> None:
    others_done = threading.Event()

    def behaviour(job: Job) -> None:
        if job.queue == "bad" and job.params["i"] == 0 and not others_done.is_set():
            raise RuntimeError("smtp down")

    recorder = Recorder(behaviour)
    queue = make_queue(performer=recorder)
    for i in range(3):
        queue.create_job("bad", "a", {"i": i}, max_backoff=0.05)
        queue.create_job("good", "a", {"i": i})
    queue.start()
    recorder.wait(
        lambda r: (
            len(r.failed) >= 2
            and r.order("good") == [0, 1, 2]
            and len([j for j in r.finished if j.queue == "good"]) == 3
        )
    )
    # The head failed repeatedly; nothing behind it started meanwhile.
    assert set(recorder.order("bad")) == {0}
    others_done.set()
    recorder.wait(lambda r: any(j.queue == "bad" and j.params["i"] == 2 for j in r.finished))
    attempts = recorder.order("bad")
    assert attempts[-2:] == [1, 2] and set(attempts[:-2]) == {0}
    assert queue.stop()
    head = queue.list_jobs("bad")[0]
    assert head.done and head.attempts == len(attempts) - 2
    assert "RuntimeError: smtp down" in (head.error or "")


def test_a_failed_head_is_retried_after_the_capped_exponential_backoff(
    make_queue: Callable,
) -> None:
    def behaviour(job: Job) -> None:
        if job.attempts < 3:
            raise ValueError(f"attempt {job.attempts}")

    recorder = Recorder(behaviour)
    queue = make_queue(performer=recorder)
    job = queue.create_job("q", "a", {}, max_backoff=0.25)
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 2)
    seen = recorder.failed
    for failed in seen:  # min(2 s, 0.25 s) each time, from the attempt's start
        assert failed.next_attempt_at == failed.attempted_at + timedelta(seconds=0.25)
    recorder.wait(lambda r: len(r.finished) == 3)
    queue.stop()
    done = queue.get_job(job.id)
    assert done.done and done.attempts == 3
    # Never retried early, by the database's clock.
    assert done.attempted_at >= seen[1].next_attempt_at


def test_the_performer_backoff_hook_sets_the_retry_delay(make_queue: Callable) -> None:
    class Slow(Recorder):
        def backoff(self, job: Job) -> timedelta:
            return timedelta(hours=1)

    recorder = Slow(lambda job: (_ for _ in ()).throw(RuntimeError("no")))
    queue = make_queue(performer=recorder)
    queue.create_job("q", "a", {})
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 1)
    failed = recorder.failed[0]
    assert failed.next_attempt_at == failed.attempted_at + timedelta(hours=1)


def test_a_job_is_given_up_after_max_attempts_and_its_queue_moves_on(
    make_queue: Callable,
) -> None:
    def behaviour(job: Job) -> None:
        if job.params["i"] == 0:
            raise RuntimeError("always")

    recorder = Recorder(behaviour)
    queue = make_queue(performer=recorder)
    first = queue.create_job("q", "a", {"i": 0}, max_attempts=3, max_backoff=0)
    queue.create_job("q", "a", {"i": 1})
    queue.start()
    recorder.wait(lambda r: r.order("q") == [0, 0, 0, 1] and len(r.finished) == 4)
    queue.stop()
    given_up = queue.get_job(first.id)
    assert given_up.given_up and not given_up.done
    assert given_up.attempts == 3 and given_up.next_attempt_at is None
    assert "RuntimeError: always" in (given_up.error or "")
    assert len(recorder.failed) == 3 and recorder.failed[-1].given_up
    assert [j.id for j in queue.list_jobs(available=False)] == [first.id, first.id + 1]
    assert queue.list_jobs(available=True) == []


def test_an_error_in_handle_failed_job_is_recorded_and_scheduling_goes_on(
    make_queue: Callable,
) -> None:
    class Alerting(Recorder):
        def handle_failed_job(self, job: Job) -> None:
            super().handle_failed_job(job)
            raise ConnectionError("pager unreachable")

    recorder = Alerting(lambda job: 1 / 0 if job.attempts == 1 else None)
    queue = make_queue(performer=recorder)
    job = queue.create_job("q", "a", {}, max_backoff=0)
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 2)
    queue.stop()
    stored = queue.get_job(job.id)
    assert stored.done
    assert "ZeroDivisionError" in stored.error and "pager unreachable" in stored.error


def test_a_timed_out_attempt_is_recorded_and_its_queue_stays_locked_until_it_returns(
    make_queue: Callable,
) -> None:
    release = threading.Event()

    def behaviour(job: Job) -> None:
        if job.params["i"] == 0 and job.attempts == 1:
            release.wait(30)

    recorder = Recorder(behaviour)
    queue = make_queue(performer=recorder)
    first = queue.create_job("q", "a", {"i": 0}, timeout=0.3, max_backoff=0)
    queue.create_job("q", "a", {"i": 1})
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 1)
    assert recorder.failed[0].error == "job_timeout"
    assert queue.get_job(first.id).error == "job_timeout"
    # The timed-out thread still runs: its queue stays locked, nothing else starts,
    # even after the lock's first lifetime (timeout + 1 s) has passed.
    claims = queue._scheduler.claims
    wait_until(
        lambda: (
            claims.locks.locks_held()
            and claims.locks.locks_held()[0]["locked_until"]
            > claims.locks.locks_held()[0]["locked_at"] + timedelta(seconds=1.3)
        ),
        what="lock renewed",
    )
    assert recorder.order("q") == [0]
    release.set()
    recorder.wait(lambda r: r.order("q") == [0, 0, 1] and len(r.finished) == 3)
    assert recorder.max_running_per_queue == 1
    queue.stop()
    assert all(j.done for j in queue.list_jobs())


def test_a_scheduled_job_waits_until_its_time(make_queue: Callable) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder)
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    job = queue.create_job("later", "a", {}, scheduled_at=at)
    queue.create_job("now", "a", {})
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 2)
    assert recorder.started[0].queue == "now"
    queue.stop()
    assert queue.get_job(job.id).attempted_at >= at


def test_scopes_run_only_their_own_jobs(make_queue: Callable) -> None:
    mail_recorder, sms_recorder = Recorder(), Recorder()
    mails = make_queue(MailQueue, performer=mail_recorder)
    sms = make_queue(SmsQueue, performer=sms_recorder)
    for i in range(5):
        mails.create_job("shared_name", "mail", {"i": i})
        sms.create_job("shared_name", "sms", {"i": i})
    mails.start()
    mail_recorder.wait(lambda r: len(r.finished) == 5)
    mails.stop()
    assert {j.action for j in mail_recorder.started} == {"mail"}
    assert sms_recorder.started == []
    assert all(not j.done for j in sms.list_jobs())


def test_jobs_survive_a_restart(make_queue: Callable) -> None:
    writer = make_queue(MailQueue)
    for i in range(5):
        writer.create_job("q", "a", {"i": i})
    writer.stop()
    recorder = Recorder()
    make_queue(MailQueue, performer=recorder).start()
    recorder.wait(lambda r: len(r.finished) == 5)
    assert recorder.order("q") == list(range(5))


def test_create_job_wakes_the_scheduler_without_waiting_for_the_poll(
    make_queue: Callable,
) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=3600)
    queue.start()
    queue.create_job("q", "a", {})
    recorder.wait(lambda r: len(r.finished) == 1, timeout=30)


@pytest.mark.parametrize("commit_delay", [0.0, 0.3])
def test_a_job_committed_in_the_callers_transaction_wakes_the_scheduler(
    make_queue: Callable, url: str, commit_delay: float
) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=3600)
    queue.start()
    engine = create_engine(url)
    with engine.begin() as conn:
        queue.create_job("q", "a", {}, connection=conn)
        # A slow commit: the wake that SQLAlchemy's (before-)commit event gives comes
        # before the job is visible; the scheduler must still see it.
        event.listen(conn, "commit", lambda _conn: time.sleep(commit_delay), once=True)
    engine.dispose()
    recorder.wait(lambda r: len(r.finished) == 1, timeout=30)


def test_a_disabled_instance_creates_jobs_but_runs_none(make_queue: Callable) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder, disabled=True)
    queue.start()
    job = queue.create_job("q", "a", {})
    assert queue.get_job(job.id) is not None and not queue.running


def test_no_two_attempts_of_a_queue_overlap_across_nodes(make_queue: Callable) -> None:
    recorder = Recorder(lambda job: threading.Event().wait(0.01))
    # Two runners a node for six queues, and frequent polls: the nodes compete.
    nodes = [
        make_queue(MailQueue, performer=recorder, max_concurrency=2, poll_interval=0.05)
        for _ in range(4)
    ]
    for i in range(8):
        for q in range(6):
            nodes[0].create_job(f"q{q}", "a", {"i": i})
    for node in nodes:
        node.start()
    recorder.wait(lambda r: len(r.finished) == 48, timeout=60)
    assert recorder.max_running_per_queue == 1
    assert all(recorder.order(f"q{q}") == list(range(8)) for q in range(6))
    assert len({j.attempted_by for j in recorder.started}) > 1


def test_max_concurrency_limits_the_queues_a_node_runs_at_once(make_queue: Callable) -> None:
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(30))
    queue = make_queue(performer=recorder, max_concurrency=2)
    for q in range(5):
        queue.create_job(f"q{q}", "a", {})
    queue.start()
    recorder.wait(lambda r: len(r.started) == 2)
    assert len(queue._scheduler.running_queues) == 2
    release.set()
    recorder.wait(lambda r: len(r.finished) == 5)
    assert recorder.max_running == 2


class _Fails(Performer):
    def perform(self, job: Job) -> object:
        raise RuntimeError("boom")


def test_stop_lets_the_running_attempt_finish_and_records_it(make_queue: Callable) -> None:
    entered, release = threading.Event(), threading.Event()

    def behaviour(job: Job) -> None:
        entered.set()
        release.wait(30)

    queue = make_queue(performer=Recorder(behaviour))
    job = queue.create_job("q", "a", {})
    queue.create_job("q", "a", {})
    queue.start()
    assert entered.wait(20)
    stopper = threading.Thread(target=queue.stop)
    stopper.start()
    release.set()
    stopper.join(30)
    assert queue.get_job(job.id).done
    assert sum(j.attempts for j in queue.list_jobs()) == 1
    assert not queue.running


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_performer_that_raises_never_stops_the_scheduler(
    make_queue: Callable, executor: str
) -> None:
    queue = make_queue(performer=_Fails, executor=executor, max_concurrency=2)
    jobs = [queue.create_job(f"q{i}", "a", {}, max_attempts=2, max_backoff=0) for i in range(2)]
    queue.start()
    wait_until(lambda: all(queue.get_job(j.id).given_up for j in jobs), 60, "jobs given up")
    assert queue.running


def _busy_and_other(make_queue: Callable) -> list[object]:
    """Six jobs of "busy" and one of "other" on a node with one runner: the order in
    which they start."""
    recorder = Recorder()
    queue = make_queue(performer=recorder, max_concurrency=1)
    for i in range(3):
        queue.create_job("busy", "a", {"i": i})
    queue.create_job("other", "a", {"i": "other"})
    for i in range(3, 6):
        queue.create_job("busy", "a", {"i": i})
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 7)
    return [j.params["i"] for j in recorder.started]


def test_a_busy_queue_does_not_starve_others_when_every_runner_is_taken(
    make_queue: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs slower than a turn: the runner hands "busy" back after each job.
    monkeypatch.setattr(scheduler, "_TURN", 0.0)
    # Round robin between the due queues: "other" gets the runner after one "busy" job.
    assert _busy_and_other(make_queue) == [0, "other", 1, 2, 3, 4, 5]


def test_a_queue_keeps_its_runner_for_its_turn(
    make_queue: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs much faster than a turn: "busy" runs on until it has nothing due.
    monkeypatch.setattr(scheduler, "_TURN", 600.0)
    assert _busy_and_other(make_queue) == [0, 1, 2, 3, 4, 5, "other"]


def test_the_cleaner_runs_on_its_interval_when_enabled(make_queue: Callable) -> None:
    queue = make_queue(performer=Recorder(), cleanup_interval=0.2, job_retention=0)
    done = queue.create_job("q", "a", {})
    queue.start()
    wait_until(lambda: queue.get_job(done.id) is None, 30, "completed job cleaned up")


def test_a_blocked_queue_is_left_aside_until_its_head_is_due(make_queue: Callable) -> None:
    class LongBackoff(Recorder):
        def backoff(self, job: Job) -> timedelta:
            return timedelta(hours=1)

    recorder = LongBackoff(lambda job: 1 / 0 if job.queue == "blocked" else None)
    queue = make_queue(performer=recorder)
    queue.create_job("blocked", "a", {})
    queue.create_job("blocked", "a", {})  # due, but behind the failing head
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 1)
    claims = queue._scheduler.claims
    seen: list[str] = []
    original = claims.claim_all

    def counting(requests):  # type: ignore[no-untyped-def]
        seen.extend(request.queue for request in requests)
        return original(requests)

    claims.claim_all = counting  # type: ignore[method-assign]
    for i in range(20):  # every create_job wakes the scheduler for a new poll
        queue.create_job(f"other{i}", "a", {})
    recorder.wait(lambda r: len([j for j in r.finished if j.queue != "blocked"]) == 20)
    assert len(seen) >= 20 and seen.count("blocked") <= 1
    assert recorder.order("blocked") == [None]


def test_time_spent_waiting_to_claim_does_not_count_against_the_attempt(
    make_queue: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim delayed past the job's timeout (a busy database: SQLite's write lock,
    a slow connection) must not make a quick attempt count as timed out."""
    from queuetopia_py._store.claims import ClaimStore

    original = ClaimStore.claim_all
    waited: list[float] = []

    def slow_claim(self: ClaimStore, requests: Any) -> Any:
        time.sleep(1.5)  # stands for a wait before the claim's transaction begins
        waited.append(1.5)
        return original(self, requests)

    monkeypatch.setattr(ClaimStore, "claim_all", slow_claim)
    recorder = Recorder(lambda job: time.sleep(0.05))
    queue = make_queue(performer=recorder)
    job = queue.create_job("q", "a", {}, timeout=1.0)
    queue.start()
    wait_until(lambda: not queue.get_job(job.id).pending, 30, "job recorded")
    stored = queue.get_job(job.id)
    assert stored.done and stored.attempts == 1 and stored.error is None
    assert waited  # the claim did wait


def test_a_runner_waits_a_while_for_new_work_before_it_ends(make_queue: Callable) -> None:
    threads: list[threading.Thread] = []
    recorder = Recorder(lambda job: threads.append(threading.current_thread()))
    queue = make_queue(performer=recorder, poll_interval=60)
    queue.start()
    first = queue.create_job("a", "x", {})
    wait_until(lambda: queue.get_job(first.id).done)  # type: ignore[union-attr]

    queue.create_job("b", "x", {})  # another queue, offered to the idle runner

    recorder.wait(lambda r: len(r.finished) == 2)
    # The same runner (so the same attempt thread) ran both: no thread was started.
    assert threads[0] is threads[1]
    assert queue.stop(timeout=10)


def test_queues_whose_head_backs_off_cost_no_claim_while_others_flow(
    make_queue: Callable,
) -> None:
    """Blocked queues (head failing, jobs due behind it) are neither listed by polls nor
    claimed until their head is due: a flowing queue runs beside them untouched."""

    class LongBackoff(Recorder):
        def backoff(self, job: Job) -> timedelta:
            return timedelta(hours=1)

    recorder = LongBackoff(
        lambda job: 1 / 0 if job.queue.startswith("blocked") else time.sleep(0.05)
    )
    queue = make_queue(performer=recorder, poll_interval=0.2)
    blocked = [f"blocked{i}" for i in range(30)]
    for name in blocked:
        for _ in range(3):  # a failing head, and two jobs due behind it
            queue.create_job(name, "a", {})
    queue.start()
    recorder.wait(lambda r: len(r.failed) == len(blocked))
    claimed: list[str] = []
    claims = queue._scheduler.claims
    original = claims.claim_all

    def counting(requests):  # type: ignore[no-untyped-def]
        claimed.extend(request.queue for request in requests)
        return original(requests)

    claims.claim_all = counting  # type: ignore[method-assign]
    for i in range(20):  # a second of flowing work: several polls meanwhile
        queue.create_job("flowing", "a", {"i": i})
    recorder.wait(lambda r: len([j for j in r.finished if j.queue == "flowing"]) == 20)
    assert "flowing" in claimed
    assert [name for name in claimed if name.startswith("blocked")] == []
    assert recorder.order("flowing") == list(range(20))


def test_a_scheduler_leaving_70000_queues_aside_still_polls(make_queue: Callable) -> None:
    """Queues a node leaves aside (not due, just failed) never travel to the database as
    a list of names: with 70,000 of them the poll still works."""
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=0.2)
    queue.start()
    far = time.monotonic() + 3600
    with queue._scheduler._active_lock:
        queue._scheduler._not_due.update({f"aside{i}": far for i in range(70_000)})
    # Created by another instance and due a little later: found by a poll.
    other = make_queue()
    other.create_job("free", "a", {}, scheduled_at=datetime.now(UTC) + timedelta(seconds=0.5))
    recorder.wait(lambda r: len(r.finished) == 1, timeout=30)


class _CountedName(str):
    """A queue name that counts how often it is compared with another."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        _CountedName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_offering_queues_to_a_busy_node_never_scans_its_waiting_line(
    make_queue: Callable,
) -> None:
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(30))
    queue = make_queue(performer=recorder, max_concurrency=1, poll_interval=600)
    queue.create_job("running", "a", {})
    queue.start()
    recorder.wait(lambda r: len(r.started) == 1)
    names = [_CountedName(f"waiting{i}") for i in range(3000)]
    _CountedName.comparisons = 0
    for name in names:
        queue._scheduler.offer(name)
    for name in names[:100]:
        queue._scheduler.offer(name)  # offered again: already waiting
    comparisons = _CountedName.comparisons
    release.set()
    assert comparisons < 10 * len(names), f"{comparisons} comparisons for {len(names)} offers"
