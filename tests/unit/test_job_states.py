"""`Job.state` and the failure-mode values, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from factories import make_job

from queuetopia_py import InvalidJobError, JobState, MoveTo, OnFailure
from queuetopia_py._job import Intervention, to_on_failure

NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({"attempts": 0, "error": None}, "pending"),
        ({"attempts": 1, "error": "boom"}, "retrying"),
        ({"attempts": 3, "round_start": 3, "error": "old error"}, "pending"),
        ({"attempts": 1, "error": "boom", "next_attempt_at": None}, "blocked"),
        ({"done_at": NOW, "outcome": JobState.ABORTED}, "done"),
        ({"outcome": JobState.GIVEN_UP, "next_attempt_at": None}, "given_up"),
        ({"outcome": JobState.CANCELLED, "next_attempt_at": None}, "cancelled"),
        ({"outcome": JobState.ABORTED, "next_attempt_at": None}, "aborted"),
        ({"outcome": JobState.DEAD_LETTERED, "next_attempt_at": None}, "dead_lettered"),
    ],
)
def test_state_of_a_job(fields: dict[str, object], state: str) -> None:
    job = make_job(**fields)
    assert job.state == state and job.state is JobState(state)
    assert job.pending == (state in ("pending", "retrying", "blocked"))
    assert job.given_up == (state == "given_up")


def test_round_attempts_count_from_the_last_retry() -> None:
    assert make_job(attempts=5, round_start=3).round_attempts == 2


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("give_up", (OnFailure.GIVE_UP, None)),
        ("block", (OnFailure.BLOCK, None)),
        (OnFailure.BLOCK, (OnFailure.BLOCK, None)),
        (MoveTo("dead letters"), (OnFailure.MOVE_TO, "dead letters")),
        ("move_to:dead letters", (OnFailure.MOVE_TO, "dead letters")),
    ],
)
def test_failure_modes_are_stored_as_a_mode_and_a_queue(
    given: object, stored: tuple[OnFailure, str | None]
) -> None:
    assert to_on_failure(given) == stored


@pytest.mark.parametrize("bad", ["retry", "move_to:", " block", None, MoveTo(" x")])
def test_bad_failure_modes_are_refused(bad: object) -> None:
    with pytest.raises(InvalidJobError, match="on_failure"):
        to_on_failure(bad)


def test_interventions_survive_their_stored_form() -> None:
    entry = Intervention("abort", "alice@host", NOW, "customer gone")
    assert Intervention.from_json(entry.to_json()) == entry
