"""`queuetopia demo`: three queues on an embedded SQLite database, one blocked by a
failing head job, printed live one line per attempt.

    $ queuetopia demo
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from queuetopia_py._job import Job, error_line
from queuetopia_py._performer import Performer
from queuetopia_py._queuetopia import Queuetopia
from queuetopia_py.migrations import migrate

#: How long one demo attempt takes.
ATTEMPT_SECONDS = 0.25
#: The retry delay cap of the failing job, so its retries come quickly.
MAX_BACKOFF = timedelta(seconds=0.5)
#: How many times the failing head job fails before it succeeds.
FAILURES = 3
#: The demo gives up (and exits non-zero) if its jobs are not done by then.
DEADLINE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class DemoJob:
    """One job the demo enqueues."""

    queue: str
    action: str
    fail_first: int = 0


#: What the demo enqueues, in this order. The head of "payments" fails first, blocking
#: the two payments behind it while "emails" and "reports" flow.
JOBS = (
    DemoJob("payments", "charge_card", fail_first=FAILURES),
    DemoJob("payments", "charge_card"),
    DemoJob("payments", "send_receipt"),
    *(DemoJob("emails", "send_mail") for _ in range(5)),
    *(DemoJob("reports", "build_report") for _ in range(3)),
)


class Output:
    """Where the demo prints: `echo`, until writing fails (a reader that went away, as in
    `queuetopia demo | head -2`). A failed write never fails an attempt: the demo stops
    printing and `lost` is set, which ends the run."""

    def __init__(self, echo: Callable[[str], None] = click.echo) -> None:
        self._echo = echo
        self.lost = threading.Event()

    def __call__(self, line: str) -> None:
        if self.lost.is_set():
            return
        try:
            self._echo(line)
        except OSError:
            self.lost.set()


class DemoPerformer(Performer):
    """Sleeps a little, fails the first `params["fail_first"]` attempts of a job, and
    prints one line per attempt: elapsed seconds, queue, job, attempt, outcome.

    >>> DemoPerformer(started=datetime.now(UTC)).perform(job)
    """

    def __init__(
        self,
        started: datetime | None = None,
        echo: Callable[[str], None] = click.echo,
        attempt_seconds: float = ATTEMPT_SECONDS,
    ) -> None:
        self.started = started or datetime.now(UTC)
        self.attempt_seconds = attempt_seconds
        self._echo = echo if isinstance(echo, Output) else Output(echo)
        #: Set once printing failed: the demo's reader went away.
        self.output_lost = self._echo.lost
        self._lock = threading.Lock()

    def perform(self, job: Job) -> object:
        """Succeed, unless this is one of the job's first `fail_first` attempts."""
        time.sleep(self.attempt_seconds)
        fail_first = int(job.params.get("fail_first", 0))
        if job.attempts <= fail_first:
            raise RuntimeError(f"card declined, simulated failure {job.attempts}/{fail_first}")
        self._print(job, click.style("ok", fg="green"))
        return None

    def handle_failed_job(self, job: Job) -> None:
        """Print the failed attempt and when it is retried."""
        if job.next_attempt_at is None:
            then = job.state.replace("_", " ")
        else:
            then = f"retry at {self._elapsed(job.next_attempt_at):5.2f}s"
        outcome = click.style(f"failed: {error_line(job.error)}; {then}", fg="red")
        self._print(job, outcome)

    def _elapsed(self, instant: datetime) -> float:
        return (instant - self.started).total_seconds()

    def _print(self, job: Job, outcome: str) -> None:
        now = self._elapsed(datetime.now(UTC))
        line = f"{now:6.2f}s  {job.queue:<9} job {job.id:>2} ({job.action:<12}) "
        line += f"attempt {job.attempts}  {outcome}"
        with self._lock:
            self._echo(line)


def run_demo(path: str | Path | None = None, echo: Callable[[str], None] = click.echo) -> bool:
    """Run the demo on the SQLite file `path` (default: a temporary one); True when every
    job is done within `DEADLINE_SECONDS` and printed (a run whose output could not be
    written stops early)."""
    output = Output(echo)
    if path is not None:
        return _run(Path(path), output)
    with tempfile.TemporaryDirectory(prefix="queuetopia-demo-") as directory:
        return _run(Path(directory) / "demo.db", output)


def _run(path: Path, echo: Output) -> bool:
    url = f"sqlite:///{path}"
    version = migrate(url)
    echo(f"database: {path} (schema version {version})")
    started = datetime.now(UTC)
    clock = time.monotonic()
    # A scope of its own, so a reused --path file never mixes two runs' jobs.
    queue = Queuetopia(
        repo=url,
        performer=DemoPerformer(started, echo),
        scope=f"queuetopia-demo-{uuid.uuid4().hex[:8]}",
        poll_interval=1.0,
    )
    ids = [
        queue.create_job(
            spec.queue, spec.action, {"fail_first": spec.fail_first}, max_backoff=MAX_BACKOFF
        ).id
        for spec in JOBS
    ]
    queues = sorted({spec.queue for spec in JOBS})
    echo(f"enqueued {len(ids)} jobs in queues {', '.join(queues)}; the head of payments")
    echo(f"fails {FAILURES} times: payments waits for it while the other queues flow.\n")
    try:
        queue.start()
        while (
            queue.list_jobs(available=True)
            and time.monotonic() - clock < DEADLINE_SECONDS
            and not echo.lost.is_set()
        ):
            time.sleep(0.05)
    finally:
        queue.stop(timeout=10)
    jobs = queue.list_jobs()
    queue.engine.dispose()
    elapsed = time.monotonic() - clock
    done = [j for j in jobs if j.done]
    echo("")
    for name in queues:
        mine = [j for j in jobs if j.queue == name]
        attempts = sum(j.attempts for j in mine)
        finished = sum(1 for j in mine if j.done)
        retries = attempts - len(mine)
        echo(
            f"{name:<9} {finished}/{len(mine)} jobs done in {attempts} attempts ({retries} retries)"
        )
    if len(done) == len(ids):
        echo(f"all {len(ids)} jobs done in {elapsed:.1f}s")
        return not echo.lost.is_set()
    echo(f"only {len(done)} of {len(ids)} jobs done after {elapsed:.1f}s")
    return False
