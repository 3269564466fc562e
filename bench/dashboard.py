"""The dashboard's cost on a scope of many queues: its pages beside `status()`.

    python bench/dashboard.py [--backends sqlite,postgresql,mariadb] [--queues 100000]
                              [--calls 10]

For each backend, a fresh database holds one scope with 20 blocked queues (their head
failed once, retried in an hour) and `--queues` waiting queues of one due job each,
gathered statistics (ANALYZE), then times, interleaved and after a warm-up, through the
app in this process (Starlette's test client: no network):

- status(50): `Queuetopia.status(50)`, the library's own first page (the yardstick);
- /queues: the queues page (blocked first, counts per section, the hour's chart, the
  live fingerprint);
- /queues deep: the page after the queue in the middle of the waiting ones (a cursor);
- /queues?name=: a filter whose matches are few (a scan of the names, stopped at a page);
- /queue: one queue's page; /jobs/ID: one job's page;
- fingerprint: what each live scope's watcher reads every poll interval.

Prints the median and p95 of each, and each median's ratio to status(50)'s.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from benchdb import fresh_databases

from queuetopia_py import Job, Performer, Queuetopia
from queuetopia_py._store.board import Cursor, Section
from queuetopia_py.testing import drain
from queuetopia_py.web import create_app
from queuetopia_py.web._pages import encode_cursor

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SCOPE = "bench"


class Failing(Performer):
    def perform(self, job: Job) -> None:
        raise RuntimeError("SMTP 421: not answering")

    def backoff(self, job: Job) -> timedelta:
        return timedelta(hours=1)


def load(url: str, queues: int) -> Queuetopia:
    node = Queuetopia(repo=url, scope=SCOPE, performer=Failing())
    for i in range(20):
        node.create_job(f"blocked_{i:02}", "send", {"i": i})
    drain(node)
    batch = 5_000
    for start in range(0, queues, batch):
        node.create_jobs(
            [
                {"queue": f"q{i:06}", "action": "send", "params": {"i": i}}
                for i in range(start, min(start + batch, queues))
            ]
        )
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name in ("mysql", "mariadb"):
            for table in ("queuetopia_jobs", "queuetopia_queues"):
                conn.execute(sa.text(f"ANALYZE TABLE {table}"))
        else:
            conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return node


def timed(call: Callable[[], object], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure(backend: str, url: str, queues: int, calls: int) -> None:
    """Load one database and print the timings of its pages."""
    started = time.perf_counter()
    node = load(url, queues)
    loaded = time.perf_counter() - started
    app = create_app(url, auth=None)
    client = TestClient(app)
    head = node.list_jobs("blocked_00", limit=1)[0]
    middle = encode_cursor(Cursor(Section.WAITING, f"q{queues // 2:06}"))
    board = app.state.dashboard.scopes.board(SCOPE)

    def page(path: str) -> Callable[[], object]:
        def get() -> object:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:500])
            return response

        return get

    cases: dict[str, Callable[[], object]] = {
        "status(50)": lambda: node.status(50),
        "/queues": page(f"/queues?scope={SCOPE}"),
        "/queues deep": page(f"/queues?scope={SCOPE}&cursor={middle}"),
        "/queues?name=": page(f"/queues?scope={SCOPE}&name=q09999"),
        "/queue": page(f"/queue?scope={SCOPE}&queue=blocked_00"),
        "/jobs/ID": page(f"/jobs/{head.id}"),
        "fingerprint": board.fingerprint,
    }
    for call in cases.values():  # warm-up
        call()
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(calls):  # interleaved
        for name, call in cases.items():
            results[name] += timed(call, 1)
    base = statistics.median(results["status(50)"])
    print(f"\n{backend}: {queues:,} waiting queues + 20 blocked (loaded in {loaded:.0f} s)")
    print(f"{'':16} {'median ms':>10} {'p95 ms':>8} {'x status(50)':>13}")
    for name, times in results.items():
        median = statistics.median(times)
        p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
        print(f"{name:16} {median * 1000:10.1f} {p95 * 1000:8.1f} {median / base:13.2f}")
    app.state.dashboard.close()
    node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mariadb")
    parser.add_argument("--queues", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    for backend, url in fresh_databases(args.backends):
        measure(backend, url, args.queues, args.calls)


if __name__ == "__main__":
    main()
