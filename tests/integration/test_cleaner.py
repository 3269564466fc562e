"""The cleaner on each database: it deletes in batches, each a short transaction of its
own; one node at a time cleans a scope (the scope's cleaner lock, a row of the locks
table under a name no queue can have); several nodes cleaning at once, while jobs are
created and run, neither deadlock nor fail; and the statements of `status()`, the
cleaner and a queue's listing read the jobs table through its indexes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from queue_rows import resync
from recording import Recorder, wait_until

from queuetopia_py import Queuetopia
from queuetopia_py._store.cleaner import CLEANER_LOCK, Cleaner


def add_done_jobs(queue: Queuetopia, count: int, *, days_ago: float = 8) -> list[int]:
    """`count` jobs of queue "old", done `days_ago` days ago (by the database's clock)."""
    created = queue.create_jobs([{"queue": "old", "action": "a", "params": {}}] * count)
    ids = [job.id for job in created]
    jobs = queue._db.tables.jobs
    with queue.engine.begin() as conn:
        now = conn.execute(sa.select(queue._db.now())).scalar_one()
        long_ago = now - timedelta(days=days_ago)
        conn.execute(
            jobs.update()
            .where(jobs.c.scope == queue.scope, jobs.c.queue == "old")
            .values(state="done", done_at=long_ago, scheduled_at=long_ago)
        )
    resync(queue.engine, queue._db.tables)
    return ids


def cleaner_locks(queue: Queuetopia) -> list[Any]:
    locks = queue._db.tables.locks
    with queue.engine.connect() as conn:
        return list(conn.execute(sa.select(locks).where(locks.c.queue == CLEANER_LOCK)))


def test_cleanup_deletes_in_batches_each_in_a_transaction_of_its_own(
    make_queue: Callable,
) -> None:
    queue = make_queue()
    add_done_jobs(queue, 2500)
    pending = queue.create_job("q", "a", {})
    jobs_table = queue._db.tables.jobs.name
    # Each DELETE of jobs and the rows it deleted; each commit.
    log: list[tuple[str, int]] = []

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(f"DELETE FROM {jobs_table.upper()}"):
            log.append(("delete", cursor.rowcount))

    def committed(_conn: Any) -> None:
        log.append(("commit", 0))

    sa.event.listen(queue.engine, "after_cursor_execute", after)
    sa.event.listen(queue.engine, "commit", committed)
    try:
        assert queue.cleanup_jobs() == 2500
    finally:
        sa.event.remove(queue.engine, "after_cursor_execute", after)
        sa.event.remove(queue.engine, "commit", committed)
    deletes = [rows for kind, rows in log if kind == "delete"]
    assert deletes == [1000, 1000, 500]
    # Each batch is committed before the next one begins.
    order = [kind for kind, _ in log]
    starts = [i for i, kind in enumerate(order) if kind == "delete"]
    for here, following in zip(starts, [*starts[1:], len(order)], strict=True):
        assert "commit" in order[here + 1 : following + 1]
    assert queue.list_jobs() == [queue.get_job(pending.id)]
    assert cleaner_locks(queue) == []  # released


def test_one_node_at_a_time_cleans_a_scope(make_queue: Callable) -> None:
    holder, other = make_queue(scope="s"), make_queue(scope="s")
    add_done_jobs(holder, 30)
    holder.create_job("p", "a", {})
    token = holder._cleaner._take_cleaner_lock(holder.node)
    assert token is not None
    results: list[int] = []
    waiting = threading.Thread(target=lambda: results.append(other.cleanup_jobs()))
    try:
        assert other._cleaner._take_cleaner_lock(other.node) is None
        # A node that skips a busy cleaner deletes nothing while the lock is held...
        assert other.cleanup_jobs(skip_if_busy=True) == 0
        # ...and one that waits deletes only once it is released.
        waiting.start()
        waiting.join(0.5)
        assert results == [] and len(other.list_jobs()) == 31
        # The lock is a row of the locks table that status() does not show as a queue.
        assert [row.locked_by_node for row in cleaner_locks(holder)] == [holder.node]
        assert [q.queue for q in holder.status().queues] == ["p"]
    finally:
        holder._cleaner._release_cleaner_lock(token)
        if waiting.is_alive():
            waiting.join(30)
    assert results == [30] and [job.queue for job in other.list_jobs()] == ["p"]


def test_the_cleaner_lock_of_a_dead_node_is_taken_over_once_expired(
    make_queue: Callable,
) -> None:
    dead, alive = make_queue(scope="s"), make_queue(scope="s")
    add_done_jobs(alive, 5)
    assert dead._cleaner._take_cleaner_lock(dead.node) is not None  # never released
    assert alive.cleanup_jobs(skip_if_busy=True) == 0
    locks = alive._db.tables.locks
    with alive.engine.begin() as conn:
        now = conn.execute(sa.select(alive._db.now())).scalar_one()
        conn.execute(
            locks.update()
            .where(locks.c.queue == CLEANER_LOCK)
            .values(locked_until=now - timedelta(seconds=1))
        )
    assert alive.cleanup_jobs(skip_if_busy=True) == 5


def test_the_cleaner_lock_of_one_scope_leaves_other_scopes_alone(make_queue: Callable) -> None:
    first, second = make_queue(scope="first"), make_queue(scope="second")
    add_done_jobs(second, 3)
    assert first._cleaner._take_cleaner_lock(first.node) is not None
    assert second.cleanup_jobs(skip_if_busy=True) == 3


def test_a_cleaner_whose_lock_was_taken_over_stops_deleting(make_queue: Callable) -> None:
    queue = make_queue()
    add_done_jobs(queue, 10)
    token = queue._cleaner._take_cleaner_lock(queue.node)
    assert token is not None
    locks = queue._db.tables.locks
    with queue.engine.begin() as conn:  # another node took the expired lock over
        conn.execute(locks.update().where(locks.c.queue == CLEANER_LOCK).values(token="theirs"))
    assert queue._cleaner._delete_batches(timedelta(0), False, 1000, token) == 0
    assert len(queue.list_jobs()) == 10


def test_concurrent_cleaners_neither_deadlock_nor_fail_while_jobs_run(
    make_queue: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whoever holds the cleaner lock, at most one node is inside it at any instant.
    inside = [0, 0]  # now, most ever
    guard = threading.Lock()
    original = Cleaner._delete_batches

    def counted(self: Cleaner, *args: Any) -> int:
        with guard:
            inside[0] += 1
            inside[1] = max(inside)
        try:
            return original(self, *args)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(Cleaner, "_delete_batches", counted)
    worker = make_queue(scope="s", performer=Recorder(), poll_interval=0.2)
    cleaners = [make_queue(scope="s") for _ in range(4)]
    old = add_done_jobs(worker, 3000)
    worker.start()
    errors: list[BaseException] = []
    deleted: list[int] = []
    created: list[int] = []
    stop = threading.Event()

    def clean(instance: Queuetopia, skip: bool) -> None:
        try:
            for _ in range(4):
                deleted.append(instance.cleanup_jobs(0, include_ended=True, skip_if_busy=skip))
        except BaseException as exc:
            errors.append(exc)

    def produce() -> None:
        try:
            while not stop.is_set():
                created.append(worker.create_job(f"q{len(created) % 5}", "a", {}).id)
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    threads = [
        threading.Thread(target=clean, args=(instance, i % 2 == 1))
        for i, instance in enumerate(cleaners)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    producer.join(30)
    assert errors == []
    assert not [t for t in threads if t.is_alive()], "a cleaner still runs after 120 s"
    assert inside[1] == 1
    assert sum(deleted) >= len(old)
    left = [job for job in map(worker.get_job, old[::97]) if job is not None]
    assert left == [], f"{len(left)} old jobs left after {len(deleted)} cleanups: {deleted}"
    # The jobs created meanwhile all run; the cleaners took nothing pending.
    wait_until(
        lambda: all(job is None or job.done for job in (worker.get_job(i) for i in created[-20:])),
        60,
        "the last jobs created are done",
    )
    assert all(job.done for job in worker.list_jobs())


def _plans(queue: Queuetopia, run: Callable[[], object]) -> list[str]:
    """PostgreSQL: the plans of the statements `run` sends that read the jobs table,
    with sequential scans disabled: a statement no index serves still shows one."""
    jobs = queue._db.tables.jobs.name
    seen: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if jobs in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(queue.engine, "before_cursor_execute", before)
    try:
        run()
    finally:
        sa.event.remove(queue.engine, "before_cursor_execute", before)
    assert seen
    plans = []
    with queue.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, parameters in seen:
            rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
            plans.append("\n".join(row[0] for row in rows))
    return plans


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_status_cleaner_and_queue_listing_read_jobs_through_indexes(
    make_queue: Callable,
) -> None:
    queue = make_queue()
    add_done_jobs(queue, 50)
    for i in range(20):
        queue.create_job(f"q{i % 4}", "a", {})
    jobs = queue._db.tables.jobs.name
    for run in (
        queue.status,
        lambda: queue.cleanup_jobs(include_ended=True),
        lambda: queue.list_jobs(queue="q1", state="pending"),
    ):
        for plan in _plans(queue, run):
            assert f"Seq Scan on {jobs}" not in plan, plan
