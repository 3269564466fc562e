"""What a new user sees on stderr: the library's log lines name the job, and third-party
libraries stay quiet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, sys, threading
from queuetopia_py import Performer, Queuetopia, migrate

if sys.argv[1] == "info":
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

failed = threading.Event()

class Failing(Performer):
    def perform(self, job):
        raise ValueError("no such mailbox\\nsecond line of the message")

    def handle_failed_job(self, job):
        failed.set()

url = "sqlite:///jobs.db"
migrate(url)
queue = Queuetopia(repo=url, performer=Failing(), scope="mail", poll_interval=60)
job = queue.create_job("mails_queue_1", "send_mail", {}, max_attempts=1)
print(job.id)
queue.start()
assert failed.wait(30)
queue.stop()
"""


def run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(SCRIPT)
    finished = subprocess.run(
        [sys.executable, "app.py", mode], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    return finished


def test_without_logging_set_up_a_failure_names_scope_queue_job_attempt_and_error(
    tmp_path: Path,
) -> None:
    finished = run(tmp_path, "plain")
    job_id = finished.stdout.strip()
    lines = finished.stderr.splitlines()
    failure = next(line for line in lines if line.startswith("attempt failed"))
    for fragment in (
        f"job {job_id}",
        "send_mail",
        "queue mails_queue_1",
        "scope mail",
        "attempt 1/1",
        "ValueError: no such mailbox",
    ):
        assert fragment in failure, failure
    given_up = next(line for line in lines if line.startswith("job given up"))
    assert f"job {job_id}" in given_up and "ValueError: no such mailbox" in given_up
    assert "second line" not in finished.stderr
    assert "Traceback" not in finished.stderr


def test_with_info_logging_third_party_libraries_stay_quiet(tmp_path: Path) -> None:
    finished = run(tmp_path, "info")
    names = {line.split(" ", 1)[0] for line in finished.stderr.splitlines() if line.strip()}
    assert names, finished.stderr
    assert all(name.startswith("queuetopia_py") for name in names), finished.stderr
