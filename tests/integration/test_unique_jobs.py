"""Unique jobs: while a pending job of a scope holds a key, creating a job with that key
returns it instead of inserting another; once it is done or ended, the key is free."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from recording import Recorder, wait_until

from queuetopia_py import InvalidJobError, JobStateError, Queuetopia
from queuetopia_py._cli import cli
from queuetopia_py._store.database import create_engine

SCOPE = "unique-tests"


def test_a_held_key_returns_the_pending_job_instead_of_a_new_one(
    make_queue: Callable[..., Queuetopia],
) -> None:
    queue = make_queue(scope=SCOPE)
    first = queue.create_job("invoices", "send", {"id": 7}, unique_key="invoice-7")
    again = queue.create_job("other", "other", {"id": 8}, unique_key="invoice-7")
    assert again == first
    assert first.unique_key == "invoice-7"
    assert [j.id for j in queue.list_jobs()] == [first.id]
    assert queue.get_job(first.id).unique_key == "invoice-7"  # type: ignore[union-attr]
    # Other keys, no key, and other scopes are not held.
    queue.create_job("invoices", "send", {"id": 7}, unique_key="invoice-8")
    queue.create_job("invoices", "send", {"id": 7})
    other_scope = make_queue(scope="another-scope")
    assert other_scope.create_job("invoices", "send", {}, unique_key="invoice-7").id != first.id
    assert len(queue.list_jobs()) == 3


def test_a_done_or_ended_job_frees_its_key(make_queue: Callable[..., Queuetopia]) -> None:
    recorder = Recorder()
    queue = make_queue(scope=SCOPE, performer=recorder, poll_interval=0.2)
    first = queue.create_job("invoices", "send", {}, unique_key="k")
    queue.start()
    recorder.wait(lambda r: any(j.id == first.id for j in r.finished))
    queue.wait_for(first.id, timeout=20)
    queue.stop()
    second = queue.create_job("invoices", "send", {}, unique_key="k")
    assert second.id != first.id
    queue.cancel_job(second.id)
    third = queue.create_job("invoices", "send", {}, unique_key="k")
    assert third.id not in (first.id, second.id)
    # The cancelled job cannot come back while the new one holds the key.
    with pytest.raises(JobStateError, match="unique key 'k' is held by another pending job"):
        queue.retry_job(second.id)
    queue.cancel_job(third.id)
    assert queue.retry_job(second.id).pending


def test_keys_in_one_create_jobs_call(make_queue: Callable[..., Queuetopia]) -> None:
    queue = make_queue(scope=SCOPE)
    held = queue.create_job("q", "a", {"n": 0}, unique_key="a")
    made = queue.create_jobs(
        [
            {"queue": "q", "action": "a", "params": {"n": 1}, "unique_key": "a"},
            {"queue": "q", "action": "a", "params": {"n": 2}, "unique_key": "b"},
            {"queue": "q", "action": "a", "params": {"n": 3}},
            {"queue": "q", "action": "a", "params": {"n": 4}, "unique_key": "b"},
            {"queue": "q", "action": "a", "params": {"n": 5}},
        ]
    )
    assert made[0] == held
    assert made[3] == made[1]
    assert [j.params["n"] for j in queue.list_jobs()] == [0, 2, 3, 5]


@pytest.mark.parametrize("bad", ["", " padded", "x" * 256, 7, "nul\x00"])
def test_an_invalid_key_is_refused_and_nothing_written(
    make_queue: Callable[..., Queuetopia], bad: object
) -> None:
    queue = make_queue(scope=SCOPE)
    with pytest.raises(InvalidJobError, match=r"^unique_key: "):
        queue.create_job("q", "a", {}, unique_key=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match=r"^jobs\[0\]\.unique_key: "):
        queue.create_jobs([{"queue": "q", "action": "a", "params": {}, "unique_key": bad}])
    assert queue.list_jobs() == []


CALLER = """
import sys
from queuetopia_py import Queuetopia

url, scope, key = sys.argv[1:4]
queue = Queuetopia(repo=url, scope=scope)
with queue.engine.connect():  # connected before the go
    pass
sys.stdin.readline()
print(queue.create_job("invoices", "send", {}, unique_key=key).id, flush=True)
"""


def test_callers_at_once_in_threads_and_processes_get_one_job(
    make_queue: Callable[..., Queuetopia], url: str
) -> None:
    queue = make_queue(scope=SCOPE)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CALLER, url, SCOPE, "k"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    threads_ready = threading.Barrier(21)
    ids: list[int] = []
    errors: list[BaseException] = []

    def call() -> None:
        threads_ready.wait()
        try:
            ids.append(queue.create_job("invoices", "send", {}, unique_key="k").id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    threads_ready.wait()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for thread in threads:
        thread.join(60)
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        ids.append(int(out.strip()))
    assert errors == []
    assert len(ids) == 23
    (job,) = queue.list_jobs()
    assert set(ids) == {job.id}


def _lock_waits(conn: sa.Connection, backend: str) -> int:
    """How many transactions of the server wait for a row lock now."""
    if backend == "postgresql":
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    else:
        # InnoDB serves this table from a cache that a read within the last 0.1 s keeps
        # as it was: poll it no faster.
        time.sleep(0.15)
        query = "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
    waits = int(conn.execute(sa.text(query)).scalar_one())
    conn.commit()  # PostgreSQL shows a transaction the sessions as they were at its start
    return waits


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # SQLite: one writer at a time
def test_a_key_held_in_an_uncommitted_transaction_waits_for_it(
    make_queue: Callable[..., Queuetopia], url: str, backend: str
) -> None:
    queue = make_queue(scope=SCOPE)
    engine = create_engine(url)
    got: list[int] = []
    try:
        with engine.begin() as conn, engine.connect() as watcher:
            held = queue.create_job("invoices", "send", {}, unique_key="k", connection=conn)
            other = threading.Thread(
                target=lambda: got.append(queue.create_job("q", "a", {}, unique_key="k").id)
            )
            other.start()
            wait_until(lambda: _lock_waits(watcher, backend) > 0, what="the second caller waits")
            assert got == []
        other.join(30)
        assert got == [held.id]
    finally:
        engine.dispose()
    assert [j.id for j in queue.list_jobs()] == [held.id]


def test_dead_lettering_does_not_carry_the_key(make_queue: Callable[..., Queuetopia]) -> None:
    def fail(job: object) -> None:
        raise RuntimeError("no")

    recorder = Recorder(fail)
    queue = make_queue(scope=SCOPE, performer=recorder, poll_interval=0.2)
    first = queue.create_job(
        "q", "a", {}, unique_key="k", max_attempts=1, on_failure="move_to:dead"
    )
    queue.start()
    recorder.wait(lambda r: len(r.failed) >= 1)
    queue.stop()
    moved = [j for j in queue.list_jobs() if j.queue == "dead"]
    assert len(moved) == 1 and moved[0].unique_key is None
    assert queue.create_job("q", "a", {}, unique_key="k").id not in (first.id, moved[0].id)


def test_the_key_column_is_indexed_only_for_pending_jobs(url: str, backend: str) -> None:
    engine = sa.create_engine(url)
    try:
        indexes = {i["name"]: i for i in sa.inspect(engine).get_indexes("queuetopia_jobs")}
    finally:
        engine.dispose()
    index = indexes["ux_queuetopia_jobs_unique_key"]
    assert index["unique"]
    expected = ["scope", "unique_pending"] if backend == "mariadb" else ["scope", "unique_key"]
    assert index["column_names"] == expected


def test_the_command_line_creates_with_a_key(url: str) -> None:
    runner = CliRunner()

    def create(*extra: str) -> Result:
        args = ["jobs", "create", "q", "a", "{}", "--scope", SCOPE, "--force", "--repo", url]
        return runner.invoke(cli, [*args, *extra], catch_exceptions=False)

    first = json.loads(create("--unique-key", "k", "--json").output)
    again = create("--unique-key", "k")
    assert first["unique_key"] == "k"
    assert again.output.strip() == f"job {first['id']} ({SCOPE}/q, a) holds key k"
    assert json.loads(create("--json").output)["unique_key"] is None
    shown = runner.invoke(cli, ["jobs", "show", str(first["id"]), "--repo", url])
    assert "unique key" in shown.output and " k" in shown.output
