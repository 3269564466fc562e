"""The `queuetopia` command line, without a database: help, argument errors, env vars."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from factories import make_job
from rich.cells import cell_len

import queuetopia_py
from queuetopia_py import Job, Lock, Page, QueueStatus, Queuetopia, RunningAttempt, migrate
from queuetopia_py import _cli_tables as cli_tables
from queuetopia_py._cli import cli, load_queue_class
from queuetopia_py._demo import DemoPerformer

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


def report_lines(report: cli_tables.Report) -> list[str]:
    """The lines a report prints as, without colors."""
    return cli_tables.report_text(report, color=False).splitlines()


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


@pytest.mark.parametrize("command", ["migrate", "worker"])
def test_an_sqlite_url_with_two_slashes_is_explained_in_one_line(
    module_dir: str, command: str
) -> None:
    url = "sqlite://tmp/x.db"
    args = ["migrate", url] if command == "migrate" else ["worker", f"{module_dir}:UnitQueue"]
    result = invoke(*args, env={"QUEUETOPIA_WORKER_REPO": url})
    assert_clean_failure(
        result, "repo:", "names a host", "sqlite:///tmp/x.db", "sqlite:////tmp/x.db"
    )
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("command", ["migrate", "worker", "queues"])
def test_a_relative_sqlite_path_is_named_in_full(
    module_dir: str, tmp_path: Path, command: str
) -> None:
    url = "sqlite:///no-such-dir/jobs.db"
    args = {
        "migrate": ["migrate", url],
        "worker": ["worker", f"{module_dir}:UnitQueue", "--repo", url],
        "queues": ["queues", "--repo", url],
    }[command]
    result = invoke(*args)
    assert_clean_failure(result, str(tmp_path / "no-such-dir" / "jobs.db"))


def test_the_worker_refuses_a_missing_sqlite_file_without_creating_it(
    module_dir: str, tmp_path: Path
) -> None:
    result = invoke("worker", f"{module_dir}:UnitQueue", "--repo", "sqlite:///missing.db")
    assert_clean_failure(
        result, f"no SQLite database at {tmp_path / 'missing.db'}", "queuetopia migrate"
    )
    assert not (tmp_path / "missing.db").exists()


def test_migrate_and_worker_read_the_common_repo_variable(module_dir: str, tmp_path: Path) -> None:
    env = {"QUEUETOPIA_REPO": "sqlite:///common.db"}
    migrated = invoke("migrate", env=env)
    assert migrated.exit_code == 0, migrated.output
    assert (tmp_path / "common.db").exists()
    # The worker finds the same database: pointed at a missing one, it names it.
    missing = invoke(
        "worker", f"{module_dir}:UnitQueue", env={"QUEUETOPIA_REPO": "sqlite:///gone.db"}
    )
    assert_clean_failure(missing, str(tmp_path / "gone.db"))
    # The command's own variable wins over the common one.
    own = invoke(
        "worker",
        f"{module_dir}:UnitQueue",
        env={"QUEUETOPIA_REPO": "sqlite:///common.db", "QUEUETOPIA_WORKER_REPO": "sqlite://"},
    )
    assert_clean_failure(own, "in-memory SQLite")


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
    assert_clean_failure(result, "database unreachable", "127.0.0.1")
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


def test_demo_performer_whose_output_is_gone_still_succeeds_and_says_so() -> None:
    def closed_pipe(line: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    performer = DemoPerformer(echo=closed_pipe, attempt_seconds=0)
    assert not performer.output_lost.is_set()
    assert performer.perform(_job(1, fail_first=0)) is None
    assert performer.output_lost.is_set()
    performer.handle_failed_job(_job(1, fail_first=2))  # does not raise either


# -- operations commands -------------------------------------------------------------------

OPS_COMMANDS = [
    ["queues"],
    ["jobs", "list"],
    ["jobs", "show", "1"],
    ["suspend", "--scope", "s"],
    ["resume", "--scope", "s"],
    ["cancel", "1"],
    ["abort", "1"],
    ["retry", "1"],
    ["cleanup", "--scope", "s"],
]


def test_help_lists_the_operations_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    commands = set(result.output.split("Commands:")[1].split())
    assert {"queues", "jobs", "suspend", "resume", "cancel", "abort", "retry", "cleanup"} <= (
        commands
    )
    jobs = invoke("jobs", "--help")
    assert jobs.exit_code == 0
    assert {"list", "show"} <= set(jobs.output.split("Commands:")[1].split())


@pytest.mark.parametrize("command", OPS_COMMANDS, ids=lambda c: "-".join(c))
def test_each_operations_command_takes_repo_prefix_and_json(command: list[str]) -> None:
    words = [word for word in command if not word.startswith("-") and word not in ("1", "s")]
    result = invoke(*words, "--help")
    assert result.exit_code == 0, result.output
    for fragment in ("--repo", "QUEUETOPIA_REPO", "--prefix", "QUEUETOPIA_PREFIX", "--json"):
        assert fragment in result.output


@pytest.mark.parametrize("command", OPS_COMMANDS, ids=lambda c: "-".join(c))
def test_each_operations_command_needs_a_repo(command: list[str]) -> None:
    result = invoke(*command)
    assert result.exit_code == 2
    assert "Missing option '--repo'" in result.output


@pytest.mark.parametrize(
    ("args", "explanation"),
    [
        (["jobs", "show", "notanumber"], "'notanumber' is not a job id (a whole number from 1)"),
        (["cancel", "1.5"], "'1.5' is not a job id"),
        (["retry", "0"], "'0' is not a job id (a whole number from 1 to 2**63-1)"),
        (["abort", str(2**64)], "is not a job id (a whole number from 1 to 2**63-1)"),
        (["jobs", "list", "--state", "bogus"], "'bogus' is not one of 'pending', 'done'"),
        (["jobs", "list", "--page", "0"], "0 is not in the range 1<=x<="),
        (["jobs", "list", "--page-size", "-1"], "-1 is not in the range 1<=x<=10000"),
        (["cleanup", "--scope", "s", "--older-than", "soon"], "'soon' is not a valid float"),
        (["cleanup"], "Missing option '--scope'"),
    ],
)
def test_bad_arguments_of_operations_commands_are_usage_errors(
    args: list[str], explanation: str, tmp_path: Path
) -> None:
    result = invoke(*args, "--repo", f"sqlite:///{tmp_path / 'jobs.db'}")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert explanation in result.output
    assert not (tmp_path / "jobs.db").exists()


def test_operations_commands_reject_text_that_is_not_a_url() -> None:
    result = invoke("queues", "--repo", "not a url")
    assert_clean_failure(result, "not a database URL")
    assert result.exit_code == 1


def test_operations_commands_report_an_unreachable_database_without_the_password() -> None:
    result = invoke("jobs", "show", "7", "--repo", "postgresql://postgres:secret@127.0.0.1:1/db")
    assert_clean_failure(result, "database unreachable", "127.0.0.1")
    assert result.exit_code == 1
    assert "secret" not in result.output


def test_operations_commands_do_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = invoke("cancel", "3", env={"QUEUETOPIA_REPO": f"sqlite:///{path}"})
    assert_clean_failure(result, f"no SQLite database at {path}", "queuetopia migrate")
    assert result.exit_code == 1
    assert not path.exists()


def test_operations_commands_check_the_table_prefix(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.touch()
    result = invoke("queues", "--repo", f"sqlite:///{path}", env={"QUEUETOPIA_PREFIX": "Bad-"})
    assert_clean_failure(result, "table_prefix", "Bad-")
    assert result.exit_code == 1


def test_error_summary_is_the_exception_line_of_a_traceback() -> None:
    try:
        raise ValueError("bad amount\nsecond line")
    except ValueError as exc:
        stored = "".join(traceback.format_exception(exc))
    assert cli_tables.error_summary(stored) == "ValueError: bad amount"
    assert cli_tables.error_summary("job_timeout\nmore") == "job_timeout"
    assert cli_tables.error_summary("x" * 100, width=10) == "xxxxxxxxx…"
    assert cli_tables.error_summary(None) == ""
    cut = "Traceback (most recent call last):\n  File 'a.py', line 1\n    boom()"
    assert cli_tables.error_summary(cut) == "boom()"


def test_json_values_are_plain_iso_datetimes_and_seconds() -> None:
    job = make_job(timeout=timedelta(seconds=30), params={"to": "a@b.c"})
    data = json.loads(cli_tables.dumps({"job": job, "delay": timedelta(minutes=2)}))
    assert data["delay"] == 120.0
    assert data["job"]["timeout"] == 30.0
    assert data["job"]["state"] == "pending"
    assert data["job"]["params"] == {"to": "a@b.c"}
    assert datetime.fromisoformat(data["job"]["inserted_at"]) == job.inserted_at


def test_jobs_page_has_a_footer_with_the_page_and_the_total() -> None:
    jobs = [make_job(id=i, queue="q", action="a", error="boom") for i in (3, 4)]
    page = Page(items=jobs, total=7, page_number=2, page_size=2)
    lines = report_lines(cli_tables.render_jobs_page(page))
    assert lines[0].split() == ["ID", "QUEUE", "ACTION", "STATE", "ATTEMPTS", "NEXT", "ATTEMPT",
                                "/", "DONE", "AT", "ERROR"]  # fmt: skip
    assert [line.split()[0] for line in lines[1:3]] == ["3", "4"]
    assert lines[-1] == "page 2 of 4 (7 jobs)"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (0.5, "0.5s"), (45, "45s"), (200, "3m20s"), (7500, "2h5m"), (604800, "7d")],
)
def test_durations_are_shown_in_their_largest_units(seconds: float, shown: str) -> None:
    assert cli_tables.fmt_duration(timedelta(seconds=seconds)) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(8.23, "(in 8s)"), (-8.6, "(9s ago)"), (0.4, "(now)"), (75.5, "(in 1m16s)")],
)
def test_instants_are_shown_with_whole_seconds_from_now(seconds: float, shown: str) -> None:
    now = datetime(2025, 5, 1, 9, 30, 21)
    text = cli_tables.fmt_relative(now + timedelta(seconds=seconds), now)
    assert text.endswith(f" {shown}"), text


def test_a_done_job_shows_no_next_attempt_failing_time_or_old_error_in_listings() -> None:
    now = datetime.now(UTC)
    done = make_job(
        id=7, done_at=now, next_attempt_at=now, failing_since=now, error="RuntimeError: once"
    )
    (row,) = report_lines(cli_tables.render_jobs([done]))[1:]
    assert row.split()[-1] == "-" and "RuntimeError" not in row
    shown = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in report_lines(cli_tables.render_job(done))
        if line.startswith("  ") and ":" in line
    }
    assert shown["next attempt at"] == "-" and shown["failing since"] == "-"
    assert "error of an earlier attempt:" in report_lines(cli_tables.render_job(done))


def test_a_job_id_that_is_not_a_number_is_explained() -> None:
    result = invoke("jobs", "show", "abc", "--repo", "sqlite:///x.db")
    assert result.exit_code == 2
    assert "'abc' is not a job id (a whole number from 1)" in result.output


def test_no_color_turns_colors_off_even_on_a_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate(url)
    queue = Queuetopia(repo=url, scope="s")
    job = queue.create_job("q", "a", {}, max_attempts=3)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a failing head: shown in red on a terminal
        conn.execute(
            sa.text("UPDATE queuetopia_jobs SET attempts = 1, error = 'boom' WHERE id = :id"),
            {"id": job.id},
        )
    engine.dispose()
    args = ["jobs", "list", "--repo", url]
    colored = CliRunner().invoke(cli, args, color=True)
    assert "\x1b[" in colored.output
    plain = CliRunner().invoke(cli, args, color=True, env={"NO_COLOR": "1"})
    assert plain.exit_code == 0 and "\x1b[" not in plain.output and "boom" in plain.output


@pytest.mark.parametrize(
    ("left", "shown"),
    [(45, "running (lock expires in 45s)"), (-3, "lock expired 3s ago (node gone?)")],
)
def test_a_running_head_shows_when_its_lock_expires(left: int, shown: str) -> None:
    now = datetime(2025, 5, 1, 9, 30, 21, tzinfo=UTC)
    head = make_job(id=5, next_attempt_at=now)
    until = now + timedelta(seconds=left)
    running = RunningAttempt("node-1", "q", head, now, until)
    queue = QueueStatus("q", 1, 0, head, Lock("q", "node-1", now, until, 5), None, running)
    assert cli_tables._next_attempt(queue, now) == shown


def test_a_table_fits_the_width_given_by_shortening_its_free_text_columns() -> None:
    headers = ("ID", "QUEUE", "NEXT ATTEMPT", "LAST ERROR", "LOCKED BY")
    rows = [["1", "payments", "2025-05-01 09:30:29 (in 8s)", "E" * 60, "web-1:4242:" + "f" * 30]]
    shrink = ("LAST ERROR", "LOCKED BY")
    wide = report_lines([cli_tables.render_table(headers, rows, shrink=shrink)])
    assert len(wide[1]) > 80 and "…" not in wide[1]
    fitted = report_lines([cli_tables.render_table(headers, rows, width=80, shrink=shrink)])
    assert all(len(line) <= 80 for line in fitted), fitted
    assert fitted[1].startswith("1   payments  2025-05-01 09:30:29 (in 8s)  EEEE")
    assert fitted[1].count("…") == 2
    # Too narrow: the other columns stay whole, the free text keeps 12 characters.
    narrow = report_lines([cli_tables.render_table(headers, rows, width=20, shrink=shrink)])
    assert narrow[1].split()[-2:] == ["EEEEEEEEEEE…", "web-1:4242:…"]


def test_a_table_too_wide_for_the_terminal_leaves_out_columns_in_the_order_given() -> None:
    headers = ("QUEUE", "NEXT ATTEMPT", "LAST ERROR", "LOCKED BY", "UNTIL")
    rows = [["payments", "2025-05-01 09:30:29 (in 8s)", "E" * 60, "web-1", "2025-05-01 09:31:02"]]
    table = cli_tables.render_table(
        headers, rows, width=60, shrink=("LAST ERROR",), drop=("UNTIL", "LOCKED BY")
    )
    plain = report_lines([table])
    assert plain[0].split() == ["QUEUE", "NEXT", "ATTEMPT", "LAST", "ERROR"]
    assert all(len(line) <= 60 for line in plain), plain
    assert plain[1].startswith("payments  2025-05-01 09:30:29 (in 8s)  EEE")


def test_wide_characters_count_as_the_cells_they_take_on_the_terminal() -> None:
    rows = [["メール送信キュー", "E" * 60], ["mails", "Short"]]
    table = cli_tables.render_table(("QUEUE", "ERROR"), rows, width=40, shrink=("ERROR",))
    plain = report_lines([table])
    assert all(cell_len(line) <= 40 for line in plain), plain
    # The columns line up on the screen: the error starts at the same cell on each row.
    starts = [
        cell_len(line[: line.index(error)]) for line, error in zip(plain[1:], "ES", strict=True)
    ]
    assert starts == [18, 18]


def test_table_cells_stay_on_one_line_and_print_as_they_are() -> None:
    table = cli_tables.render_table(("A", "B"), [["x\ny", "tab\there [red]not markup[/]"]])
    lines = report_lines([table])
    assert len(lines) == 2
    assert lines[1] == "x y  tab here [red]not markup[/]"


def test_the_version_is_the_installed_distributions() -> None:
    assert queuetopia_py.__version__ == importlib.metadata.version("queuetopia_py")
    for flag in ("--version", "-V"):
        result = invoke(flag)
        assert result.exit_code == 0, result.output
        assert result.output == f"queuetopia, version {queuetopia_py.__version__}\n"


def test_python_dash_m_runs_the_command_line() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "queuetopia_py", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert version.stdout == f"queuetopia, version {queuetopia_py.__version__}\n"
    usage = subprocess.run(
        [sys.executable, "-m", "queuetopia_py", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.returncode == 2
    assert "No such command 'no-such-command'" in usage.stderr


def test_the_jobs_group_says_it_creates_jobs_too() -> None:
    result = invoke("jobs", "--help")
    assert result.exit_code == 0
    assert "List, show or create jobs." in result.output
    assert "create" in result.output.split("Commands:")[1]
