"""The awaitable API: what an asyncio application calls, on every database; on PostgreSQL
without a thread per call and without blocking the loop."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from queuetopia_py import (
    Job,
    JobCancelledError,
    JobNotFoundError,
    Performer,
    Queuetopia,
    WaitTimeoutError,
)
from queuetopia_py._store.database import create_engine


class Doubler(Performer):
    def perform(self, job: Job) -> object:
        return {"twice": job.params["n"] * 2}


class AsyncShop(Queuetopia, performer=Doubler, poll_interval=0.5):
    pass


def test_an_application_creates_and_awaits_its_jobs(make_queue: Callable) -> None:
    queue = make_queue(AsyncShop, scope="async-shop")

    async def main() -> None:
        async with queue as q:
            assert q is queue and q.running
            job = await q.acreate_job("orders", "double", {"n": 21})
            assert await q.await_for(job.id, timeout=30) == {"twice": 42}
            [second, third] = await q.acreate_jobs(
                [
                    {"queue": "orders", "action": "double", "params": {"n": 1}},
                    {"queue": "orders", "action": "double", "params": {"n": 2}},
                ]
            )
            assert await q.await_for(third.id, timeout=30) == {"twice": 4}
            assert (await q.aget_job(second.id)).done  # type: ignore[union-attr]
            listed = await q.alist_jobs("orders", state="done")
            assert [j.id for j in listed] == [job.id, second.id, third.id]
            page = await q.apaginate_jobs(page_size=2, queue="orders")
            assert (page.total, len(page.items)) == (3, 2)
            status = await q.astatus()
            assert status.scope == "async-shop" and status.queues == []
        assert not queue.running

    asyncio.run(main())


def test_operators_act_from_async_code(make_queue: Callable) -> None:
    queue = make_queue(AsyncShop, scope="async-ops")  # not started: the jobs wait

    async def main() -> None:
        first = await queue.acreate_job("orders", "double", {"n": 1})
        second = await queue.acreate_job("orders", "double", {"n": 2})
        suspension = await queue.asuspend("orders", by="alice", reason="inventory")
        assert suspension.suspended_by == "alice"
        assert [s.queue for s in await queue.asuspensions()] == ["orders"]
        assert await queue.aresume("orders", by="alice") is True
        assert (await queue.acancel_job(second.id, by="alice")).state == "cancelled"
        with pytest.raises(JobCancelledError):
            await queue.await_for(second.id)
        assert (await queue.aabort_job(first.id, by="alice")).state == "aborted"
        assert (await queue.aretry_job(first.id, by="alice")).state == "pending"
        with pytest.raises(WaitTimeoutError):
            await queue.await_for(first.id, timeout=0.1)
        with pytest.raises(JobNotFoundError):
            await queue.await_for(10**9)
        assert await queue.acleanup_jobs(0, include_ended=True) == 1  # the cancelled one

    asyncio.run(main())


def test_await_for_lets_other_tasks_run_while_it_waits(make_queue: Callable) -> None:
    queue = make_queue(AsyncShop, scope="async-wait")

    async def main() -> None:
        job = await queue.acreate_job("orders", "double", {"n": 5})
        waiting = asyncio.create_task(queue.await_for(job.id, timeout=30))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # no scheduler runs yet: still waiting, loop free
        await queue.astart()
        assert await waiting == {"twice": 10}
        assert await queue.astop() is True

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_on_postgresql_a_call_waiting_on_the_database_leaves_the_loop_free(
    url: str, make_queue: Callable
) -> None:
    queue = make_queue(AsyncShop, scope="async-free")
    queue.create_job("orders", "double", {"n": 1})  # the queue's row exists
    holder = create_engine(url)
    statement_threads: set[int] = set()

    async def main() -> None:
        loop_thread = threading.get_ident()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        assert await queue.aget_job(10**9) is None  # the first call makes the engine
        event.listen(
            queue._db.async_engine.sync_engine,
            "before_cursor_execute",
            lambda *_: statement_threads.add(threading.get_ident()),
        )
        with holder.connect() as conn, conn.begin():
            # Another transaction holds the queue's row: creating a job in it waits.
            conn.execute(
                sa.text("SELECT 1 FROM queuetopia_queues WHERE scope = 'async-free' FOR UPDATE")
            )
            creating = asyncio.create_task(queue.acreate_job("orders", "double", {"n": 2}))
            before = ticks
            await asyncio.sleep(0.3)
            assert not creating.done()
            assert ticks - before >= 5  # the loop kept running meanwhile
        job = await asyncio.wait_for(creating, 10)
        assert job.params == {"n": 2}
        # Every statement was sent from the loop's thread: no thread for the calls.
        assert statement_threads == {loop_thread}, (statement_threads, loop_thread)
        ticker.cancel()
        await queue.astop()

    try:
        asyncio.run(main())
    finally:
        holder.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_acreate_job_joins_the_callers_async_transaction(url: str, make_queue: Callable) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    queue = make_queue(AsyncShop, scope="async-tx")
    app_engine = create_async_engine(url)

    async def main() -> None:
        async with app_engine.connect() as conn:
            async with conn.begin() as tx:
                rolled_back = await queue.acreate_job("orders", "double", {"n": 1}, connection=conn)
                await tx.rollback()
            async with conn.begin():
                [kept] = await queue.acreate_jobs(
                    [{"queue": "orders", "action": "double", "params": {"n": 3}}],
                    connection=conn,
                )
        assert await queue.aget_job(rolled_back.id) is None
        async with queue:
            assert await queue.await_for(kept.id, timeout=30) == {"twice": 6}
        await app_engine.dispose()

    asyncio.run(main())


def test_without_greenlet_postgresql_calls_run_on_worker_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.engine import make_url

    from queuetopia_py._store.aio import AsyncCalls

    url = make_url("postgresql+psycopg://postgres@127.0.0.1/db")
    native = AsyncCalls(None, url, statement_timeout=None, pool_size=1)  # type: ignore[arg-type]
    assert native.native
    monkeypatch.setitem(sys.modules, "greenlet", None)  # `import greenlet` fails
    calls = AsyncCalls(None, url, statement_timeout=None, pool_size=1)  # type: ignore[arg-type]
    assert not calls.native
    assert asyncio.run(calls(threading.get_ident)) != threading.get_ident()
