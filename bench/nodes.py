"""Nodes: total throughput as worker processes are added on one database.

    python bench/nodes.py [--backends postgresql,mariadb] [--nodes 1,2,4] [--queues 1000]
                          [--per-queue 3] [--runs 1] [--timeout 600] [--json OUT]

For each backend and node count, on a fresh database (bench/benchdb.py): `--queues` x
`--per-queue` no-op jobs are enqueued (job 0 of every queue, then job 1, ...), then that
many node processes start (default options, one `Queuetopia` each, this script run with
`--node URL`); once every node is ready, they are told to go at once, and the run is
timed from then until no job is pending (read from this process every 20 ms). Printed:
jobs/s for each node count, and its ratio to one node.

The nodes are real processes sharing the machine with the database server: on a
2-core machine the curve bends early, and where it bends is what this measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchdb import fresh_database
from ours import SCOPE, enqueue_interleaved

from queuetopia_py import Job, Performer, Queuetopia, migrate


class Nothing(Performer):
    def perform(self, job: Job) -> object:
        return None


def run_node(url: str, go: Path) -> None:
    """A node: ready, then (once `go` exists) running until it is killed."""
    node = Queuetopia(repo=url, scope=SCOPE, performer=Nothing())
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    node.start()
    while True:
        time.sleep(3600)


def one_run(url: str, nodes: int, args: argparse.Namespace, tmp: Path) -> float:
    """Jobs/s of `nodes` node processes running the enqueued jobs on `url`."""
    total = args.queues * args.per_queue
    enqueue_interleaved(url, args.queues, args.per_queue, 5_000)
    go = tmp / f"go-{time.monotonic_ns()}"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--node", url, "--go", str(go)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(nodes)
    ]
    watcher = Queuetopia(repo=url, scope=SCOPE)
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        started = time.perf_counter()
        deadline = started + args.timeout
        while watcher.list_jobs(available=True, limit=1):
            if time.perf_counter() > deadline:
                raise SystemExit(f"{nodes} nodes: not done within {args.timeout} s")
            time.sleep(0.02)
        return total / (time.perf_counter() - started)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        watcher.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="postgresql,mariadb")
    parser.add_argument("--nodes", default="1,2,4", help="node counts, comma separated")
    parser.add_argument("--queues", type=int, default=1_000)
    parser.add_argument("--per-queue", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1, help="runs of each count (median)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--node", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--go", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node is not None:
        run_node(args.node, args.go)
        return 0
    counts = [int(n) for n in args.nodes.split(",")]
    print(
        f"python {sys.version.split()[0]}; {args.queues}x{args.per_queue} no-op jobs; "
        f"median of {args.runs} runs; jobs/s (ratio to one node)"
    )
    print(f"{'backend':<11}" + "".join(f"{f'{n} nodes':>18}" for n in counts))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            rates: dict[int, float] = {}
            for n in counts:
                runs = []
                for _ in range(args.runs):
                    with fresh_database(backend, Path(tmp)) as url:
                        migrate(url)
                        runs.append(one_run(url, n, args, Path(tmp)))
                rates[n] = statistics.median(runs)
            base = rates[counts[0]]
            print(
                f"{backend:<11}"
                + "".join(f"{f'{rates[n]:,.0f} ({rates[n] / base:.2f})':>18}" for n in counts),
                flush=True,
            )
            results.append({"backend": backend, "jobs_per_second": rates})
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
