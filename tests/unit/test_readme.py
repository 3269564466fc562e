"""The README's Quickstart, run as written: the program prints its job's result, and the
worker command runs the jobs another process creates."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_blocks() -> tuple[str, str, str]:
    """The Quickstart's program, the output it shows, and its producer snippet."""
    text = README.read_text()
    section = text[text.index("## Quickstart") :]
    section = section[: section.index("\n## ", 1)]
    program, producer = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    (shown,) = re.findall(r"```text\n(.*?)```", section, re.S)[:1]
    return program, shown, producer


@pytest.fixture
def project(tmp_path: Path) -> Path:
    program, _, producer = quickstart_blocks()
    (tmp_path / "quickstart.py").write_text(program)
    (tmp_path / "producer.py").write_text(producer)
    return tmp_path


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=project, capture_output=True, text=True, timeout=120
    )


def test_the_quickstart_prints_its_jobs_result_as_the_readme_shows(project: Path) -> None:
    _, shown, _ = quickstart_blocks()
    finished = run(project, "quickstart.py")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == shown
    assert finished.stderr == ""


def test_the_worker_command_runs_the_jobs_another_process_created(project: Path) -> None:
    assert run(project, "quickstart.py").returncode == 0  # the tables, and one job done
    produced = run(project, "producer.py")
    assert produced.returncode == 0, produced.stderr
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "queuetopia_py", "worker", "quickstart:MailQueue"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            assert worker.stdout is not None
            # The producer's job was pending when the worker started: its first poll runs it.
            assert worker.stdout.readline() == "sending the mail to titi@mail.com\n"
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
        finally:
            worker.kill()
