import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from queuetopia_py import InvalidJobError
from queuetopia_py._job import validate_new_job

GOOD = {"timeout": 60, "max_backoff": 60, "max_attempts": 20, "scheduled_at": None}


def check(queue: object = "q", action: object = "a", params: object = None, **kw: object):
    args = {**GOOD, **kw}
    return validate_new_job(queue, action, {} if params is None else params, **args)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("queue", {"queue": ""}),
        ("queue", {"queue": 12}),
        ("queue", {"queue": " padded"}),
        ("queue", {"queue": "x" * 256}),
        ("action", {"action": None}),
        ("params", {"params": [1, 2]}),
        ("params", {"params": {"n": math.nan}}),
        ("params", {"params": {"n": math.inf}}),
        ("params", {"params": {1: "non-string key"}}),
        ("params", {"params": {"o": object()}}),
        ("params", {"params": {"b": b"bytes"}}),
        ("timeout", {"timeout": -1}),
        ("timeout", {"timeout": 0}),
        ("timeout", {"timeout": "60"}),
        ("timeout", {"timeout": True}),
        ("max_backoff", {"max_backoff": timedelta(seconds=-1)}),
        ("max_attempts", {"max_attempts": 0}),
        ("max_attempts", {"max_attempts": 1.5}),
        ("scheduled_at", {"scheduled_at": datetime(2026, 1, 1)}),
        ("scheduled_at", {"scheduled_at": "2026-01-01"}),
    ],
)
def test_invalid_input_raises_a_value_error_naming_the_field(field: str, kwargs: dict) -> None:
    with pytest.raises(InvalidJobError) as info:
        check(**kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_deeply_nested_params_are_refused_with_a_clear_error() -> None:
    params: dict = {}
    inner = params
    for _ in range(150):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(InvalidJobError, match="nested deeper"):
        check(params=params)


def test_durations_accept_seconds_and_timedeltas() -> None:
    job = check(timeout=1.5, max_backoff=timedelta(minutes=2))
    assert job.timeout == timedelta(seconds=1.5)
    assert job.max_backoff == timedelta(minutes=2)


def test_scheduled_at_is_converted_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    job = check(scheduled_at=datetime(2026, 1, 1, 13, 0, tzinfo=paris))
    assert job.scheduled_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert job.scheduled_at is not None and job.scheduled_at.tzinfo is UTC


def test_params_are_stored_as_their_json_round_trip() -> None:
    job = check(params={"t": (1, 2), "s": "éà\u2603", "n": None, "f": 1.5})
    assert job.params == {"t": [1, 2], "s": "éà\u2603", "n": None, "f": 1.5}
