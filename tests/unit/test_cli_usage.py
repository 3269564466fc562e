"""The `queuetopia` command line, without a database: help, argument errors, env vars."""

from __future__ import annotations

import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from factories import make_job

from queuetopia_py import Job, Queuetopia
from queuetopia_py.cli import cli, load_queue_class
from queuetopia_py.demo import DemoPerformer

QUEUE_MODULE = """
from queuetopia_py import Performer, Queuetopia

class NoopPerformer(Performer):
    def perform(self, job):
        return None

class UnitQueue(Queuetopia, performer=NoopPerformer):
    class Nested(Queuetopia):
        pass

NOT_A_CLASS = 42
"""


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """A non-zero exit with a message, not a traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module holding Queuetopia subclasses, in the current directory; returns its name."""
    name = f"unit_queues_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(QUEUE_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name


def test_help_lists_the_migrate_worker_and_demo_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1].split()
    assert {"migrate", "worker", "demo"} <= set(commands)


def test_worker_help_names_the_environment_variable_of_each_option() -> None:
    result = invoke("worker", "--help")
    assert result.exit_code == 0
    for name in ("REPO", "POLL_INTERVAL", "MAX_CONCURRENCY", "NODE", "LOG_LEVEL"):
        assert f"QUEUETOPIA_WORKER_{name}" in result.output


@pytest.mark.parametrize(
    ("path", "explanation"),
    [
        ("no_colon_here", "is not a 'module:Class' path"),
        ("missing:", "is not a 'module:Class' path"),
        (":Missing", "is not a 'module:Class' path"),
        ("no_such_module_xyz:Queue", "no module named 'no_such_module_xyz'"),
        ("os:NoSuchQueue", "has no attribute 'NoSuchQueue'"),
        ("os:path", "not a subclass of queuetopia_py.Queuetopia"),
        ("builtins:dict", "not a subclass of queuetopia_py.Queuetopia"),
    ],
)
def test_worker_explains_why_a_queue_class_path_is_unusable(path: str, explanation: str) -> None:
    result = invoke("worker", path)
    assert_clean_failure(result, "Invalid value for 'MODULE:CLASS'", explanation)


def test_worker_reports_an_error_raised_while_importing_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import json\nraise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = invoke("worker", f"{name}:Queue")
    assert_clean_failure(result, f"importing {name!r} failed", "RuntimeError: boom at import")


def test_worker_reports_a_non_queuetopia_attribute_of_a_module(module_dir: str) -> None:
    result = invoke("worker", f"{module_dir}:NOT_A_CLASS")
    assert_clean_failure(result, "42", "not a subclass of queuetopia_py.Queuetopia")


def test_queue_classes_are_found_in_the_current_directory_even_nested(module_dir: str) -> None:
    found = load_queue_class(f"{module_dir}:UnitQueue.Nested")
    assert issubclass(found, Queuetopia)
    assert found.__qualname__ == "UnitQueue.Nested"


def test_worker_without_any_repo_says_how_to_give_one(module_dir: str) -> None:
    result = invoke("worker", f"{module_dir}:UnitQueue")
    assert_clean_failure(result, "repo:", "--repo", "QUEUETOPIA_WORKER_REPO")


def test_worker_reads_its_repo_from_the_environment(module_dir: str) -> None:
    # An in-memory SQLite URL is refused by name: only the env var can have supplied it.
    result = invoke(
        "worker", f"{module_dir}:UnitQueue", env={"QUEUETOPIA_WORKER_REPO": "sqlite://"}
    )
    assert_clean_failure(result, "in-memory SQLite")
    assert "--repo" not in result.output


def test_worker_reads_its_poll_interval_from_the_environment(module_dir: str) -> None:
    env = {"QUEUETOPIA_WORKER_POLL_INTERVAL": "-3"}
    result = invoke("worker", f"{module_dir}:UnitQueue", env=env)
    assert_clean_failure(result, "--poll-interval", "-3")


def test_migrate_rejects_a_url_naming_an_unknown_database() -> None:
    result = invoke("migrate", "nosuchdb://somewhere/db")
    assert_clean_failure(result, "unsupported database", "nosuchdb")


def test_migrate_rejects_text_that_is_not_a_url() -> None:
    result = invoke("migrate", "not a url")
    assert_clean_failure(result, "not a database URL")


def test_migrate_reports_an_unreachable_database_without_a_traceback() -> None:
    result = invoke("migrate", "postgresql://postgres:secret@127.0.0.1:1/nowhere")
    assert_clean_failure(result, "database error", "127.0.0.1")
    assert "secret" not in result.output


def test_migrate_reads_the_table_prefix_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = invoke("migrate", url, env={"QUEUETOPIA_MIGRATE_PREFIX": "Not-Valid"})
    assert_clean_failure(result, "table_prefix", "Not-Valid")


def _job(attempts: int, fail_first: int) -> Job:
    return make_job(
        scope="demo",
        queue="payments",
        action="charge_card",
        params={"fail_first": fail_first},
        timeout=timedelta(seconds=5),
        max_backoff=timedelta(seconds=0.5),
        attempts=attempts,
        error="RuntimeError: card declined",
    )


def test_demo_performer_fails_the_first_attempts_then_succeeds_and_prints_each() -> None:
    lines: list[str] = []
    performer = DemoPerformer(echo=lines.append, attempt_seconds=0)
    for attempt in (1, 2):
        with pytest.raises(RuntimeError, match=f"simulated failure {attempt}/2"):
            performer.perform(_job(attempt, fail_first=2))
        performer.handle_failed_job(_job(attempt, fail_first=2))
    performer.perform(_job(3, fail_first=2))
    assert len(lines) == 3
    assert all("payments" in line for line in lines)
    assert "attempt 1" in lines[0] and "failed" in lines[0] and "retry at" in lines[0]
    assert "attempt 3" in lines[2] and "ok" in lines[2]
