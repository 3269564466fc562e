"""`Schedule`: its validation, and the fire times it computes (APScheduler's CronTrigger
for crontabs, the epoch's multiples for intervals) and which of them get a job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from queuetopia_py import ConfigurationError, Queuetopia, Schedule

PARIS = ZoneInfo("Europe/Paris")


def every(seconds: float, catch_up: str = "latest") -> Schedule:
    return Schedule("s", every=seconds, queue="q", action="a", catch_up=catch_up)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "exactly one of cron and every"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron and every"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "five crontab fields"),
        ({"cron": 5}, "five crontab fields"),
        ({"every": 0}, "every"),
        ({"every": -1}, "every"),
        ({"every": 5, "timezone": "Mars/Olympus"}, "timezone"),
        ({"every": 5, "catch_up": "some"}, "catch_up"),
        ({"every": 5, "params": [1]}, "params"),
        ({"every": 5, "timeout": 0}, "timeout"),
        ({"every": 5, "max_attempts": 0}, "max_attempts"),
        ({"every": 5, "on_failure": "explode"}, "on_failure"),
    ],
)
def test_bad_schedules_are_refused_at_construction(
    arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"schedule 'nightly': .*{message}"):
        Schedule("nightly", queue="q", action="a", **arguments)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Schedule("nightly", queue="q", action="a", **arguments)  # type: ignore[arg-type]


def test_a_name_queue_and_action_are_names() -> None:
    for bad in ({"name": ""}, {"queue": " q"}, {"action": 3}):
        values = {"name": "n", "queue": "q", "action": "a", **bad}
        with pytest.raises(ConfigurationError):
            Schedule(values.pop("name"), every=1, **values)  # type: ignore[arg-type]


def test_schedules_of_an_instance_have_distinct_names() -> None:
    with pytest.raises(ConfigurationError, match="two schedules named 'a'"):
        Queuetopia(
            repo="sqlite://",
            schedules=[
                Schedule("a", every=1, queue="q", action="x"),
                Schedule("a", every=2, queue="q", action="x"),
            ],
        )
    with pytest.raises(ConfigurationError, match="schedules: must be a list"):
        Queuetopia(repo="sqlite://", schedules=every(1))


def test_intervals_fire_on_multiples_of_the_interval_since_the_epoch() -> None:
    half = every(0.5)
    start = datetime(2027, 1, 1, 0, 0, 0, 300_000, tzinfo=UTC)
    assert half.next_after(start) == datetime(2027, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    assert half.next_after(datetime(2027, 1, 1, tzinfo=UTC)) == datetime(
        2027, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC
    )
    assert len(half.due(start, start + timedelta(seconds=2))) == 4
    # Any node computes the same ones, whenever it started.
    assert every(7).next_after(datetime(2027, 1, 1, tzinfo=UTC)).timestamp() % 7 == 0


def test_crontabs_follow_their_time_zone_through_daylight_saving() -> None:
    nightly = Schedule("n", cron="30 2 * * *", timezone="Europe/Paris", queue="q", action="a")

    def fires(first: datetime, count: int) -> list[str]:
        out, fire = [], first
        for _ in range(count):
            fire = nightly.next_after(fire)
            out.append(fire.astimezone(PARIS).strftime("%m-%d %H:%M %z"))
        return out

    # Spring forward (2027-03-28, 02:00 -> 03:00): 02:30 does not exist, it fires at 03:30.
    assert fires(datetime(2027, 3, 26, tzinfo=UTC), 4) == [
        "03-26 02:30 +0100",
        "03-27 02:30 +0100",
        "03-28 03:30 +0200",
        "03-29 02:30 +0200",
    ]
    # Fall back (2027-10-31, 03:00 -> 02:00): 02:30 occurs twice, and fires twice.
    assert fires(datetime(2027, 10, 30, tzinfo=UTC), 3) == [
        "10-30 02:30 +0200",
        "10-31 02:30 +0200",
        "10-31 02:30 +0100",
    ]


@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [("latest", [4]), ("none", []), ("all", [2, 3, 4])],
)
def test_fire_times_missed_by_an_outage_follow_the_catch_up(
    catch_up: str, expected: list[int]
) -> None:
    schedule = every(60, catch_up)
    last = datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    # Down over three fire times (00:02, 00:03, 00:04), back at 00:04:40.
    fires, latest = schedule.to_create(last, datetime(2027, 1, 1, 0, 4, 40, tzinfo=UTC))
    assert [f.minute for f in fires] == expected
    assert latest == datetime(2027, 1, 1, 0, 4, tzinfo=UTC)


@pytest.mark.parametrize("catch_up", ["latest", "none", "all"])
def test_a_fire_time_dealt_with_on_time_gets_its_job(catch_up: str) -> None:
    schedule = every(60, catch_up)
    last = datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    fires, _ = schedule.to_create(last, datetime(2027, 1, 1, 0, 2, 0, 40_000, tzinfo=UTC))
    assert fires == [datetime(2027, 1, 1, 0, 2, tzinfo=UTC)]
    assert schedule.to_create(last, datetime(2027, 1, 1, 0, 1, 59, tzinfo=UTC)) == ([], None)


def test_catching_up_all_is_bounded() -> None:
    schedule = every(1, "all")
    last = datetime(2027, 1, 1, tzinfo=UTC)
    fires, latest = schedule.to_create(last, last + timedelta(hours=1))
    assert len(fires) == 100
    assert fires[-1] == latest == last + timedelta(hours=1)


@pytest.mark.parametrize("catch_up", ["latest", "none", "all"])
def test_a_node_a_little_late_still_creates_every_fire_time(catch_up: str) -> None:
    schedule = every(0.5, catch_up)
    last = datetime(2027, 1, 1, tzinfo=UTC)
    # Dealt with 0.8 s after 00:00:00.5 (its node was held up): within the 1 s of grace.
    fires, latest = schedule.to_create(last, datetime(2027, 1, 1, 0, 0, 1, 300_000, tzinfo=UTC))
    assert fires == [last + timedelta(seconds=0.5), last + timedelta(seconds=1)]
    assert latest == last + timedelta(seconds=1)
