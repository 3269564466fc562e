"""Connection-pool pressure: runners keep one connection each while their queues run, and
everything else (progress reports, polls, lock renewals, the application's own calls from
many threads at once) shares the rest of the pool without exhausting it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from recording import Recorder

from queuetopia_py import Job, Queuetopia, report_progress


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_busy_runners_and_many_application_threads_share_the_pool(
    make_queue: Callable[..., Queuetopia], url: str
) -> None:
    release = threading.Event()

    def report_until_released(job: Job) -> None:
        while not release.is_set():
            assert report_progress("working", 0.5)
            release.wait(0.005)

    recorder = Recorder(report_until_released)
    concurrency = 4
    queue = make_queue(
        performer=recorder, max_concurrency=concurrency, poll_interval=0.1, lock_lease=1
    )
    long_jobs = [queue.create_job(f"long-{i}", "a", {}, timeout=120) for i in range(concurrency)]
    queue.start()
    recorder.wait(lambda r: len(r.started) == concurrency)

    errors: list[BaseException] = []

    def application(i: int) -> None:
        try:
            for n in range(20):
                queue.create_job(f"app-{i}", "a", {"n": n})
                queue.status()
                queue.list_jobs(f"app-{i}", limit=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=application, args=(i,)) for i in range(30)]
    most = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.wait(0.05):
            most = max(most, _connections(url))

    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    sampler.join()
    assert errors == []
    # At most pool_size (max_concurrency + 5) + SQLAlchemy's default overflow (10), plus
    # the listening connection on PostgreSQL.
    assert concurrency < most <= concurrency + 5 + 10 + 1
    release.set()
    recorder.wait(lambda r: len(r.finished) >= concurrency + 30 * 20, 120)
    assert all(queue.get_job(j.id).done for j in long_jobs)


def _connections(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            else:
                query = "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE()"
            return int(conn.exec_driver_sql(query).scalar_one()) - 1
    finally:
        engine.dispose()
