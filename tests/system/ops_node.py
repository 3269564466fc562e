"""Worker nodes and operator commands for the system tests of the operations API.

    python tests/system/ops_node.py serve --repo URL --scope S [--scope S2] --log HISTORY
    python tests/system/ops_node.py op --repo URL --scope S suspend|resume|status [--queue Q]

`serve` runs one Queuetopia scheduler per `--scope` in this process (all under the same
node name, `--node-name` or the default `host:pid:random`), appends a "ready" line to the
history (with `nodes`: scope -> node name), and stops gracefully on SIGTERM/SIGINT or when
the `--exit-with` parent is gone.

`op` is an operator in a process of its own: it builds a `Queuetopia(repo=..., scope=...)`
without a performer, runs one action and prints its result as JSON on stdout.

The performer appends "start" and "end" lines to the history around each attempt (see
history.py; lines also carry `scope` and `node_name`). Job params drive it, unless
`in_queue` names another queue than the job's (a copy moved to a dead-letter queue then
simply succeeds):
- `progress`: [message, fraction], reported with `report_progress` first;
- `wait_file`: a path; the attempt blocks until that file exists;
- `work`: seconds to sleep;
- `fail`: "always", or N: the attempt fails while `job.attempts <= N`;
- `result`: the JSON value `perform` returns;
- `backoff`: seconds until the next attempt after a failure (`Performer.backoff`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from history import append_event
from node import LOG_ENV, NODE_ENV, setup_node_process

from queuetopia_py import Job, JobSummary, Performer, Queuetopia, report_progress

NODE_NAME_ENV = "QUEUETOPIA_SYSTEM_NODE_NAME"
# How long an attempt waits for its `wait_file` at most (then it goes on).
WAIT_LIMIT = 120.0


class OpsPerformer(Performer):
    """Blocks, reports progress, fails or returns a result as the params say."""

    def perform(self, job: Job) -> object:
        path = os.environ[LOG_ENV]
        line = {
            "scope": job.scope,
            "queue": job.queue,
            "job": job.id,
            "seq": job.params.get("seq", 0),
            "attempt": job.attempts,
            "pid": os.getpid(),
            "node": int(os.environ[NODE_ENV]),
            "node_name": os.environ.get(NODE_NAME_ENV),
        }
        append_event(path, "start", **line)
        params = job.params if job.params.get("in_queue", job.queue) == job.queue else {}
        if "progress" in params:
            message, fraction = params["progress"]
            reported = report_progress(message, fraction)
            append_event(path, "progress", **line, reported=reported)
        wait_file = params.get("wait_file")
        if wait_file:
            deadline = time.monotonic() + WAIT_LIMIT
            while not Path(wait_file).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(params.get("work", 0.0))
        fail = params.get("fail")
        if fail == "always" or (isinstance(fail, int) and job.attempts <= fail):
            error = f"boom: job {job.id} attempt {job.attempts}"
            append_event(path, "end", **line, ok=False, error=error)
            raise RuntimeError(error)
        append_event(path, "end", **line, ok=True)
        return params.get("result")

    def backoff(self, job: Job) -> timedelta:
        seconds = job.params.get("backoff")
        return super().backoff(job) if seconds is None else timedelta(seconds=seconds)


def serve(args: argparse.Namespace) -> int:
    stopping = setup_node_process(args.log)

    extra = {} if args.node_name is None else {"node": args.node_name}
    instances = [
        Queuetopia(
            repo=args.repo,
            scope=scope,
            performer=OpsPerformer,
            poll_interval=args.poll_interval,
            max_concurrency=args.max_concurrency,
            executor=args.executor,
            **extra,
        )
        for scope in args.scope
    ]
    # Every instance has the same node name (when given); worker processes inherit it.
    os.environ[NODE_NAME_ENV] = instances[0].node
    for instance in instances:
        instance.start()
    nodes = {instance.scope: instance.node for instance in instances}
    append_event(args.log, "ready", pid=os.getpid(), nodes=nodes)
    while not stopping.wait(0.2):
        if args.exit_with is not None and os.getppid() != args.exit_with:
            break  # the test run died: do not linger
    finished = all([instance.stop(timeout=30) for instance in instances])
    append_event(args.log, "stopped", pid=os.getpid(), finished=finished)
    return 0 if finished else 1


def to_json(value: Any) -> Any:
    """A JSON form of the operations API's values (dataclasses, instants, durations)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, JobSummary):
            data["state"] = value.state
        return data
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def operate(args: argparse.Namespace) -> int:
    queue = Queuetopia(repo=args.repo, scope=args.scope)
    try:
        result: Any
        if args.action == "suspend":
            result = to_json(queue.suspend(args.queue, by=args.by, reason=args.reason))
        elif args.action == "resume":
            result = queue.resume(args.queue, by=args.by, reason=args.reason)
        else:  # status: with the queues' derived properties, which are not fields
            status = queue.status()
            result = to_json(status)
            for shown, value in zip(result["queues"], status.queues, strict=True):
                shown["blocked"] = value.blocked
        print(json.dumps(result))
    finally:
        queue.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    node = commands.add_parser("serve", help="run a worker node")
    node.add_argument("--repo", required=True)
    node.add_argument("--scope", required=True, action="append", help="repeat for more scopes")
    node.add_argument("--log", required=True, help="the history file")
    node.add_argument("--node-name", default=None)
    node.add_argument("--poll-interval", type=float, default=0.1)
    node.add_argument("--max-concurrency", type=int, default=10)
    node.add_argument("--executor", choices=("thread", "process"), default="thread")
    node.add_argument("--exit-with", type=int, default=None, help="stop when this parent is gone")

    op = commands.add_parser("op", help="one operator action, printed as JSON")
    op.add_argument("--repo", required=True)
    op.add_argument("--scope", required=True)
    op.add_argument("action", choices=("suspend", "resume", "status"))
    op.add_argument("--queue", default=None)
    op.add_argument("--by", default=None)
    op.add_argument("--reason", default=None)

    args = parser.parse_args(argv)
    return serve(args) if args.command == "serve" else operate(args)


if __name__ == "__main__":
    sys.exit(main())
