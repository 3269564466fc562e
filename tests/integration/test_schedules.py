"""Periodic jobs: each fire time of a schedule gets exactly one job of the scope, with
`scheduled_at` the fire time, whichever and however many nodes run it; the database's
clock decides what is due."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import freezegun
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from recording import Recorder, wait_until

from queuetopia_py import Queuetopia, Schedule
from queuetopia_py._cli import cli
from queuetopia_py._store.database import create_engine

SCOPE = "schedule-tests"
HALF = timedelta(seconds=0.5)


def beat(catch_up: str = "latest", every: timedelta = HALF) -> Schedule:
    return Schedule("beat", every=every, queue="beats", action="beat", catch_up=catch_up)  # type: ignore[arg-type]


def fire_times(queue: Queuetopia, name: str = "beats") -> list[datetime]:
    return [j.scheduled_at for j in queue.list_jobs(queue=name)]


def assert_one_job_a_fire_time(times: list[datetime], step: timedelta) -> None:
    """Distinct fire times, one `step` apart from the first to the last: none missing."""
    assert len(times) == len(set(times)), "a fire time has two jobs"
    ordered = sorted(times)
    gaps = {later - earlier for earlier, later in itertools.pairwise(ordered)}
    assert gaps <= {step}, f"a fire time is missing: gaps {sorted(gaps)}"


def test_three_nodes_create_each_fire_time_once(make_queue: Callable[..., Queuetopia]) -> None:
    nodes = [
        make_queue(scope=SCOPE, performer=Recorder(), poll_interval=0.2, schedules=[beat()])
        for _ in range(3)
    ]
    for node in nodes:
        node.start()
    observer = nodes[0]
    # About five seconds of a fire every half second.
    wait_until(lambda: len(fire_times(observer)) >= 10, timeout=30, what="ten fire times")
    for node in nodes:
        node.stop()
    times = fire_times(observer)
    assert_one_job_a_fire_time(times, HALF)
    for job in observer.list_jobs(queue="beats"):
        assert job.action == "beat"
        assert job.inserted_at >= job.scheduled_at  # never before its fire time
        assert job.scheduled_at.timestamp() % 0.5 == 0


@pytest.fixture
def frozen_clock_here() -> Iterator[None]:
    """Let freezegun move the clock that queuetopia_py reads: its default ignore list
    holds "queue" (for the standard library's module), which every module name of
    queuetopia_py starts with."""
    saved = list(freezegun.config.settings.default_ignore_list)
    freezegun.configure(default_ignore_list=[m for m in saved if m != "queue"])
    yield
    freezegun.configure(default_ignore_list=saved)


# SQLite alone: freezegun moves this process's clock, which is SQLite's, not a server's.
@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.usefixtures("frozen_clock_here")
def test_a_crontab_fires_at_its_wall_times_through_a_daylight_saving_change(
    make_queue: Callable[..., Queuetopia], backend: str
) -> None:
    nightly = Schedule(
        "nightly", cron="30 2 * * *", timezone="Europe/Paris", queue="reports", action="build"
    )
    minutes = Schedule("minutes", cron="*/2 * * * *", queue="ticks", action="tick")
    queue = make_queue(scope=SCOPE, schedules=[nightly, minutes])
    with freezegun.freeze_time("2027-03-26T00:00:00Z") as clock:
        queue._fire(nightly)  # the schedule begins: nothing due before now
        queue._fire(minutes)
        for _ in range(10):  # ten minutes, a minute at a time
            clock.tick(timedelta(minutes=1))
            queue._fire(minutes)
        # Each night at 02:30 in Paris; on 2027-03-28 clocks go from 02:00 to 03:00.
        for instant in ("2027-03-26T01:30:01Z", "2027-03-27T01:30:01Z", "2027-03-28T01:30:01Z"):
            clock.move_to(instant)
            queue._fire(nightly)
            queue._fire(nightly)  # again at the same moment: nothing more
        clock.move_to("2027-03-29T00:30:01Z")
        queue._fire(nightly)
    assert [t.strftime("%H:%M") for t in fire_times(queue, "ticks")] == [
        "00:02", "00:04", "00:06", "00:08", "00:10"
    ]  # fmt: skip
    assert fire_times(queue, "reports") == [
        datetime(2027, 3, 26, 1, 30, tzinfo=UTC),
        datetime(2027, 3, 27, 1, 30, tzinfo=UTC),
        datetime(2027, 3, 28, 1, 30, tzinfo=UTC),  # 03:30 in Paris: 02:30 did not exist
        datetime(2027, 3, 29, 0, 30, tzinfo=UTC),
    ]


def _database_now(queue: Queuetopia) -> datetime:
    with queue.engine.connect() as conn:
        return conn.execute(sa.select(queue._db.now())).scalar_one()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("catch_up", "expected"), [("latest", 1), ("none", 0), ("all", 3)])
def test_fire_times_missed_while_no_node_ran_follow_the_catch_up(
    make_queue: Callable[..., Queuetopia], catch_up: str, expected: int
) -> None:
    daily = beat(catch_up, every=timedelta(days=1))
    queue = make_queue(scope=SCOPE, schedules=[daily])
    # The latest fire time (midnight UTC) must be clearly missed: not within the 30 s
    # that count as on time.
    since_midnight = _database_now(queue) - daily.next_after(
        _database_now(queue) - timedelta(days=1)
    )
    if since_midnight < timedelta(seconds=35):
        time.sleep(35 - since_midnight.total_seconds())
    queue._fire(daily)  # the schedule begins now
    # No node ran over the three fire times before it: move its record back three days.
    (begun,) = queue.status().schedules
    schedules = queue._db.tables.schedules
    with queue.engine.begin() as conn:
        conn.execute(
            schedules.update()
            .where(schedules.c.scope == SCOPE)
            .values(last_fire_at=begun.last_fire_at - timedelta(days=3))
        )
    queue._fire(daily)
    times = sorted(fire_times(queue))
    assert len(times) == expected
    if times:
        assert times[-1] == daily.next_after(_database_now(queue) - timedelta(days=1))
        assert_one_job_a_fire_time(times, timedelta(days=1))
    queue._fire(daily)  # dealt with: nothing more
    assert len(fire_times(queue)) == expected


SKEWED_NODE = """
import sys
from datetime import UTC, datetime, timedelta
import freezegun
from queuetopia_py import Performer, Queuetopia, Schedule

class Nothing(Performer):
    def perform(self, job):
        return None

url, scope = sys.argv[1:3]
# queuetopia_py's modules start with "queue", which freezegun leaves alone by default.
ignored = freezegun.config.settings.default_ignore_list
freezegun.configure(default_ignore_list=[m for m in ignored if m != "queue"])
# This node's clock runs five minutes ahead.
with freezegun.freeze_time(datetime.now(UTC) + timedelta(minutes=5), tick=True):
    node = Queuetopia(repo=url, scope=scope, performer=Nothing(), poll_interval=0.2,
                      schedules=[Schedule("beat", every=0.5, queue="beats", action="beat")])
    node.start()
    print("started", flush=True)
    sys.stdin.readline()
    node.stop()
"""


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_node_whose_clock_is_ahead_fires_neither_early_nor_twice(
    make_queue: Callable[..., Queuetopia], url: str, backend: str
) -> None:
    skewed = subprocess.Popen(
        [sys.executable, "-c", SKEWED_NODE, url, SCOPE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert skewed.stdout is not None and skewed.stdout.readline().strip() == "started"
        node = make_queue(scope=SCOPE, performer=Recorder(), poll_interval=0.2, schedules=[beat()])
        node.start()
        wait_until(lambda: len(fire_times(node)) >= 8, timeout=30, what="eight fire times")
        node.stop()
    finally:
        skewed.communicate("stop\n", timeout=60)
    assert skewed.returncode == 0
    assert_one_job_a_fire_time(fire_times(node), HALF)
    for job in node.list_jobs(queue="beats"):
        assert job.inserted_at >= job.scheduled_at, f"fired early: {job}"


def test_schedules_changed_or_removed_in_the_code_leave_nothing_behind(
    make_queue: Callable[..., Queuetopia], url: str
) -> None:
    other = Schedule("other", every=3600, queue="q", action="a")
    first = make_queue(scope=SCOPE, performer=Recorder(), schedules=[beat(), other])
    first.start()
    wait_until(lambda: len(first.status().schedules) == 2, what="both schedules recorded")
    first.stop()
    faster = Schedule("beat", every=0.25, queue="beats", action="beat")
    second = make_queue(scope=SCOPE, performer=Recorder(), schedules=[faster])
    second.start()
    wait_until(
        lambda: [s.definition for s in second.status().schedules] == ["every 0.25s"],
        what="the changed schedule alone",
    )
    second.stop()
    third = make_queue(scope=SCOPE, performer=Recorder())
    third.start()
    third.stop()
    assert third.status().schedules == []


def test_status_and_the_command_line_show_each_schedule(
    make_queue: Callable[..., Queuetopia], url: str
) -> None:
    queue = make_queue(scope=SCOPE, performer=Recorder(), poll_interval=0.2, schedules=[beat()])
    queue.start()
    wait_until(lambda: len(fire_times(queue)) >= 1, what="a fire time")
    queue.stop()
    (status,) = queue.status().schedules
    (last,) = [j for j in queue.list_jobs(queue="beats") if j.id == status.last_job_id]
    assert (status.scope, status.name, status.definition) == (SCOPE, "beat", "every 0.5s")
    assert status.last_fire_at == last.scheduled_at
    assert status.next_fire_at is not None and status.next_fire_at > status.last_fire_at
    runner = CliRunner()
    shown = runner.invoke(cli, ["schedules", "--repo", url])
    assert shown.exit_code == 0
    assert "beat" in shown.output and "every 0.5s" in shown.output
    (listed,) = json.loads(runner.invoke(cli, ["schedules", "--repo", url, "--json"]).output)[
        "schedules"
    ]
    assert listed["last_job_id"] == last.id and listed["name"] == "beat"
    engine = create_engine(url)
    engine.dispose()
