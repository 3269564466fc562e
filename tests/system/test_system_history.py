"""The history checker itself, on hand-written histories: it accepts a sound one and
catches each kind of violation, so that its silence on a real run means something."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from history import append_event, attempts_of, check_history, read_events

pytestmark = pytest.mark.system

NODE_A, NODE_B = 100, 200


def attempt(
    queue: str,
    job: int,
    start: float,
    end: float | None,
    *,
    attempt: int = 1,
    node: int = NODE_A,
    pid: int | None = None,
) -> list[dict[str, Any]]:
    """The lines one attempt writes (no "end" line when `end` is None)."""
    line = {
        "queue": queue,
        "job": job,
        "seq": job,
        "attempt": attempt,
        "pid": node if pid is None else pid,
        "node": node,
    }
    lines = [{"event": "start", **line, "t": start}]
    if end is not None:
        lines.append({"event": "end", **line, "ok": True, "t": end})
    return lines


def history(*attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lines of several attempts, in the order they were written."""
    return sorted((line for a in attempts for line in a), key=lambda line: line["t"])


EXPECTED = {"a": [1, 2, 3], "b": [4, 5]}


def test_a_sound_history_of_two_interleaved_queues_has_no_violation() -> None:
    events = history(
        attempt("a", 1, 0.0, 1.0),
        attempt("b", 4, 0.2, 0.5, node=NODE_B),
        attempt("a", 2, 1.0, 2.0, node=NODE_B),
        attempt("b", 5, 0.6, 3.0),
        attempt("a", 3, 2.5, 2.6),
    )
    assert check_history(events, EXPECTED) == []


def test_two_attempts_of_one_queue_running_at_once_are_an_overlap() -> None:
    events = history(
        attempt("a", 1, 0.0, 1.0),
        attempt("a", 2, 0.9, 2.0, node=NODE_B),
        attempt("a", 3, 2.5, 2.6),
        attempt("b", 4, 0.0, 0.1),
        attempt("b", 5, 0.2, 0.3),
    )
    violations = check_history(events, EXPECTED)
    assert any("overlap: job 2" in v for v in violations), violations
    assert any("job 2 attempt 1 started at 0.900000 before job 1" in v for v in violations)
    assert len(violations) == 2, violations


def test_a_job_starting_before_the_job_ahead_of_it_is_out_of_order() -> None:
    events = history(
        attempt("a", 2, 0.0, 1.0),
        attempt("a", 1, 1.5, 2.0),
        attempt("a", 3, 2.5, 2.6),
        attempt("b", 4, 0.0, 0.1),
        attempt("b", 5, 0.2, 0.3),
    )
    violations = check_history(events, EXPECTED)
    assert any("out of order: job 1" in v for v in violations), violations
    assert any("job 2 attempt 1 started at 0.000000 before job 1" in v for v in violations)


def test_a_job_that_never_succeeded_and_an_unknown_job_are_reported() -> None:
    events = history(
        attempt("a", 1, 0.0, 1.0),
        attempt("a", 2, 1.5, 2.0),
        attempt("b", 4, 0.0, 0.1),
        attempt("b", 5, 0.2, 0.3),
        attempt("b", 99, 0.4, 0.5),
    )
    assert check_history(events, EXPECTED) == [
        "unexpected job 99 ran in queue 'b'",
        "a: job 3 never succeeded",
    ]


def test_a_killed_attempt_runs_until_the_kill_and_must_not_overlap_its_take_over() -> None:
    killed = attempt("a", 2, 1.0, None, node=NODE_A, pid=101)
    rest = [attempt("a", 1, 0.0, 0.5), attempt("b", 4, 0.0, 0.1), attempt("b", 5, 0.2, 0.3)]
    late = history(*rest, killed, attempt("a", 2, 4.0, 4.5, attempt=2, node=NODE_B))
    late += attempt("a", 3, 5.0, 5.1, node=NODE_B)
    assert check_history(late, EXPECTED, kills={NODE_A: 3.0}) == []

    early = history(*rest, killed, attempt("a", 2, 2.0, 2.5, attempt=2, node=NODE_B))
    early += attempt("a", 3, 5.0, 5.1, node=NODE_B)
    violations = check_history(early, EXPECTED, kills={NODE_A: 3.0})
    assert len(violations) == 1 and "overlap: job 2 attempt 2" in violations[0], violations


def test_an_attempt_that_never_ended_on_a_live_node_runs_forever() -> None:
    events = history(
        attempt("a", 1, 0.0, None),
        attempt("a", 1, 4.0, 4.5, attempt=2, node=NODE_B),
        attempt("a", 2, 5.0, 5.5, node=NODE_B),
        attempt("a", 3, 6.0, 6.5, node=NODE_B),
        attempt("b", 4, 0.0, 0.1),
        attempt("b", 5, 0.2, 0.3),
    )
    violations = check_history(events, EXPECTED)
    assert violations[0] == "a: job 1 attempt 1 (pid 100) never ended"
    assert sum("overlap" in v for v in violations) == 3, violations


def test_a_job_run_again_after_its_success_is_reported_unless_its_node_was_killed() -> None:
    events = history(
        attempt("a", 1, 0.0, 1.0),
        attempt("a", 2, 1.5, 2.0),
        attempt("a", 3, 2.5, 2.6),
        attempt("a", 3, 3.0, 3.1, attempt=2),
        attempt("b", 4, 0.0, 0.1),
        attempt("b", 5, 0.2, 0.3),
    )
    assert check_history(events, EXPECTED) == [
        "a: job 3 attempt 2 started after the job had succeeded"
    ]
    # Unless the node was killed: it may have died before recording the success.
    assert check_history(events, EXPECTED, kills={NODE_A: 2.8}) == []


def test_a_job_run_again_after_a_success_that_ended_around_a_database_outage_is_allowed() -> None:
    events = history(
        attempt("a", 1, 0.0, 1.0),
        attempt("a", 2, 1.5, 2.0),
        attempt("a", 3, 2.5, 2.6),
        attempt("a", 3, 6.0, 6.1, attempt=2, node=NODE_B),
        attempt("b", 4, 0.0, 0.1),
        attempt("b", 5, 0.2, 0.3),
    )
    rerun = ["a: job 3 attempt 2 started after the job had succeeded"]
    # The database went away as (or just after) the success ended: its record was lost.
    assert check_history(events, EXPECTED, outages=[(2.55, 4.0)]) == []
    assert check_history(events, EXPECTED, outages=[(3.0, 4.0)]) == []
    # An outage long after the success, or one that ended before it, excuses nothing.
    assert check_history(events, EXPECTED, outages=[(4.0, 5.0)]) == rerun
    assert check_history(events, EXPECTED, outages=[(1.0, 2.0)]) == rerun


def test_history_lines_are_read_back_whole_and_a_line_being_written_is_left_out(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "history.jsonl")
    line = {"queue": "a", "job": 1, "seq": 0, "attempt": 1, "pid": 7, "node": 7}
    append_event(path, "start", **line)
    append_event(path, "end", **line, ok=True)
    with open(path, "ab") as f:
        f.write(b'{"event":"start","queue":"a"')
    events = read_events(path)
    assert [e["event"] for e in events] == ["start", "end"]
    (only,) = attempts_of(events)
    assert only.ok and only.end is not None and only.start <= only.end
