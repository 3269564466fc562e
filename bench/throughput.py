"""Throughput of queuetopia_py alone on each database (the peers side by side:
compare.py, and docs/performance.md).

    python bench/throughput.py [--backends sqlite,postgresql,mariadb] [--runs 3]

For each shape (queues x jobs per queue) it enqueues the jobs, starts one node with a
no-op performer and times until every job is done; it also times single enqueues.
Prints the median of the runs. Each run uses a fresh database.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchdb import fresh_database

from queuetopia_py import Job, Performer, Queuetopia, migrate

SHAPES = [(1, 200), (100, 30), (1000, 3)]


class Counter(Performer):
    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def perform(self, job: Job) -> object:
        with self.lock:
            self.count += 1
            if self.count == self.total:
                self.done.set()
        return None


def run_shape(url: str, queues: int, per_queue: int, concurrency: int) -> float:
    total = queues * per_queue
    counter = Counter(total)
    node = Queuetopia(repo=url, performer=counter, max_concurrency=concurrency)
    for i in range(per_queue):
        for q in range(queues):
            node.create_job(f"q{q}", "noop", {"i": i})
    started = time.perf_counter()
    node.start()
    if not counter.done.wait(600):
        raise RuntimeError("jobs not done within 600 s")
    elapsed = time.perf_counter() - started
    node.stop()
    return total / elapsed


def run_enqueue(url: str, count: int = 500) -> float:
    node = Queuetopia(repo=url)
    started = time.perf_counter()
    for i in range(count):
        node.create_job("q", "noop", {"i": i})
    elapsed = time.perf_counter() - started
    node.stop()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, max_concurrency={args.concurrency}, "
        f"median of {args.runs} runs, jobs/s"
    )
    print(f"{'backend':<11}" + "".join(f"{f'{q}x{n}':>12}" for q, n in SHAPES) + f"{'enqueue':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            cells = []
            for shape in [*SHAPES, None]:
                rates = []
                for _ in range(args.runs):
                    with fresh_database(backend, Path(tmp)) as url:
                        migrate(url)
                        rates.append(
                            run_enqueue(url)
                            if shape is None
                            else run_shape(url, *shape, args.concurrency)
                        )
                cells.append(statistics.median(rates))
            print(f"{backend:<11}" + "".join(f"{c:>12.0f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
