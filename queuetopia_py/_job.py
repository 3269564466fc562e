"""The `Job` value and the validation of what `create_job` is given."""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from queuetopia_py import defaults
from queuetopia_py._errors import InvalidJobError

#: What a duration option accepts: seconds or a `timedelta`.
Duration = int | float | timedelta
#: The longest duration accepted (a century): durations are stored as 64-bit counts of
#: microseconds, and instants they are added to or subtracted from must stay in range.
MAX_DURATION = timedelta(days=36_500)


class JobState(enum.StrEnum):
    """Every value of `Job.state`. A `StrEnum`: each compares equal to its string."""

    #: Waiting for its turn (or running): it holds its place in its queue.
    PENDING = "pending"
    #: Pending, its last attempt failed: it is retried after its backoff.
    RETRYING = "retrying"
    #: Pending, out of attempts under `on_failure="block"`: it waits for an operator.
    BLOCKED = "blocked"
    #: An attempt succeeded.
    DONE = "done"
    #: Used all its attempts without success (the default failure mode).
    GIVEN_UP = "given_up"
    #: Withdrawn by an operator before it ran to success.
    CANCELLED = "cancelled"
    #: Given up by an operator so that its queue moves on.
    ABORTED = "aborted"
    #: Used all its attempts and was moved to a dead-letter queue.
    DEAD_LETTERED = "dead_lettered"


#: The states a job is stored in (and can be listed by): "pending" covers the retrying and
#: blocked jobs too.
STORED_STATES = (
    JobState.PENDING,
    JobState.DONE,
    JobState.GIVEN_UP,
    JobState.CANCELLED,
    JobState.ABORTED,
    JobState.DEAD_LETTERED,
)
#: The states of a job that ended without success (`Job.outcome`).
OUTCOMES = (JobState.GIVEN_UP, JobState.CANCELLED, JobState.ABORTED, JobState.DEAD_LETTERED)


class OnFailure(enum.StrEnum):
    """What happens to a job once it has used `max_attempts` (`Job.on_failure`)."""

    #: It is given up: it stays in the table, not done, and its queue moves on.
    GIVE_UP = "give_up"
    #: It stays its queue's head, blocking it, until an operator acts.
    BLOCK = "block"
    #: It moves to the dead-letter queue `Job.dead_letter_queue` and its queue moves on.
    MOVE_TO = "move_to"


@dataclass(frozen=True, slots=True)
class MoveTo:
    """Failure mode: when the job has used `max_attempts`, move it to `queue` (a
    dead-letter queue of the same scope) and let its own queue go on.

    >>> queue.create_job("mails", "send_mail", params, on_failure=MoveTo("mails_dead"))
    """

    queue: str

    def __str__(self) -> str:
        return f"{_MOVE_TO}{self.queue}"


_MOVE_TO = "move_to:"

#: What `on_failure` accepts: "give_up" (default), "block", `MoveTo(queue)` or "move_to:<queue>".
FailureMode = str | MoveTo


def to_on_failure(value: object) -> tuple[OnFailure, str | None]:
    """Validate a failure mode; return it and the dead-letter queue it names (if any)."""
    if isinstance(value, MoveTo):
        value = str(value)
    if isinstance(value, str) and value in (OnFailure.GIVE_UP, OnFailure.BLOCK):
        return OnFailure(value), None
    if isinstance(value, str) and value.startswith(_MOVE_TO):
        return OnFailure.MOVE_TO, validate_name("on_failure", value[len(_MOVE_TO) :])
    raise InvalidJobError(
        "on_failure", value, "must be 'give_up', 'block' or MoveTo(queue) ('move_to:<queue>')"
    )


@dataclass(frozen=True, slots=True)
class Progress:
    """What a running attempt last reported with `report_progress` (database time)."""

    message: str | None
    fraction: float | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Intervention:
    """One action taken on a job outside its normal run: by an operator (`cancel`,
    `abort`, `retry`) or by its failure mode (`dead_letter`, `moved_from`)."""

    action: str
    by: str
    at: datetime
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "action": self.action,
            "by": self.by,
            "at": self.at.isoformat(),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Intervention:
        """Read the stored form back."""
        return cls(
            action=str(data["action"]),
            by=str(data["by"]),
            at=datetime.fromisoformat(data["at"]).astimezone(UTC),
            reason=data.get("reason"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSummary:
    """A stored job without its `params` and `result`: what `status()` shows of a
    queue's head and of a running attempt, read without loading what may be large.
    `Job` has every field of it, and those two. Immutable.

    Instants are timezone-aware UTC datetimes; `timeout` and `max_backoff` are timedeltas.
    `attempts` counts the attempts started so far (it never goes down: an operator's retry
    starts a new round at `round_start`). A job is *done* when `done_at` is set; it ended
    without success when `outcome` is set (given up, cancelled, aborted or moved to a
    dead-letter queue, at `ended_at`); otherwise it is pending and runs at
    `next_attempt_at` at the earliest, or waits for an operator when that is `None`
    (`state` "blocked"). `on_failure` says what happens once it has used `max_attempts`;
    with `OnFailure.MOVE_TO`, `dead_letter_queue` names the queue it moves to.
    """

    id: int
    scope: str
    queue: str
    action: str
    timeout: timedelta
    max_backoff: timedelta
    max_attempts: int
    attempts: int
    attempted_at: datetime | None
    attempted_by: str | None
    next_attempt_at: datetime | None
    scheduled_at: datetime
    done_at: datetime | None
    error: str | None
    inserted_at: datetime
    outcome: JobState | None = None
    ended_at: datetime | None = None
    on_failure: OnFailure = OnFailure.GIVE_UP
    dead_letter_queue: str | None = None
    round_start: int = 0
    failing_since: datetime | None = None
    progress: Progress | None = None
    interventions: tuple[Intervention, ...] = ()
    #: While the job is pending, no other pending job of its scope has this key.
    unique_key: str | None = None
    #: The trace context of the span the job was created in (JSON of the W3C
    #: `traceparent` and `tracestate`), when tracing was on: see docs/tracing.md.
    trace_context: str | None = None

    @property
    def sequence(self) -> int:
        """The creation sequence: ties of `scheduled_at` run in this order."""
        return self.id

    @property
    def done(self) -> bool:
        """Whether an attempt succeeded."""
        return self.done_at is not None

    @property
    def given_up(self) -> bool:
        """Whether the job used all its attempts without success and was given up."""
        return self.done_at is None and self.outcome is JobState.GIVEN_UP

    @property
    def pending(self) -> bool:
        """Whether the job still holds its place in its queue (not done, not ended)."""
        return self.done_at is None and self.outcome is None

    @property
    def round_attempts(self) -> int:
        """Attempts made in the current round (compared with `max_attempts`)."""
        return self.attempts - self.round_start

    @property
    def stored_state(self) -> JobState:
        """The state the job is stored (and listed) in: pending (retrying and blocked
        included), done, or how it ended."""
        if self.done_at is not None:
            return JobState.DONE
        return self.outcome or JobState.PENDING

    @property
    def state(self) -> JobState:
        """Where the job stands: pending, retrying, blocked, done, given_up, cancelled,
        aborted or dead_lettered."""
        stored = self.stored_state
        if stored is not JobState.PENDING:
            return stored
        if self.next_attempt_at is None:
            return JobState.BLOCKED
        if self.error is not None and self.round_attempts > 0:
            return JobState.RETRYING
        return JobState.PENDING


@dataclass(frozen=True, slots=True, kw_only=True)
class Job(JobSummary):
    """One stored job, as read from the database: every field of `JobSummary`, and
    `params` (the JSON object it was created with) and `result` (the JSON value its
    successful attempt returned). Immutable.

    >>> job.params["email_address"]
    'toto@mail.com'
    """

    params: dict[str, Any]
    result: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """Validated input of `create_job`, ready to be stored."""

    queue: str
    action: str
    params: dict[str, Any]
    timeout: timedelta
    max_backoff: timedelta
    max_attempts: int
    scheduled_at: datetime | None
    on_failure: OnFailure = OnFailure.GIVE_UP
    dead_letter_queue: str | None = None
    #: The size of `params` as JSON text (0: not measured).
    params_bytes: int = 0
    unique_key: str | None = None
    #: The trace context to store with the job (see `JobSummary.trace_context`).
    trace_context: str | None = None


def validate_name(field: str, value: object) -> str:
    """Return `value` if it is a usable queue, action or scope name, else raise."""
    if not isinstance(value, str):
        raise InvalidJobError(field, value, "must be a string")
    if not value or value.strip() != value:
        raise InvalidJobError(field, value, "must be non-empty, without leading or trailing spaces")
    if len(value) > defaults.MAX_NAME_LENGTH:
        raise InvalidJobError(
            field, value, f"must be at most {defaults.MAX_NAME_LENGTH} characters"
        )
    if "\x00" in value:
        raise InvalidJobError(field, value, "must not contain NUL characters")
    _check_text(field, value)
    return value


def to_timedelta(field: str, value: object, *, allow_zero: bool = False) -> timedelta:
    """Convert seconds or a timedelta to a timedelta, refusing negative (or zero) ones."""
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidJobError(field, value, "must be a finite number of seconds")
        try:
            delta = timedelta(seconds=value)
        except OverflowError:
            raise InvalidJobError(field, value, "is too large") from None
    else:
        raise InvalidJobError(field, value, "must be seconds (int or float) or a timedelta")
    if delta > MAX_DURATION:
        raise InvalidJobError(field, value, f"is too large (at most {MAX_DURATION.days} days)")
    if delta < timedelta(0) or (delta == timedelta(0) and not allow_zero):
        raise InvalidJobError(
            field, value, "must not be negative" if allow_zero else "must be positive"
        )
    return delta


def to_utc(field: str, value: object) -> datetime:
    """Return an aware datetime converted to UTC; naive datetimes are refused."""
    if not isinstance(value, datetime):
        raise InvalidJobError(field, value, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidJobError(field, value, "must be timezone-aware (e.g. tzinfo=UTC)")
    return value.astimezone(UTC)


def _check_json(field: str, value: object, depth: int) -> None:
    """Raise unless `value`, inside `depth` lists and objects, is JSON that every
    supported database stores."""
    if isinstance(value, Mapping | list | tuple) and depth >= defaults.MAX_JSON_NESTING:
        raise InvalidJobError(
            field, "...", f"is nested deeper than {defaults.MAX_JSON_NESTING} levels"
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidJobError(field, key, "object keys must be strings")
            _check_text(field, key)
            _check_json(field, item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(field, item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidJobError(field, value, "NaN and infinities are not JSON")
    elif isinstance(value, str):
        _check_text(field, value)
    elif value is not None and not isinstance(value, int | bool):
        raise InvalidJobError(field, value, "must hold only JSON values")


def _check_text(field: str, text: str) -> None:
    """Refuse a string that is not valid Unicode (a lone surrogate): no database stores it
    alike (MariaDB's JSON refuses even its escape)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJobError(
            field, text, "must be valid Unicode text (it holds a lone surrogate)"
        ) from None


def to_params(value: object, max_bytes: int = defaults.MAX_PARAMS_BYTES) -> dict[str, Any]:
    """Validate that `value` is a JSON object of at most `max_bytes` bytes of JSON text
    and return the copy that will be stored."""
    return sized_params(value, max_bytes)[0]


def sized_params(value: object, max_bytes: int) -> tuple[dict[str, Any], int]:
    """`to_params`, with the size of the params in bytes of JSON text."""
    if not isinstance(value, Mapping):
        raise InvalidJobError("params", value, "must be a JSON object (a dict)")
    _check_json("params", value, 0)
    text = _dumps("params", value)
    size = json_bytes(text)
    if size > max_bytes:
        raise InvalidJobError(
            "params",
            "...",
            f"is {size:,} bytes of JSON, more than max_params_bytes ({max_bytes:,}): store"
            " big data elsewhere and pass a reference to it",
        )
    # A JSON round trip gives exactly what a reader of the row will get back.
    loaded: dict[str, Any] = json.loads(text)
    return loaded, size


def json_bytes(text: str) -> int:
    """The size of JSON text in bytes, as a database stores it (UTF-8)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _dumps(field: str, value: object) -> str:
    """`value` (checked by `_check_json`) as JSON text."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # an int longer than Python converts to text
        raise InvalidJobError(
            field,
            "...",
            f"holds an integer of more than {sys.get_int_max_str_digits()} digits",
        ) from None


def to_max_attempts(value: object) -> int:
    """Validate `max_attempts`: an int of at least 1."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidJobError("max_attempts", value, "must be an int")
    if value < 1:
        raise InvalidJobError("max_attempts", value, "must be at least 1")
    if value > 2**31 - 1:
        raise InvalidJobError("max_attempts", value, "is too large")
    return value


def validate_new_job(
    queue: object,
    action: object,
    params: object,
    *,
    timeout: object,
    max_backoff: object,
    max_attempts: object,
    scheduled_at: object,
    on_failure: object = OnFailure.GIVE_UP,
    max_params_bytes: int = defaults.MAX_PARAMS_BYTES,
    unique_key: object = None,
) -> NewJob:
    """Check every argument of `create_job`; raise `InvalidJobError` naming the first bad one."""
    mode, dead_letter = to_on_failure(on_failure)
    checked_queue = validate_name("queue", queue)
    checked_action = validate_name("action", action)
    stored_params, size = sized_params(params, max_params_bytes)
    return NewJob(
        queue=checked_queue,
        action=checked_action,
        params=stored_params,
        params_bytes=size,
        timeout=to_timedelta("timeout", timeout),
        max_backoff=to_timedelta("max_backoff", max_backoff, allow_zero=True),
        max_attempts=to_max_attempts(max_attempts),
        scheduled_at=None if scheduled_at is None else to_utc("scheduled_at", scheduled_at),
        on_failure=mode,
        dead_letter_queue=dead_letter,
        unique_key=None if unique_key is None else validate_name("unique_key", unique_key),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of `paginate_jobs`: the jobs and the totals of the whole listing."""

    items: list[Job]
    total: int
    page_number: int
    page_size: int

    @property
    def total_pages(self) -> int:
        """Number of pages in the listing (at least 1)."""
        return max(1, -(-self.total // self.page_size))


def to_result(value: object) -> tuple[Any, str | None]:
    """The JSON value stored for what `perform` returned, and, when it is not JSON (then
    None is stored), why."""
    if (
        value is None
        or isinstance(value, bool)
        or (isinstance(value, int) and -(2**63) <= value < 2**63)
        or (isinstance(value, str) and value.isascii())
    ):
        return value, None  # the common results, JSON as they are
    try:
        _check_json("result", value, 0)
        return json.loads(_dumps("result", value)), None
    except (InvalidJobError, TypeError, ValueError) as exc:
        return None, str(exc)


def limit_result(result: Any, max_bytes: int) -> tuple[Any, str | None]:
    """`result` (a JSON value, from `to_result`) if it is at most `max_bytes` bytes of
    JSON text; else None, and why."""
    if result is None or isinstance(result, (bool, int, float)):
        return result, None
    size = json_bytes(json.dumps(result))
    if size <= max_bytes:
        return result, None
    return None, f"result: is {size:,} bytes of JSON, more than max_params_bytes ({max_bytes:,})"


def error_line(error: str | None) -> str:
    """The line of a stored error that says what went wrong: for a Python traceback, the
    exception line after the last "Traceback" header (the first line of its message);
    otherwise the first non-blank line.

    >>> error_line("Traceback (most recent call last):\n  File ...\nValueError: bad\nmore")
    'ValueError: bad'
    """
    lines = (error or "").splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if headers:
        after = lines[headers[-1] + 1 :]
        found = next((line for line in after if line.strip() and not line[0].isspace()), None)
        if found is None:  # the stored traceback was cut before its exception line
            found = next((line for line in reversed(after) if line.strip()), "")
        return found.strip()
    return next((line.strip() for line in lines if line.strip()), "")
