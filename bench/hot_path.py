"""The scheduler's statements alone, without threads: enqueue, claim + record, poll.

    python bench/hot_path.py [--backends sqlite,postgresql,mariadb] [--jobs 400] [--rounds 3]

To compare two trees of queuetopia_py side by side, run it alternately with each on
PYTHONPATH (e.g. a `git worktree` of the older commit):

    for i in 1 2 3; do PYTHONPATH=/tmp/old python bench/hot_path.py; python bench/hot_path.py; done

Both trees need the store of schema version 3 (`ClaimStore.records`, `poll(limit)`):
for an older one, run this script as it was in that tree.

Each round uses a fresh database: it creates `--jobs` jobs in one queue, claims and
records them one by one (`ClaimStore.claim`, then `.records.record_success`), polls 100
times (`ClaimStore.poll(10)`), then creates ten times `--jobs` jobs with one `create_jobs`
call. Prints operations per second (the best of `--rounds`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchdb import fresh_database

import queuetopia_py
from queuetopia_py import Queuetopia, migrate
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Claim


def one_round(backend: str, jobs: int) -> tuple[float, float, float, float]:
    """Enqueues/s (one by one, then in bulk), claims+records/s and polls/s on a fresh
    database."""
    with tempfile.TemporaryDirectory() as tmp, fresh_database(backend, Path(tmp)) as url:
        migrate(url)
        queue = Queuetopia(repo=url, scope="bench")
        try:
            started = time.perf_counter()
            for i in range(jobs):
                queue.create_job("q", "a", {"i": i})
            enqueued = time.perf_counter()
            claims = ClaimStore(queue._db, "bench", "bench-node")
            recorded = 0
            while isinstance(claim := claims.claim("q"), Claim):
                claims.records.record_success(claim)
                recorded += 1
            claimed = time.perf_counter()
            for _ in range(100):
                claims.poll(10)
            polled = time.perf_counter()
            bulk_jobs = [
                {"queue": "bulk", "action": "a", "params": {"i": i}} for i in range(jobs * 10)
            ]
            queue.create_jobs(bulk_jobs)
            bulked = time.perf_counter()
        finally:
            queue.stop()
    assert recorded == jobs, f"recorded {recorded} of {jobs}"
    return (
        jobs / (enqueued - started),
        recorded / (claimed - enqueued),
        100 / (polled - claimed),
        len(bulk_jobs) / (bulked - polled),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"queuetopia_py from {Path(queuetopia_py.__file__).parent}; best of {args.rounds}")
    print(
        f"{'backend':<12}{'enqueue/s':>12}{'claim+record/s':>16}{'poll/s':>10}{'create_jobs/s':>15}"
    )
    for backend in args.backends.split(","):
        rounds = [one_round(backend, args.jobs) for _ in range(args.rounds)]
        best = [max(r[i] for r in rounds) for i in range(4)]
        print(f"{backend:<12}{best[0]:>12.0f}{best[1]:>16.0f}{best[2]:>10.0f}{best[3]:>15.0f}")


if __name__ == "__main__":
    main()
