"""The default scope names the class the same way however its module was loaded: a
program run as a script and a worker importing it see the same jobs."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from queuetopia_py import Job, Performer, Queuetopia, migrate

APP = """
import sys
from queuetopia_py import Performer, Queuetopia

class Done(Performer):
    def perform(self, job):
        return "ran"

class MailQueue(Queuetopia, repo="sqlite:///jobs.db", performer=Done):
    pass

if __name__ == "__main__":
    print(MailQueue().scope)
"""


def scope_printed(cwd: Path, *args: str) -> str:
    finished = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.strip()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "app.py").write_text(APP)
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def test_a_class_of_a_script_has_the_scope_a_worker_importing_the_script_gives_it(
    app: Path,
) -> None:
    assert scope_printed(app, "app.py") == "app.MailQueue"
    imported = "import app; print(app.MailQueue().scope)"
    assert scope_printed(app, "-c", imported) == "app.MailQueue"


def test_a_module_run_with_dash_m_keeps_its_dotted_name(app: Path) -> None:
    assert scope_printed(app, "-m", "pkg.app") == "pkg.app.MailQueue"
    imported = "import pkg.app; print(pkg.app.MailQueue().scope)"
    assert scope_printed(app, "-c", imported) == "pkg.app.MailQueue"


def test_the_job_a_script_creates_is_run_by_the_worker_of_its_class(app: Path) -> None:
    (app / "create.py").write_text(
        APP
        + "    from queuetopia_py import migrate\n"
        + "    migrate('sqlite:///jobs.db')\n"
        + "    print(MailQueue().create_job('q', 'a', {}).id)\n"
    )
    job_id = scope_printed(app, "create.py").splitlines()[-1]
    # As `queuetopia worker create:MailQueue` would: the module imported by its name.
    worker = (
        "import create\n"
        "q = create.MailQueue(poll_interval=60)\n"
        "q.start()\n"
        f"print(q.wait_for({job_id}, timeout=30))\n"
        "q.stop()\n"
    )
    assert scope_printed(app, "-c", worker) == "ran"


class Nothing(Performer):
    def perform(self, job: Job) -> object:
        return None


def started_logs(url: str, scope: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    node = Queuetopia(repo=url, scope=scope, performer=Nothing(), poll_interval=60)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="queuetopia_py"):
        node.start()
    node.stop()
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_node_whose_scope_has_no_jobs_while_others_do_says_which_scopes_have(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate(url)
    assert started_logs(url, "app.MailQueue", caplog) == []  # an empty table: nothing to say
    creator = Queuetopia(repo=url, scope="__main__.MailQueue")
    creator.create_job("q", "a", {})
    (warning,) = started_logs(url, "app.MailQueue", caplog)
    assert "'app.MailQueue' has no jobs" in warning and "'__main__.MailQueue'" in warning
    assert "scope=" in warning
    # Once its own scope has jobs, a node says nothing.
    Queuetopia(repo=url, scope="app.MailQueue").create_job("q", "a", {})
    assert started_logs(url, "app.MailQueue", caplog) == []


def test_the_documented_statements_move_a_scopes_jobs(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "migrations.md").read_text()
    section = text[text.index("## Moving jobs to another scope") :]
    (statements,) = re.findall(r"```sql\n(.*?)```", section, re.S)[:1]
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate(url)
    old = Queuetopia(repo=url, scope="__main__.MailQueue")
    jobs = [old.create_job("q", "a", {"n": n}) for n in range(3)]
    old.suspend("q")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements.split(";"):
            if statement.strip():
                conn.execute(sa.text(statement))
    engine.dispose()
    assert old.list_jobs() == []
    new = Queuetopia(repo=url, scope="app.MailQueue", performer=Nothing(), poll_interval=60)
    assert [j.id for j in new.list_jobs()] == [j.id for j in jobs]
    assert [s.queue for s in new.suspensions()] == ["q"]
    new.resume("q")
    new.start()
    try:
        for job in jobs:
            new.wait_for(job.id, timeout=30)
    finally:
        new.stop()
    assert new.status().queue_count == 0
