"""A worker node for the system tests: one Queuetopia scheduler in its own process.

    python tests/system/node.py --repo URL --scope SCOPE --log HISTORY [--executor process]

Starts the scheduler, appends a "ready" line to the history, runs until SIGTERM or SIGINT
(or until the `--exit-with` parent is gone), then stops gracefully (running attempts
finish and are recorded), appends a "stopped" line and exits 0.

The performer appends "start" and "end" lines to the history around each attempt (see
history.py). Job params drive it: `seq` (position in its queue, for the record), `work`
(seconds to sleep, default `--work`), `block_first` (seconds to sleep instead on the job's
first attempt, to be killed meanwhile).

With `--row-source`, the node runs `RowQueue` instead: the same scope fed by the rows of
`photos` (see row_app.py), one queue per album. With `--beat`, it also fires the schedule
`BEAT` (a job every 0.5 s in the queue "beats").
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

import sqlalchemy as sa
from history import append_event

from queuetopia_py import Job, Performer, Queuetopia, RowSource, Schedule

# Read by the performer, in this process or in the worker processes it spawns (which
# inherit the environment).
LOG_ENV = "QUEUETOPIA_SYSTEM_HISTORY"
NODE_ENV = "QUEUETOPIA_SYSTEM_NODE_PID"
WORK_ENV = "QUEUETOPIA_SYSTEM_WORK"


class HistoryPerformer(Performer):
    """Sleeps as the params say, writing the attempt to the history."""

    def perform(self, job: Job) -> object:
        path = os.environ[LOG_ENV]
        line = {
            "queue": job.queue,
            "job": job.id,
            "seq": job.params.get("seq"),
            "attempt": job.attempts,
            "pid": os.getpid(),
            "node": int(os.environ[NODE_ENV]),
        }
        append_event(path, "start", **line)
        block = job.params.get("block_first")
        work = job.params.get("work", float(os.environ.get(WORK_ENV, "0")))
        time.sleep(block if block and job.attempts == 1 else work)
        append_event(path, "end", **line, ok=True)
        return None


class SystemQueue(Queuetopia, performer=HistoryPerformer):
    """The scope the system tests run; repo, scope and the rest come from the arguments."""


#: The application's table of the row-sourced system test: each row is a job in the
#: queue of its album.
PHOTOS = sa.Table(
    "photos",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("album_id", sa.Integer, nullable=False),
)


#: The schedule of `--beat`.
BEAT = Schedule("beat", every=0.5, queue="beats", action="beat")


class RowQueue(SystemQueue, source=RowSource(PHOTOS, key="album_id"), timeout=2):
    """`SystemQueue` fed by the rows of `PHOTOS` (its jobs time out after 2 s, so that a
    killed node's locks expire 3 s after they were taken)."""


def setup_node_process(log: str) -> threading.Event:
    """Log warnings to stderr, tell the performer where the history is, and return an
    event set by SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s node {os.getpid()} %(levelname)s %(name)s: %(message)s",
    )
    os.environ[LOG_ENV] = log
    os.environ[NODE_ENV] = str(os.getpid())
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--scope", required=True)
    parser.add_argument("--log", required=True, help="the history file")
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument("--max-concurrency", type=int, default=10)
    parser.add_argument("--executor", choices=("thread", "process"), default="thread")
    parser.add_argument("--work", type=float, default=0.0, help="seconds a job works")
    parser.add_argument("--row-source", action="store_true", help="run RowQueue")
    parser.add_argument("--beat", action="store_true", help="fire the schedule BEAT")
    parser.add_argument("--stop-timeout", type=float, default=60.0)
    parser.add_argument(
        "--exit-with", type=int, default=None, help="stop when this parent process is gone"
    )
    args = parser.parse_args(argv)

    stopping = setup_node_process(args.log)
    os.environ[WORK_ENV] = str(args.work)

    queue = (RowQueue if args.row_source else SystemQueue)(
        repo=args.repo,
        scope=args.scope,
        poll_interval=args.poll_interval,
        max_concurrency=args.max_concurrency,
        executor=args.executor,
        schedules=[BEAT] if args.beat else [],
    )
    queue.start()
    append_event(args.log, "ready", pid=os.getpid(), node=queue.node)
    while not stopping.wait(0.2):
        if args.exit_with is not None and os.getppid() != args.exit_with:
            break  # the test run died: do not linger
    finished = queue.stop(timeout=args.stop_timeout)
    append_event(args.log, "stopped", pid=os.getpid(), node=queue.node, finished=finished)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
