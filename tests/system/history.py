"""An independent history of attempts, written by the performers of the system tests, and
the checker of the scheduling invariants over it.

Each attempt appends a "start" line before its work and an "end" line after it, one JSON
object a line, each with a single `os.write` on an `O_APPEND` descriptor: a line is
written whole or not at all, and a process killed mid-attempt loses nothing it wrote.
Nodes also append "ready" and "stopped" lines. Stamps are `time.time()` of one machine.

The checker knows nothing of the database: it judges what the performers saw.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# -- writing -------------------------------------------------------------------------------

_fds: dict[str, int] = {}
_fds_lock = threading.Lock()


def append_event(path: str, event: str, **fields: Any) -> None:
    """Append one history line (`event`, the fields and a `time.time()` stamp `t`)."""
    record = {"event": event, **fields, "t": time.time()}
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    with _fds_lock:
        fd = _fds.get(path)
        if fd is None:
            fd = _fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    written = os.write(fd, data)
    assert written == len(data), "a history line was written in part"


# -- reading -------------------------------------------------------------------------------


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of the history (a line still being written is left out)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt as the history shows it.

    `pid` ran the performer; `node` is the pid of the node process (the same with the
    thread executor). `end` is None when no "end" line was written; `killed_at` is then
    the instant the attempt was known dead, if its node was killed.
    """

    queue: str
    job: int
    seq: int
    attempt: int
    pid: int
    node: int
    start: float
    end: float | None
    ok: bool
    killed_at: float | None = None

    @property
    def stopped(self) -> float:
        """When the attempt stopped running: its end, its kill, or never (infinity)."""
        if self.end is not None:
            return self.end
        return self.killed_at if self.killed_at is not None else math.inf


def attempts_of(
    events: Iterable[Mapping[str, Any]], kills: Mapping[int, float] | None = None
) -> list[Attempt]:
    """Pair "start" and "end" lines into attempts, in order of start.

    `kills` maps the pid of each killed node to an instant by which the node and every
    attempt it ran were dead: an attempt of such a node without an "end" ran until then.
    """
    kills = kills or {}
    starts: dict[tuple[int, int, int], Mapping[str, Any]] = {}
    ends: dict[tuple[int, int, int], Mapping[str, Any]] = {}
    for e in events:
        if e["event"] not in ("start", "end"):
            continue
        key = (e["job"], e["attempt"], e["pid"])
        target = starts if e["event"] == "start" else ends
        if key in target:
            raise ValueError(f"two {e['event']!r} lines for job {key[0]} attempt {key[1]}")
        target[key] = e
    orphans = set(ends) - set(starts)
    if orphans:
        raise ValueError(f"'end' lines without a 'start': {sorted(orphans)}")
    result = []
    for key, s in starts.items():
        end = ends.get(key)
        result.append(
            Attempt(
                queue=s["queue"],
                job=s["job"],
                seq=s["seq"],
                attempt=s["attempt"],
                pid=s["pid"],
                node=s["node"],
                start=s["t"],
                end=None if end is None else end["t"],
                ok=end is not None and bool(end["ok"]),
                killed_at=kills.get(s["node"]) if end is None else None,
            )
        )
    return sorted(result, key=lambda a: (a.start, a.job))


# -- checking ------------------------------------------------------------------------------

#: Seconds before a database outage during which an attempt's success may still have been
#: on its way to the database (its record lost with the connection).
OUTAGE_SLACK = 1.0


def check_history(
    events: Iterable[Mapping[str, Any]],
    expected: Mapping[str, Sequence[int]],
    kills: Mapping[int, float] | None = None,
    outages: Sequence[tuple[float, float]] = (),
) -> list[str]:
    """Every violation of the invariants in the history (an empty list when it is sound).

    `expected` maps each queue to its job ids in creation order. Checked, per queue:
    - only expected jobs ran, and every one of them succeeded;
    - no two attempts overlapped in time (an attempt without "end" runs until its node's
      kill, or forever);
    - jobs started in creation order, and no attempt started before the previous job of
      its queue had succeeded (its successful attempt ended);
    - no attempt started after its job had succeeded, unless the node of that success was
      killed, or the success ended during a database outage or up to `OUTAGE_SLACK`
      seconds before one (`outages`: the (down, back) instants of each database stop or
      crash): it may not have been recorded (at least once);
    - every attempt ended, unless its node was killed.
    """
    kills = kills or {}

    def unrecorded(success: Attempt) -> bool:
        """Whether the success may have gone unrecorded (its node died, or the database
        was away when it was to be recorded)."""
        if success.node in kills:
            return True
        return any(down - OUTAGE_SLACK <= success.stopped <= back for down, back in outages)

    violations: list[str] = []
    position = {job: (queue, i) for queue, jobs in expected.items() for i, job in enumerate(jobs)}
    by_queue: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts_of(events, kills):
        known = position.get(a.job)
        if known is None or known[0] != a.queue:
            violations.append(f"unexpected job {a.job} ran in queue {a.queue!r}")
            continue
        by_queue[a.queue].append(a)
        if a.end is None and a.killed_at is None:
            violations.append(
                f"{a.queue}: job {a.job} attempt {a.attempt} (pid {a.pid}) never ended"
            )

    for queue, jobs in expected.items():
        runs = by_queue.get(queue, [])
        succeeded: dict[int, Attempt] = {}  # job -> its first successful attempt
        for a in runs:
            if a.ok and a.job not in succeeded:
                succeeded[a.job] = a
        for job in jobs:
            if job not in succeeded:
                violations.append(f"{queue}: job {job} never succeeded")

        latest: Attempt | None = None  # the attempt that stops last among those started
        highest = -1  # the furthest position in the queue started so far
        for a in runs:
            if latest is not None and a.start < latest.stopped:
                violations.append(
                    f"{queue}: overlap: job {a.job} attempt {a.attempt} (pid {a.pid}) started"
                    f" at {a.start:.6f} while job {latest.job} attempt {latest.attempt}"
                    f" (pid {latest.pid}) ran until {latest.stopped:.6f}"
                )
            if latest is None or a.stopped > latest.stopped:
                latest = a
            i = position[a.job][1]
            if i < highest:
                violations.append(
                    f"{queue}: out of order: job {a.job} (position {i}) started at"
                    f" {a.start:.6f}, after job {jobs[highest]} (position {highest})"
                )
            highest = max(highest, i)
            if i > 0:
                before = jobs[i - 1]
                if before not in succeeded or succeeded[before].stopped > a.start:
                    violations.append(
                        f"{queue}: job {a.job} attempt {a.attempt} started at {a.start:.6f}"
                        f" before job {before}, ahead of it, had succeeded"
                    )
            success = succeeded.get(a.job)
            if success is not None and success.stopped <= a.start and not unrecorded(success):
                violations.append(
                    f"{queue}: job {a.job} attempt {a.attempt} started after the job had succeeded"
                )
    return violations
