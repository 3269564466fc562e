"""Periodic jobs: `Schedule`, and the thread of a started instance that creates each fire
time's job once, whichever and however many nodes run the schedule.

Fire times come from APScheduler's `CronTrigger` (a crontab in a time zone, daylight
saving included) or, for `every`, from multiples of the interval since the Unix epoch,
so that every node computes the same ones. Whether a fire time is due is judged by the
database's clock, in the transaction that locks the schedule's row, creates the job and
records the fire time: a node whose clock is off can neither fire early nor twice. See
docs/periodic-and-unique-jobs.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from queuetopia_py import defaults
from queuetopia_py._errors import ConfigurationError, InvalidJobError
from queuetopia_py._job import (
    sized_params,
    to_max_attempts,
    to_on_failure,
    to_timedelta,
    validate_name,
)

logger = logging.getLogger("queuetopia_py.schedules")

CatchUp = Literal["latest", "none", "all"]
#: The catch-up modes: what a schedule does with the fire times missed while no node ran.
CATCH_UPS: tuple[CatchUp, ...] = ("latest", "none", "all")
#: With `catch_up="all"`, at most this many missed fire times get a job (the latest).
MAX_CATCH_UP = 100
#: A fire time dealt with more than this after it was missed (less for a schedule that
#: fires more often: its interval, `_MIN_GRACE` at least).
ON_TIME = timedelta(seconds=30)
_MIN_GRACE = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Fire times looked at, at most, to find those due since the last one dealt with.
_MAX_STEPS = 100_000


class Schedule:
    """A job created at each fire time of a crontab (`cron`) or an interval (`every`).

    >>> Schedule("nightly", cron="0 3 * * *", timezone="Europe/Paris",
    ...          queue="reports", action="build", params={"kind": "daily"})
    >>> Schedule("heartbeat", every=timedelta(seconds=30), queue="beats", action="beat")

    - `cron`: five crontab fields (minute, hour, day of month, month, day of week), read
      by APScheduler's `CronTrigger` in `timezone` (an IANA name, default "UTC").
    - `every`: a duration (seconds or a `timedelta`, sub-second allowed); its fire times
      are the multiples of it since 1970-01-01 UTC.
    - Exactly one of them; the job is created in `queue` with `action`, `params` and the
      job options `timeout`, `max_backoff`, `max_attempts` and `on_failure` (default:
      the instance's), `scheduled_at` being the fire time.
    - `catch_up`: what happens to the fire times missed while no node ran the schedule:
      "latest" (default) creates one job, for the most recent; "none" skips them; "all"
      creates one for each (the latest `MAX_CATCH_UP` of them).

    Bad values raise `ConfigurationError` (a `ValueError`) naming the schedule and field.
    """

    __slots__ = (
        "_trigger",
        "action",
        "catch_up",
        "cron",
        "every",
        "max_attempts",
        "max_backoff",
        "name",
        "on_failure",
        "params",
        "queue",
        "timeout",
        "timezone",
    )

    def __init__(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        queue: str,
        action: str,
        params: dict[str, Any] | None = None,
        catch_up: CatchUp = "latest",
        timeout: float | timedelta | None = None,
        max_backoff: float | timedelta | None = None,
        max_attempts: int | None = None,
        on_failure: Any = None,
    ) -> None:
        where = f"schedule {name!r}" if isinstance(name, str) else "schedule"
        try:
            self.name = validate_name("name", name)
            self.queue = validate_name("queue", queue)
            self.action = validate_name("action", action)
            self.params: dict[str, Any] = sized_params(
                {} if params is None else params, defaults.MAX_PARAMS_BYTES
            )[0]
            self.timeout = None if timeout is None else to_timedelta("timeout", timeout)
            self.max_backoff = (
                None
                if max_backoff is None
                else to_timedelta("max_backoff", max_backoff, allow_zero=True)
            )
            self.max_attempts = None if max_attempts is None else to_max_attempts(max_attempts)
            if on_failure is not None:
                to_on_failure(on_failure)
            self.on_failure = on_failure
            if (cron is None) == (every is None):
                raise InvalidJobError("cron", cron, "give exactly one of cron and every")
            self.timezone = _zone(timezone)
            self.cron = cron
            self.every = None if every is None else to_timedelta("every", every)
            self._trigger = None if cron is None else _crontab(cron, self.timezone)
        except InvalidJobError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        if catch_up not in CATCH_UPS:
            raise ConfigurationError(
                f"{where}: catch_up: must be one of {', '.join(CATCH_UPS)} (got {catch_up!r})"
            )
        self.catch_up: CatchUp = catch_up

    @property
    def definition(self) -> str:
        """How the schedule fires, as its row in the database records it."""
        if self.cron is not None:
            return f"cron {self.cron} {self.timezone}"
        assert self.every is not None
        return f"every {self.every.total_seconds():g}s"

    def next_after(self, instant: datetime) -> datetime:
        """The first fire time after `instant` (aware, UTC)."""
        if self._trigger is None:
            assert self.every is not None
            steps = (instant - _EPOCH) // self.every + 1
            return _EPOCH + steps * self.every
        fire = self._trigger.get_next_fire_time(None, instant + timedelta(microseconds=1))
        assert fire is not None  # a crontab fires forever
        return fire.astimezone(UTC)  # type: ignore[no-any-return]

    def due(self, last: datetime, now: datetime) -> list[datetime]:
        """The fire times after `last` up to `now` (the latest `MAX_CATCH_UP` + 1 at most)."""
        if self._trigger is None and self.every is not None:
            first = self.next_after(last)
            if first > now:
                return []
            count = (now - first) // self.every + 1
            kept = min(count, MAX_CATCH_UP + 1)
            latest = first + (count - 1) * self.every
            return [latest - i * self.every for i in reversed(range(kept))]
        fires: list[datetime] = []
        fire = self.next_after(last)
        for _ in range(_MAX_STEPS):
            if fire > now:
                break
            fires.append(fire)
            if len(fires) > MAX_CATCH_UP + 1:
                del fires[0]
            fire = self.next_after(fire)
        return fires

    def to_create(self, last: datetime, now: datetime) -> tuple[list[datetime], datetime | None]:
        """The fire times to create a job for, and the latest fire time dealt with (None:
        none due). A due fire time dealt with on time (see `on_time`) gets its job; of
        those missed, "all" keeps each, "latest" the most recent, "none" none."""
        due = self.due(last, now)
        if not due:
            return [], None
        missed = [fire for fire in due if not self.on_time(fire, now)]
        kept = [fire for fire in due if fire not in missed]
        if self.catch_up == "all":
            kept = due[-MAX_CATCH_UP:]
        elif self.catch_up == "latest" and missed:
            kept = [missed[-1], *kept]
        return kept, due[-1]

    def on_time(self, fire: datetime, now: datetime) -> bool:
        """Whether `fire`, dealt with at `now`, is on time: at most `ON_TIME` late, or,
        for a schedule that fires more often, at most its interval (1 s at least)."""
        interval = self.next_after(fire) - fire
        return now - fire <= min(ON_TIME, max(interval, _MIN_GRACE))

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, {self.definition}, queue={self.queue!r})"


def _zone(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidJobError("timezone", name, "must be an IANA time zone name")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidJobError("timezone", name, "is not a known IANA time zone") from None
    return name


def _crontab(expression: object, zone: str) -> CronTrigger:
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise InvalidJobError("cron", expression, "must be five crontab fields")
    try:
        return CronTrigger.from_crontab(expression, timezone=ZoneInfo(zone))
    except ValueError as exc:
        raise InvalidJobError("cron", expression, str(exc)) from None


def check_schedules(schedules: object) -> tuple[Schedule, ...]:
    """Validate the `schedules` option: Schedules with distinct names."""
    if isinstance(schedules, Schedule) or not isinstance(schedules, Sequence | set | frozenset):
        raise ConfigurationError(f"schedules: must be a list of Schedule (got {schedules!r})")
    items = tuple(schedules)
    for item in items:
        if not isinstance(item, Schedule):
            raise ConfigurationError(f"schedules: {item!r} is not a Schedule")
    names = [s.name for s in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"schedules: two schedules named {twice[0]!r}")
    return items


class ScheduleRunner:
    """The thread of a started instance that fires its schedules: it deals with each
    schedule's due fire times (`fire`, a transaction each), then sleeps until the
    earliest next fire time, as the database's clock measures it."""

    #: After a failure (database down...), try again after this long, at most.
    MAX_PAUSE = 10.0

    def __init__(
        self, fire: Callable[[Schedule], float], schedules: Sequence[Schedule], scope: str
    ) -> None:
        self._fire = fire
        self._schedules = list(schedules)
        self._scope = scope
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"queuetopia-schedules-{scope}", daemon=True
        )

    def start(self) -> None:
        """Start firing in the background."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop firing (a fire under way is finished first, within `timeout`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            waits = []
            try:
                for schedule in self._schedules:
                    waits.append(self._fire(schedule))
                pause = 0.5
            except Exception as exc:
                logger.warning(
                    "schedules could not fire; trying again in %.1f s: %s",
                    pause,
                    exc,
                    extra={"scope": self._scope},
                )
                waits = [pause]
                pause = min(pause * 2, self.MAX_PAUSE)
            self._stop.wait(max(0.0, min(waits, default=self.MAX_PAUSE)))
