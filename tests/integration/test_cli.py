"""The `queuetopia` command line against each database: migrate, a real worker process,
and the demo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from queuetopia_py import Queuetopia
from queuetopia_py import _demo as demo
from queuetopia_py._cli import cli
from queuetopia_py.migrations import LATEST

WORKER_MODULE = """
import time
from queuetopia_py import Performer, Queuetopia

class SleepyPerformer(Performer):
    def perform(self, job):
        time.sleep(job.params.get("seconds", 0))

class CliWorkerQueue(Queuetopia, performer=SleepyPerformer, scope="cli-worker-test"):
    pass
"""
CLI = [sys.executable, "-m", "queuetopia_py._cli"]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.05)


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def client(url: str) -> Iterator[Queuetopia]:
    """A Queuetopia of the worker's scope, to create and read jobs (never started)."""
    instance = Queuetopia(repo=url, scope="cli-worker-test")
    yield instance
    instance.stop()


def test_migrate_creates_the_tables_and_is_idempotent(db_url: str) -> None:
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(cli, ["migrate", db_url])
        assert result.exit_code == 0, result.output
        assert f"schema version {LATEST}" in result.output
    assert {"queuetopia_jobs", "queuetopia_locks", "queuetopia_schema_version"} <= table_names(
        db_url
    )


def test_migrate_to_zero_removes_the_tables(db_url: str) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate", db_url]).exit_code == 0
    result = runner.invoke(cli, ["migrate", db_url, "--to", "0"])
    assert result.exit_code == 0, result.output
    assert "schema version 0" in result.output
    assert not any(name.startswith("queuetopia_") for name in table_names(db_url))


def test_migrate_takes_the_table_prefix_from_the_environment(db_url: str) -> None:
    result = CliRunner().invoke(
        cli, ["migrate", db_url], env={"QUEUETOPIA_MIGRATE_PREFIX": "custom_"}
    )
    assert result.exit_code == 0, result.output
    names = table_names(db_url)
    assert "custom_jobs" in names
    assert "queuetopia_jobs" not in names


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_worker_runs_jobs_and_lets_the_running_attempt_finish_on_a_signal(
    url: str, client: Queuetopia, tmp_path: Path, signum: signal.Signals
) -> None:
    (tmp_path / "cli_worker_jobs.py").write_text(WORKER_MODULE)
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        # Run from tmp_path: the worker must find the module in its current directory.
        worker = subprocess.Popen(
            [*CLI, "worker", "cli_worker_jobs:CliWorkerQueue", "--poll-interval", "0.5"],
            cwd=tmp_path,
            env={**os.environ, "QUEUETOPIA_WORKER_REPO": url},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        quick = client.create_job("quick", "noop", {})
        wait_until(lambda: _done(client, quick.id), "the worker ran the first job")

        slow = client.create_job("slow", "sleep", {"seconds": 1.5})
        wait_until(lambda: _attempts(client, slow.id) == 1, "the slow job started")
        assert not _done(client, slow.id)
        worker.send_signal(signum)
        exit_code = worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    output_text = log.read_text()
    assert exit_code == 0, output_text
    assert _done(client, slow.id), "the running attempt was not let finish"
    assert "worker stopped" in output_text
    assert "Traceback" not in output_text


def _done(client: Queuetopia, job_id: int) -> bool:
    job = client.get_job(job_id)
    return job is not None and job.done


def _attempts(client: Queuetopia, job_id: int) -> int:
    job = client.get_job(job_id)
    return 0 if job is None else job.attempts


def test_worker_on_an_unmigrated_database_says_to_run_migrate(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "cli_worker_jobs.py").write_text(WORKER_MODULE)
    finished = subprocess.run(
        [*CLI, "worker", "cli_worker_jobs:CliWorkerQueue", "--repo", db_url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert "queuetopia migrate" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_demo_shows_the_failing_queue_retried_while_the_others_flow(tmp_path: Path) -> None:
    started = time.monotonic()
    finished = subprocess.run(
        [*CLI, "demo", "--path", str(tmp_path / "demo.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert elapsed < 15
    lines = finished.stdout.splitlines()
    attempts = [line for line in lines if re.search(r"\battempt \d+\b", line)]
    failures = [i for i, line in enumerate(attempts) if "payments" in line and "failed" in line]
    assert len(failures) == demo.FAILURES
    assert all("retry at" in attempts[i] for i in failures)
    head_success = next(
        i
        for i, line in enumerate(attempts)
        if "payments" in line and f"attempt {demo.FAILURES + 1}" in line and "ok" in line
    )
    # While the payments head failed and waited, the other queues kept running.
    flowing = attempts[failures[0] : head_success]
    assert any("emails" in line and "ok" in line for line in flowing)
    assert any("reports" in line and "ok" in line for line in flowing)
    # Nothing behind the failing head ran before it succeeded.
    assert not any("payments" in line and "ok" in line for line in attempts[:head_success])
    assert len(attempts) == len(demo.JOBS) + demo.FAILURES
    assert f"all {len(demo.JOBS)} jobs done" in finished.stdout
    assert "Traceback" not in finished.stderr


def test_demo_whose_reader_goes_away_stops_quietly_without_failing_jobs(tmp_path: Path) -> None:
    """`queuetopia demo | head -2`: the closed pipe ends the demo; no attempt fails for it."""
    with subprocess.Popen(
        [*CLI, "demo", "--path", str(tmp_path / "demo.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        first = [process.stdout.readline() for _ in range(2)]
        process.stdout.close()
        try:
            process.wait(timeout=30)  # the demo's own deadline is 60 s
        finally:
            process.kill()
        stderr = process.stderr.read()
    assert first[0].startswith("database: ")
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert process.returncode == 1
    jobs = Queuetopia(repo=f"sqlite:///{tmp_path / 'demo.db'}")
    try:
        failed = [
            j
            for scope in jobs.known_scopes()
            for j in Queuetopia(repo=jobs.engine, scope=scope).list_jobs()
            if "BrokenPipeError" in (j.error or "")
        ]
    finally:
        jobs.stop()
    assert failed == []


def test_demo_exits_non_zero_when_its_jobs_are_not_done_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "DEADLINE_SECONDS", 0.3)
    result = CliRunner().invoke(cli, ["demo", "--path", str(tmp_path / "demo.db")])
    assert result.exit_code != 0
    assert re.search(r"only \d+ of \d+ jobs done", result.output)
