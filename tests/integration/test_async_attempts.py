"""Async performers: `async def perform` (and async hooks) run as tasks of an event loop,
the application's when started with `astart`, else the node's own; a timeout cancels the
task; order and blocking are the scheduler's, as with threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from recording import wait_until

from queuetopia_py import Job, JobGivenUpError, Performer, Queuetopia, report_progress
from queuetopia_py.testing import drain


class AsyncMailer(Performer):
    """Awaits a little, fails the jobs told to, records what ran where (importable by
    worker processes)."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, int]] = []
        self.loops: set[int] = set()
        self.succeeded: list[int] = []
        self.failed: list[int] = []
        self.lock = threading.Lock()

    async def perform(self, job: Job) -> object:
        await asyncio.sleep(0.01)
        with self.lock:
            self.ran.append((job.queue, job.id))
            self.loops.add(id(asyncio.get_running_loop()))
        if job.params.get("fail"):
            raise RuntimeError("mail server down")
        return {"sent": job.params["n"]}

    async def backoff(self, job: Job) -> timedelta:
        await asyncio.sleep(0)
        return timedelta(seconds=0.2)

    async def handle_succeeded_job(self, job: Job) -> None:
        await asyncio.sleep(0)
        with self.lock:
            self.succeeded.append(job.id)

    async def handle_failed_job(self, job: Job) -> None:
        await asyncio.sleep(0)
        with self.lock:
            self.failed.append(job.id)


def test_an_async_performer_runs_each_queue_in_order_on_the_nodes_own_loop(
    make_queue: Callable,
) -> None:
    mailer = AsyncMailer()
    queue = make_queue(performer=mailer, poll_interval=0.2, max_concurrency=3)
    jobs = [queue.create_job(f"q{i % 3}", "send", {"n": i}) for i in range(12)]
    failing = queue.create_job("q0", "send", {"n": 99, "fail": True}, max_attempts=2)
    queue.start()
    for job in jobs:
        assert queue.wait_for(job.id, timeout=30) == {"sent": job.params["n"]}
    with pytest.raises(JobGivenUpError):
        queue.wait_for(failing.id, timeout=30)
    for name in ("q0", "q1", "q2"):
        ran = [job_id for q, job_id in mailer.ran if q == name]
        assert ran == sorted(ran), f"{name} ran out of order: {ran}"
    assert len(mailer.loops) == 1  # one loop, the node's
    # The async hooks were awaited: each success and failure was handled, the backoff used.
    wait_until(lambda: len(mailer.succeeded) == 12 and mailer.failed == [failing.id] * 2)
    stored = queue.get_job(failing.id)
    assert stored.attempts == 2 and "mail server down" in stored.error


def test_started_from_async_code_attempts_run_on_the_applications_loop(
    make_queue: Callable,
) -> None:
    mailer = AsyncMailer()
    queue = make_queue(performer=mailer, poll_interval=0.2)

    async def main() -> None:
        async with queue:
            job = await queue.acreate_job("q", "send", {"n": 1})
            assert await queue.await_for(job.id, timeout=30) == {"sent": 1}
        assert mailer.loops == {id(asyncio.get_running_loop())}

    asyncio.run(main())


def test_async_attempts_of_different_queues_run_at_the_same_time(make_queue: Callable) -> None:
    arrived: dict[str, asyncio.Event] = {}

    class Meeting(Performer):
        async def perform(self, job: Job) -> object:
            # Each waits for the other: both must be running at once to finish.
            for name in ("a", "b"):
                arrived.setdefault(name, asyncio.Event())
            arrived[job.queue].set()
            other = "b" if job.queue == "a" else "a"
            await asyncio.wait_for(arrived[other].wait(), timeout=10)
            return "met"

    queue = make_queue(performer=Meeting(), poll_interval=0.2, max_concurrency=2)
    a = queue.create_job("a", "meet", {})
    b = queue.create_job("b", "meet", {})
    queue.start()
    assert queue.wait_for(a.id, timeout=30) == queue.wait_for(b.id, timeout=30) == "met"


def test_a_timeout_cancels_the_attempts_task_and_the_queue_goes_on(make_queue: Callable) -> None:
    cancelled = threading.Event()

    class Slow(Performer):
        async def perform(self, job: Job) -> object:
            if job.action == "slow":
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
            return job.action

    queue = make_queue(performer=Slow(), poll_interval=0.2)
    slow = queue.create_job("q", "slow", {}, timeout=0.3, max_attempts=1)
    after = queue.create_job("q", "after", {})
    queue.start()
    with pytest.raises(JobGivenUpError):
        queue.wait_for(slow.id, timeout=30)
    assert cancelled.is_set()
    assert "timeout" in queue.get_job(slow.id).error
    assert queue.wait_for(after.id, timeout=30) == "after"


def test_an_async_perform_reports_its_progress(make_queue: Callable) -> None:
    reported = threading.Event()
    release = threading.Event()

    class Copier(Performer):
        async def perform(self, job: Job) -> object:
            assert report_progress("copied 3 of 4 files", 0.75)
            reported.set()
            await asyncio.to_thread(release.wait, 20)
            return None

    queue = make_queue(performer=Copier(), poll_interval=0.2)
    job = queue.create_job("q", "copy", {})
    queue.start()
    assert reported.wait(20)
    wait_until(lambda: queue.get_job(job.id).progress is not None, what="progress stored")
    progress = queue.get_job(job.id).progress
    release.set()
    assert (progress.message, progress.fraction) == ("copied 3 of 4 files", 0.75)
    queue.wait_for(job.id, timeout=30)


def test_drain_runs_an_async_performer(make_queue: Callable) -> None:
    mailer = AsyncMailer()
    queue = make_queue(performer=mailer)
    jobs = [queue.create_job("q", "send", {"n": i}) for i in range(3)]
    drained = drain(queue)
    assert [job.id for job in drained] == [job.id for job in jobs]
    assert all(job.done for job in drained)
    assert mailer.succeeded == [job.id for job in jobs]


class ProcessMailer(Performer):
    """An async performer for worker processes (importable)."""

    async def perform(self, job: Job) -> object:
        await asyncio.sleep(0)
        return {"pid_loop": True, "n": job.params["n"]}


def test_an_async_performer_runs_in_worker_processes(make_queue: Callable) -> None:
    queue = make_queue(performer=ProcessMailer, executor="process", poll_interval=0.2)
    job = queue.create_job("q", "send", {"n": 7})
    queue.start()
    assert queue.wait_for(job.id, timeout=60) == {"pid_loop": True, "n": 7}


def test_sync_and_async_performers_share_one_node(make_queue: Callable) -> None:
    class SyncMailer(Performer):
        def perform(self, job: Job) -> object:
            return "sync"

    class Mailers(Queuetopia):
        pass

    sync_queue = make_queue(Mailers, scope="sync-mail", performer=SyncMailer, poll_interval=0.2)
    async_queue = make_queue(Mailers, scope="async-mail", performer=AsyncMailer, poll_interval=0.2)
    a = sync_queue.create_job("q", "send", {"n": 1})
    b = async_queue.create_job("q", "send", {"n": 2})
    sync_queue.start()
    async_queue.start()
    assert sync_queue.wait_for(a.id, timeout=30) == "sync"
    assert async_queue.wait_for(b.id, timeout=30) == {"sent": 2}
