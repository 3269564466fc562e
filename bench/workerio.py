"""Shared pieces of the worker processes of bench/compare.py (imported by ours.py and
peers.py, which compare.py runs as subprocesses), also used by fairness.py,
many_queues.py and history.py.

A worker process prints its result as one JSON object on a stdout line starting with
`RESULT_PREFIX` (anything else on stdout, such as a library's log line, is ignored), and
"ready" lines when it waits for a producer.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "
READY_LINE = "BENCH-READY"
#: The queues' names: "q0", "q1", ... (the same in every implementation).
QUEUE_PREFIX = "q"


#: What a worker script is asked to do (its positional `role`).
WORKER_ROLES = ("throughput", "enqueue", "latency-worker", "latency-producer")


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The role and the options every worker script takes (after its own positionals)."""
    parser.add_argument("role", choices=WORKER_ROLES)
    parser.add_argument("--url", required=True)
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--per-queue", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--bulk", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--spacing", type=float, default=0.02)


def queue_name(q: int) -> str:
    return f"{QUEUE_PREFIX}{q}"


def interleaved(queues: int, per_queue: int) -> Iterator[tuple[str, int]]:
    """(queue, i) of every job in enqueue order: job 0 of every queue, then job 1, ..."""
    for i in range(per_queue):
        for q in range(queues):
            yield queue_name(q), i


def spread(count: int, queues: int) -> Iterator[tuple[str, int]]:
    """(queue, i) of jobs 0..count-1, job i in queue i % queues."""
    for i in range(count):
        yield queue_name(i % queues), i


def emit(result: dict[str, Any]) -> None:
    """Report the worker's result to compare.py."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def ready() -> None:
    """Tell compare.py the worker runs and waits for jobs."""
    print(READY_LINE, flush=True)


class OrderLog:
    """The order in which each queue's jobs were performed (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, list[int]] = {}
        self.count = 0

    def record(self, queue: str, i: int) -> int:
        """Record job `i` of `queue`; return how many jobs were recorded so far."""
        with self.lock:
            self.seen.setdefault(queue, []).append(i)
            self.count += 1
            return self.count

    def problems(self, expected: dict[str, list[int]], limit: int = 5) -> list[str]:
        """Queues whose performed sequence differs from `expected` (in order, each job
        exactly once), described; empty when every queue ran in order."""
        out = []
        for queue in sorted(set(expected) | set(self.seen)):
            want = expected.get(queue, [])
            got = self.seen.get(queue, [])
            if got == want:
                continue
            at = next(
                (k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)),
            )
            out.append(
                f"queue {queue}: {len(got)} performed, {len(want)} expected; first difference "
                f"at position {at}: got {got[at : at + 5]}, expected {want[at : at + 5]}"
            )
            if len(out) >= limit:
                break
        return out


def expected_interleaved(queues: int, per_queue: int) -> dict[str, list[int]]:
    return {queue_name(q): list(range(per_queue)) for q in range(queues)}


def expected_spread(count: int, queues: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for queue, i in spread(count, queues):
        out.setdefault(queue, []).append(i)
    return out


class Stopwatch:
    """Seconds since it was made (perf_counter)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def throughput_result(
    total: int,
    seconds: float | None,
    order: list[str] | None,
    *,
    done: int = 0,
    elapsed: float = 0.0,
    **extra: Any,
) -> dict[str, Any]:
    """The result of a throughput run. `seconds` None: it timed out after `elapsed`
    seconds with `done` jobs recorded. `order` None: the order was not checked."""
    result: dict[str, Any] = {"jobs": total, **extra}
    if seconds is None:
        result["error"] = "timeout"
        result["done"] = done
        result["partial_rate"] = done / elapsed if elapsed else 0.0
        return result
    result["seconds"] = seconds
    result["rate"] = total / seconds
    if order:
        result["error"] = "order violated: " + "; ".join(order)
    result["order_checked"] = order is not None
    return result
