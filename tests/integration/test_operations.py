"""Operators' actions on each database: suspend and resume, cancel, abort and retry,
each recorded on the job and safe against a running attempt; and `status()`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from recording import Recorder, wait_until

from queuetopia_py import (
    InvalidJobError,
    Job,
    JobInProgressError,
    JobNotFoundError,
    JobStateError,
    MoveTo,
    Queuetopia,
)
from queuetopia_py._store.queues import QueueBook
from queuetopia_py.testing import drain


def failing(job: Job) -> None:
    raise RuntimeError(f"smtp down for {job.params.get('i')}")


class SlowRetry(Recorder):
    """A recorder whose failed jobs wait an hour before their next attempt."""

    def backoff(self, job: Job) -> timedelta:
        return timedelta(hours=1)


# -- suspend / resume ------------------------------------------------------------------


def test_a_suspended_queue_starts_nothing_until_resumed_while_others_flow(
    make_queue: Callable,
) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=0.1)
    suspension = queue.suspend("q1", by="ops", reason="maintenance")
    assert (suspension.queue, suspension.suspended_by, suspension.reason) == (
        "q1",
        "ops",
        "maintenance",
    )
    queue.create_job("q1", "a", {"i": 1})
    queue.create_job("q2", "a", {"i": 2})
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 1)
    assert recorder.order("q2") == [2]
    # q2's job ran after q1's was created: q1 was polled and skipped, not just not reached.
    status = queue.status().queue("q1")
    assert status is not None and status.pending == 1 and status.suspended == suspension
    assert queue.resume("q1") is True
    recorder.wait(lambda r: len(r.finished) == 2)
    assert queue.resume("q1") is False
    assert queue.suspensions() == []


def test_suspending_the_whole_scope_lets_the_running_attempt_finish(
    make_queue: Callable,
) -> None:
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(20) if job.params["i"] == 0 else None)
    queue = make_queue(performer=recorder, poll_interval=0.1)
    for i in range(3):
        queue.create_job("q", "a", {"i": i})
    queue.create_job("other", "a", {"i": 9})
    queue.start()
    recorder.wait(lambda r: any(j.params["i"] == 0 for j in r.started), 20)
    queue.suspend()  # whole scope
    assert queue.status().suspended is not None
    release.set()
    wait_until(lambda: queue.list_jobs("q")[0].done, 20, "running attempt recorded")
    # The runner goes on with the queue's next job only through a claim, which now
    # refuses: the rest stays pending (checked after several poll intervals).
    release_check = threading.Event()
    release_check.wait(0.6)  # proving that nothing starts: a wait is the only way
    assert [j.params["i"] for j in recorder.started] in ([0], [0, 9], [9, 0])
    assert [j.state for j in queue.list_jobs("q")] == ["done", "pending", "pending"]
    queue.resume()
    recorder.wait(lambda r: len(r.finished) == 4)
    assert recorder.order("q") == [0, 1, 2]


def test_a_suspension_is_persisted_and_idempotent(make_queue: Callable, url: str) -> None:
    first = make_queue(scope="s").suspend("q", by="alice", reason="first")
    again = make_queue(scope="s").suspend("q", by="bob", reason="second")
    assert again == first
    other_scope = make_queue(scope="t")
    assert other_scope.suspensions() == []
    fresh = Queuetopia(repo=url, scope="s")
    try:
        assert [(s.queue, s.suspended_by) for s in fresh.suspensions()] == [("q", "alice")]
    finally:
        fresh.stop()


def test_suspend_rejects_a_bad_queue_name(make_queue: Callable) -> None:
    with pytest.raises(ValueError, match="queue"):
        make_queue().suspend("")


# -- cancel ----------------------------------------------------------------------------


def test_cancel_withdraws_a_pending_job_and_records_who_and_why(make_queue: Callable) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder)
    first = queue.create_job("q", "a", {"i": 1})
    second = queue.create_job("q", "a", {"i": 2})
    cancelled = queue.cancel_job(first.id, by="alice", reason="duplicate")
    assert cancelled.state == "cancelled"
    stored = queue.get_job(first.id)
    assert stored.state == "cancelled" and stored.next_attempt_at is None
    (entry,) = stored.interventions
    assert (entry.action, entry.by, entry.reason) == ("cancel", "alice", "duplicate")
    assert entry.at.tzinfo is not None
    drain(queue)
    assert recorder.order("q") == [2] and queue.get_job(second.id).done


def test_cancel_of_a_running_job_is_refused(make_queue: Callable) -> None:
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(20))
    queue = make_queue(performer=recorder)
    job = queue.create_job("q", "a", {})
    queue.start()
    recorder.wait(lambda r: len(r.started) == 1)
    with pytest.raises(JobInProgressError, match="in progress") as raised:
        queue.cancel_job(job.id)
    assert raised.value.job.id == job.id
    release.set()
    wait_until(lambda: queue.get_job(job.id).done, 20, "job done")
    assert queue.get_job(job.id).interventions == ()


def test_actions_on_unknown_or_ended_jobs_fail_clearly(make_queue: Callable) -> None:
    queue = make_queue(performer=Recorder())
    with pytest.raises(JobNotFoundError, match="job 999999 not found") as raised:
        queue.cancel_job(999999)
    assert isinstance(raised.value, LookupError) and raised.value.job_id == 999999
    other_scope = make_queue(scope="elsewhere").create_job("q", "a", {})
    with pytest.raises(JobNotFoundError):
        queue.abort_job(other_scope.id)  # scopes never see each other's jobs
    done = queue.create_job("q", "a", {})
    drain(queue)
    for action in (queue.cancel_job, queue.abort_job, queue.retry_job):
        with pytest.raises(JobStateError, match="is done"):
            action(done.id)
    pending = queue.create_job("q", "a", {})
    queue.cancel_job(pending.id)
    with pytest.raises(JobStateError, match="cancelled already"):
        queue.cancel_job(pending.id)
    with pytest.raises(ValueError, match="job_id"):
        queue.cancel_job("1")  # type: ignore[arg-type]


# -- abort -----------------------------------------------------------------------------


def test_abort_gives_up_a_blocked_head_and_its_queue_moves_on(make_queue: Callable) -> None:
    recorder = SlowRetry(lambda job: failing(job) if job.params["i"] == 0 else None)
    queue = make_queue(performer=recorder, poll_interval=0.1)
    head = queue.create_job("q", "a", {"i": 0})
    queue.create_job("q", "a", {"i": 1})
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 1)
    blocked = queue.status().queue("q")
    assert blocked is not None and blocked.blocked and blocked.head.id == head.id
    assert blocked.head.failing_since is not None and "smtp down" in blocked.head.error
    aborted = queue.abort_job(head.id, by="ops", reason="customer gone")
    assert aborted.state == "aborted"
    recorder.wait(lambda r: r.order("q") == [0, 1] and len(r.finished) == 2)
    stored = queue.get_job(head.id)
    assert stored.state == "aborted" and "smtp down" in (stored.error or "")
    assert [i.action for i in stored.interventions] == ["abort"]


@pytest.mark.parametrize("attempt_fails", [True, False])
def test_abort_during_a_running_attempt_takes_effect_when_it_ends(
    make_queue: Callable, attempt_fails: bool
) -> None:
    release = threading.Event()

    def behaviour(job: Job) -> None:
        if job.params["i"] == 0:
            release.wait(20)
            if attempt_fails:
                raise RuntimeError("failed after the abort")

    recorder = Recorder(behaviour)
    queue = make_queue(performer=recorder, poll_interval=0.1)
    head = queue.create_job("q", "a", {"i": 0})
    queue.create_job("q", "a", {"i": 1})
    queue.start()
    recorder.wait(lambda r: len(r.started) == 1)
    queue.abort_job(head.id)
    # The queue stays exclusive: the next job does not start while the attempt runs.
    assert queue.status().queue("q").running is not None
    with pytest.raises(JobInProgressError):  # its outcome would count in a new round
        queue.retry_job(head.id)
    release.set()
    recorder.wait(lambda r: len(r.finished) == 2)
    stored = queue.get_job(head.id)
    if attempt_fails:
        assert stored.state == "aborted" and "failed after the abort" in (stored.error or "")
        assert stored.attempts == 1  # not retried
    else:
        assert stored.state == "done"  # its work happened
    assert [i.action for i in stored.interventions] == ["abort"]


# -- retry -----------------------------------------------------------------------------


def test_retry_runs_a_waiting_head_now(make_queue: Callable) -> None:
    fail_once = {"left": 1}

    def behaviour(job: Job) -> None:
        if fail_once["left"]:
            fail_once["left"] -= 1
            raise RuntimeError("first attempt fails")

    recorder = SlowRetry(behaviour)
    queue = make_queue(performer=recorder, poll_interval=0.1)
    job = queue.create_job("q", "a", {})
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 1)
    assert queue.get_job(job.id).state == "retrying"
    retried = queue.retry_job(job.id, reason="smtp is back")
    assert retried.round_start == 0  # same round: it was still pending
    wait_until(lambda: queue.get_job(job.id).done, 10, "retried job done")
    stored = queue.get_job(job.id)
    assert stored.attempts == 2 and [i.action for i in stored.interventions] == ["retry"]


def test_retry_gives_a_given_up_job_a_new_round_at_its_place(make_queue: Callable) -> None:
    healthy = threading.Event()
    recorder = Recorder(lambda job: None if healthy.is_set() else failing(job))
    queue = make_queue(performer=recorder)
    job = queue.create_job("q", "a", {"i": 0}, max_attempts=2, max_backoff=0)
    drain(queue)
    drain(queue)
    assert queue.get_job(job.id).state == "given_up"
    later = queue.create_job("q", "a", {"i": 1})
    retried = queue.retry_job(job.id)
    assert (retried.state, retried.round_start, retried.attempts) == ("pending", 2, 2)
    healthy.set()
    drain(queue)
    assert recorder.order("q") == [0, 0, 0, 1]  # back at its place, ahead of later jobs
    stored = queue.get_job(job.id)
    assert stored.done and stored.attempts == 3 and stored.round_attempts == 1
    assert queue.get_job(later.id).done


def test_retry_of_a_dead_lettered_job_points_to_its_copy(make_queue: Callable) -> None:
    queue = make_queue(performer=Recorder(failing))
    job = queue.create_job("q", "a", {}, max_attempts=1, on_failure=MoveTo("dead"))
    drain(queue)
    (copy,) = queue.list_jobs("dead")
    with pytest.raises(JobStateError, match=f"as job {copy.id}"):
        queue.retry_job(job.id)


def test_retry_of_a_running_job_is_refused(make_queue: Callable) -> None:
    release = threading.Event()
    recorder = Recorder(lambda job: release.wait(20))
    queue = make_queue(performer=recorder)
    job = queue.create_job("q", "a", {})
    queue.start()
    recorder.wait(lambda r: len(r.started) == 1)
    with pytest.raises(JobInProgressError):
        queue.retry_job(job.id)
    release.set()


def test_actions_racing_attempts_lose_no_update(make_queue: Callable) -> None:
    """Cancel, abort and retry hammer a queue whose jobs are being claimed and recorded:
    every job ends in a state consistent with its interventions, and none runs after
    being cancelled."""
    ran: list[int] = []
    lock = threading.Lock()

    def behaviour(job: Job) -> None:
        with lock:
            ran.append(job.id)

    queue = make_queue(performer=Recorder(behaviour), poll_interval=0.05, max_concurrency=4)
    jobs = [queue.create_job(f"q{i % 4}", "a", {"i": i}) for i in range(80)]
    queue.start()
    outcomes: dict[int, str] = {}
    for job in jobs:
        with contextlib.suppress(JobStateError):  # done already, or running
            outcomes[job.id] = queue.cancel_job(job.id).state
    wait_until(
        lambda: all(not j.pending for j in queue.list_jobs()), 60, "every job done or cancelled"
    )
    for stored in queue.list_jobs():
        if outcomes.get(stored.id) == "cancelled":
            assert stored.state == "cancelled" and stored.id not in ran
            assert [i.action for i in stored.interventions] == ["cancel"]
        else:
            assert stored.state == "done" and ran.count(stored.id) == 1


# -- status ----------------------------------------------------------------------------


def test_status_shows_queues_heads_locks_and_running_attempts(make_queue: Callable) -> None:
    release = threading.Event()

    def behaviour(job: Job) -> None:
        if job.queue in ("bad", "gone"):
            raise RuntimeError("boom")
        release.wait(20)

    recorder = SlowRetry(behaviour)
    queue = make_queue(performer=recorder, node="node-a", poll_interval=0.1)
    busy = queue.create_job("busy", "a", {"i": 0})
    queue.create_job("busy", "a", {"i": 1})
    bad = queue.create_job("bad", "a", {"i": 0})
    gone = queue.create_job("gone", "a", {}, max_attempts=1)
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 2 and len(r.started) == 3)
    status = queue.status()
    assert status.scope == queue.scope and status.suspended is None
    # Blocked queues first; a queue with nothing pending ("gone") is not shown.
    assert [q.queue for q in status.queues] == ["bad", "busy"]
    assert (status.queue_count, status.blocked_count, status.next_after) == (2, 1, None)
    busy_q, bad_q = status.queue("busy"), status.queue("bad")
    assert busy_q.pending == 2 and busy_q.head.id == busy.id and not busy_q.blocked
    assert busy_q.lock is not None and busy_q.lock.node == "node-a"
    assert busy_q.running is not None and busy_q.running.job.id == busy.id
    assert status.nodes == {"node-a": [busy_q.running]}
    assert bad_q.blocked and bad_q.head.id == bad.id and bad_q.head.attempts == 1
    assert bad_q.lock is None and bad_q.running is None
    assert status.blocked == [bad_q]
    assert queue.get_job(gone.id).state == "given_up"
    release.set()
    wait_until(lambda: queue.status().queue("busy") is None, 20, "busy queue emptied")


def test_status_pages_through_many_queues_blocked_ones_first(make_queue: Callable) -> None:
    queue = make_queue(performer=Recorder(lambda job: failing(job) if job.queue < "c" else None))
    for name in ("a1", "a2", "c1", "c2", "c3"):  # "a" queues fail: blocked
        queue.create_job(name, "x", {})
        queue.create_job(name, "x", {})
    drain(queue)  # each head ran once: the "a" heads failed and back off
    queue.create_job("c1", "x", {}, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    seen: list[str] = []
    after = None
    while True:
        page = queue.status(2, after=after)
        assert (page.queue_count, page.blocked_count) == (3, 2)
        seen += [q.queue for q in page.queues]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == ["a1", "a2", "c1"]
    with pytest.raises(InvalidJobError, match="limit"):
        queue.status(0)


def test_status_of_an_empty_scope(make_queue: Callable) -> None:
    status = make_queue(scope="empty").status()
    assert status.queues == [] and status.nodes == {} and status.at.tzinfo is not None


def test_known_scopes_and_scope_of_read_across_scopes(make_queue: Callable) -> None:
    a = make_queue(scope="a")
    job = a.create_job("q", "x", {})
    make_queue(scope="b").suspend()
    assert a.known_scopes() == ["a", "b"]
    assert make_queue(scope="b").scope_of(job.id) == "a"
    assert a.scope_of(999999) is None


def test_list_jobs_filters_by_state(make_queue: Callable) -> None:
    queue = make_queue(performer=Recorder(lambda job: failing(job) if job.params["f"] else None))
    queue.create_job("q1", "a", {"f": False})
    queue.create_job("q2", "a", {"f": True}, max_attempts=1)
    cancelled = queue.create_job("q3", "a", {"f": False}, scheduled_at=None)
    queue.cancel_job(cancelled.id)
    queue.create_job("q4", "a", {"f": False}, scheduled_at=None, timeout=timedelta(seconds=5))
    queue.suspend("q4")
    drain(queue)
    states = {
        s: [j.queue for j in queue.list_jobs(state=s)]
        for s in ("done", "given_up", "cancelled", "pending")
    }
    assert states == {"done": ["q1"], "given_up": ["q2"], "cancelled": ["q3"], "pending": ["q4"]}
    page = queue.paginate_jobs(page_size=1, state="done")
    assert page.total == 1 and page.items[0].queue == "q1"
    with pytest.raises(ValueError, match="state"):
        queue.list_jobs(state="bogus")


def test_cleanup_deletes_ended_jobs_only_when_asked(make_queue: Callable) -> None:
    queue = make_queue(performer=Recorder(failing))
    given_up = queue.create_job("q1", "a", {}, max_attempts=1)
    cancelled = queue.create_job("q2", "a", {})
    queue.cancel_job(cancelled.id)
    blocked = queue.create_job("q3", "a", {}, max_attempts=1, on_failure="block")
    again = queue.create_job("q4", "a", {}, max_attempts=1)
    drain(queue)
    assert queue.get_job(given_up.id).ended_at is not None
    assert queue.get_job(blocked.id).ended_at is None  # still pending
    assert queue.cleanup_jobs(0) == 0  # only done jobs by default
    assert queue.cleanup_jobs(3600, include_ended=True) == 0  # not that old
    assert queue.get_job(again.id).ended_at is not None
    assert queue.retry_job(again.id).ended_at is None  # pending again: never deleted
    assert queue.cleanup_jobs(0, include_ended=True) == 2
    assert queue.get_job(given_up.id) is None and queue.get_job(cancelled.id) is None
    assert queue.get_job(blocked.id) is not None and queue.get_job(again.id) is not None


def test_concurrent_retries_of_an_ended_job_count_it_once(
    make_queue: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two operators retry a given-up job (its queue has nothing pending) at once: they
    take turns, the job is counted pending once, and both retries are recorded."""
    queue = make_queue(performer=Recorder(failing))
    job = queue.create_job("q", "a", {"i": 0}, max_attempts=1)
    drain(queue)
    assert queue.get_job(job.id).given_up  # type: ignore[union-attr]
    both_read = threading.Barrier(2)
    lock_with_job = QueueBook.lock_with_job

    def reads_then_waits(self: QueueBook, *args: Any, **kwargs: Any) -> Any:
        locked = lock_with_job(self, *args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait(timeout=2)  # the other operator reads the queue now too
        return locked

    monkeypatch.setattr(QueueBook, "lock_with_job", reads_then_waits)
    threads = [threading.Thread(target=queue.retry_job, args=(job.id,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stored = queue.get_job(job.id)
    assert stored is not None and stored.state == "pending"
    assert [i.action for i in stored.interventions] == ["retry", "retry"]
    assert queue.status().queue("q").pending == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_action_keeps_its_queues_row_from_a_record_deleting_it_meanwhile(
    make_queue: Callable, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row an action makes sure of is locked at once: a record finishing the queue's
    last pending job cannot delete it between that and the action's lock."""
    queue = make_queue(performer=Recorder())
    done = queue.create_job("q", "a", {})
    drain(queue)
    last = queue.create_job("q", "a", {})  # the queue's row exists, with one pending job
    deleted: list[bool] = []
    ensure = QueueBook.ensure

    def then_a_record_deletes_the_row(self: QueueBook, conn: Any, scope: str, name: str) -> None:
        ensure(self, conn, scope, name)
        engine = sa.create_engine(url)
        try:
            with engine.begin() as other:
                other.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))
                tables = queue._db.tables
                queues, jobs = tables.queues, tables.jobs
                other.execute(
                    queues.delete().where(queues.c.scope == scope, queues.c.queue == name)
                )
                other.execute(
                    jobs.update()
                    .where(jobs.c.id == last.id)
                    .values(state="done", done_at=sa.func.now())
                )
            deleted.append(True)
        except sa.exc.OperationalError:  # lock_timeout: the row is the action's
            deleted.append(False)
        finally:
            engine.dispose()

    monkeypatch.setattr(QueueBook, "ensure", then_a_record_deletes_the_row)
    with pytest.raises(JobStateError, match="is done"):
        queue.cancel_job(done.id)
    assert deleted == [False]
