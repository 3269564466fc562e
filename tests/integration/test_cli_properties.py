"""Property-based tests of what the command line accepts: whatever text is given as a
job's params (odd Unicode, huge or deeply nested JSON, NaN, non-objects), its names or
its numbers and durations, `queuetopia jobs create` stores exactly that (read back
through the library), or refuses it with a one-line error and a non-zero exit code,
without a traceback and without writing anything. The operations commands that take
numbers and names refuse bad ones the same way."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from test_input_properties import EXAMPLES, _is_json, json_objects, odd_values

from queuetopia_py import Queuetopia
from queuetopia_py._cli import cli
from queuetopia_py._job import MAX_DURATION

SCOPE = "cli-props"


@pytest.fixture
def client(url: str) -> Iterator[Queuetopia]:
    """A Queuetopia of SCOPE (never started), to read back what the commands wrote."""
    instance = Queuetopia(repo=url, scope=SCOPE)
    yield instance
    instance.stop()


def create(url: str, *args: str, options: tuple[str, ...] = (), stdin: str | None = None) -> Result:
    """`queuetopia jobs create --json OPTIONS -- ARGS`: `--` lets a name or params start
    with a dash."""
    command = ["jobs", "create", "--scope", SCOPE, "--repo", url, "--json", *options, "--", *args]
    return CliRunner().invoke(cli, command, input=stdin)


def created(result: Result, client: Queuetopia) -> Any:
    """The job the command printed, as read back through the library."""
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    job = client.get_job(json.loads(result.stdout)["id"])
    assert job is not None
    return job


def assert_refused(result: Result, client: Queuetopia, before: int) -> None:
    """A non-zero exit code with an `Error:` line on stderr, no traceback, nothing
    printed on stdout, and no job written."""
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert count(client) == before


def count(client: Queuetopia) -> int:
    return len(client.list_jobs())


def depth(value: Any) -> int:
    """How many lists and objects are nested in `value`."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def strict_object(text: str) -> dict[str, Any] | None:
    """What `text` holds if it is a JSON object that must be accepted: standard JSON (no
    NaN or infinities, no key twice in an object) that the library stores (finite
    numbers, at most 31 nested lists and objects, valid Unicode); else None."""

    def refuse(_: str) -> Any:
        raise ValueError

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError
        return dict(pairs)

    try:
        value = json.loads(text, parse_constant=refuse, object_pairs_hook=members)
        json.dumps(value, ensure_ascii=False).encode()  # fails on a lone surrogate
        valid = isinstance(value, dict) and _is_json(value) and depth(value) <= 31
    except (ValueError, RecursionError, UnicodeEncodeError):
        return None
    return value if valid else None


def as_text(value: Any, ascii_only: bool, indent: int | None) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, indent=indent)


@EXAMPLES
@given(params=json_objects, ascii_only=st.booleans(), indent=st.none() | st.integers(0, 2))
def test_json_params_are_stored_exactly(
    url: str, client: Queuetopia, params: dict[str, Any], ascii_only: bool, indent: int | None
) -> None:
    job = created(create(url, "q", "a", as_text(params, ascii_only, indent)), client)
    assert job.params == params


# Text that is often JSON, and often almost: NaN and infinities, numbers out of range,
# non-objects, keys given twice, escapes of lone surrogates, truncations.
almost_json = st.one_of(
    st.builds(lambda v: json.dumps(v, allow_nan=True, default=repr), odd_values),
    st.builds(lambda v: json.dumps({"v": v}, allow_nan=True, default=repr), odd_values),
    st.sampled_from(
        [
            '{"n": NaN}',
            '{"n": -Infinity}',
            '{"n": 1e400}',
            '{"n": -1E309}',
            '{"n": 1e-400}',
            '{"n": 123456789012345678901234567890}',
            '{"n": %s}' % ("9" * 5000),
            '{"k": 1, "k": 2}',
            '{"k": {"x": 1, "x": 1}}',
            '{"s": "\\ud800"}',
            '{"\\udfff": 1}',
            '{"s": "\\u0000"}',
            '{"s": "\\ud83d\\ude00"}',
            "[]",
            "null",
            '"{}"',
            "",
            "{",
            "{}}",
            "{'a': 1}",
        ]
    ),
    st.text(max_size=20),
).flatmap(lambda text: st.sampled_from([text, text[: len(text) // 2], f" {text}\n"]))


@EXAMPLES
@given(text=almost_json)
def test_params_text_is_stored_as_json_reads_it_or_refused(
    url: str, client: Queuetopia, text: str
) -> None:
    before = count(client)
    result = create(url, "q", "a", text)
    expected = strict_object(text)
    if expected is None:
        assert_refused(result, client, before)
    else:
        assert created(result, client).params == expected


@pytest.mark.parametrize("levels", [31, 32, 5000, 200_000])
def test_deeply_nested_params_are_stored_or_refused(
    url: str, client: Queuetopia, levels: int
) -> None:
    text = '{"n": ' * levels + "1" + "}" * levels
    result = create(url, "q", "a", text)
    if levels <= 31:
        assert depth(created(result, client).params) == levels
    else:
        assert_refused(result, client, 0)
        assert "nested" in result.stderr


def test_large_params_are_read_from_standard_input_and_stored_exactly(
    url: str, client: Queuetopia
) -> None:
    # About 0.8 MB of JSON text, under max_params_bytes (1 MiB by default).
    params = {"blob": "é\U0001f600" * 40_000, "items": list(range(10_000))}
    job = created(create(url, "q", "a", "-", stdin=json.dumps(params)), client)
    assert job.params == params
    too_large = {"blob": "é\U0001f600" * 60_000}
    refused = create(url, "q", "a", "-", stdin=json.dumps(too_large))
    assert refused.exit_code == 1 and "more than max_params_bytes" in refused.stderr


def is_name(text: str) -> bool:
    """Whether `text` is a name the library accepts (see configuration.md#names)."""
    return bool(text) and text.strip() == text and len(text) <= 255 and "\x00" not in text


names = st.text(max_size=300) | st.sampled_from(["-", "--x", "-h", "x" * 255, "x" * 256])


@EXAMPLES
@given(queue=names, action=names)
def test_names_are_stored_exactly_or_refused(
    url: str, client: Queuetopia, queue: str, action: str
) -> None:
    before = count(client)
    result = create(url, queue, action)
    if not (is_name(queue) and is_name(action)):
        assert_refused(result, client, before)
        return
    job = created(result, client)
    assert (job.queue, job.action) == (queue, action)
    assert client.list_jobs(queue=queue)[-1] == job  # examples share the database


@EXAMPLES
@given(scope=names)
def test_scopes_are_used_exactly_or_refused(url: str, scope: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["jobs", "create", "--repo", url, "--json", "--scope", scope, "--force", "--", "q", "a"],
    )
    acceptable = is_name(scope)
    reader = Queuetopia(repo=url, scope=scope if acceptable else "other")
    try:
        if not acceptable:
            assert_refused(result, reader, 0)
            return
        job = reader.get_job(json.loads(result.stdout)["id"])
        assert job is not None and job.scope == scope
    finally:
        reader.stop()


# What a user may type as a number: numbers of every size, NaN and infinities in the
# spellings Python reads, and text that is no number at all.
number_text = st.one_of(
    st.floats().map(repr),
    st.integers().map(str),
    st.integers(-(10**30), 10**30).map(lambda n: f"{n}e-3"),
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-Infinity", "1e400", "0", "-0", "1_000"]),
    st.sampled_from(["", " ", "1s", "0x10", "١٢", "½", "10**9", "3153600000", "3153600000.5"]),
    st.text(max_size=8),
)


def seconds_of(text: str, *, positive: bool) -> timedelta | None:
    """The duration `text` must be stored as, or None if it must be refused: a finite
    number of seconds, at least 0 (above 0 if `positive`), at most MAX_DURATION."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION.total_seconds():
        return None
    delta = timedelta(seconds=seconds)
    return None if positive and delta <= timedelta(0) else delta


@EXAMPLES
@given(timeout=number_text, backoff=number_text)
def test_durations_are_stored_or_refused(
    url: str, client: Queuetopia, timeout: str, backoff: str
) -> None:
    before = count(client)
    result = create(url, "q", "a", options=("--timeout", timeout, "--max-backoff", backoff))
    expected_timeout = seconds_of(timeout, positive=True)
    expected_backoff = seconds_of(backoff, positive=False)
    if expected_timeout is None or expected_backoff is None:
        assert_refused(result, client, before)
        return
    job = created(result, client)
    assert (job.timeout, job.max_backoff) == (expected_timeout, expected_backoff)


@EXAMPLES
@given(attempts=number_text)
def test_max_attempts_is_stored_or_refused(url: str, client: Queuetopia, attempts: str) -> None:
    before = count(client)
    result = create(url, "q", "a", options=("--max-attempts", attempts))
    try:
        expected: int | None = int(attempts)  # as click reads it
    except ValueError:
        expected = None
    if expected is None or not 1 <= expected <= 2**31 - 1:
        assert_refused(result, client, before)
        return
    assert created(result, client).max_attempts == expected


instants = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.none() | st.timezones(),
)


@EXAMPLES
@given(when=instants)
def test_scheduled_at_is_stored_or_refused(url: str, client: Queuetopia, when: datetime) -> None:
    before = count(client)
    result = create(url, "q", "a", options=("--scheduled-at", when.isoformat()))
    if when.utcoffset() is None:
        assert_refused(result, client, before)
        return
    assert created(result, client).scheduled_at == when.astimezone(UTC)


@EXAMPLES
@given(older_than=number_text)
def test_cleanup_takes_a_duration_or_refuses_it(
    url: str, client: Queuetopia, older_than: str
) -> None:
    job = client.create_job("q", "a", {})
    result = CliRunner().invoke(
        cli, ["cleanup", "--scope", SCOPE, "--repo", url, "--older-than", older_than]
    )
    if seconds_of(older_than, positive=False) is None:
        assert_refused(result, client, count(client))
    else:
        assert result.exit_code == 0, result.output
    assert client.get_job(job.id) == job  # a pending job is never deleted


@EXAMPLES
@given(page=number_text, size=number_text, queue=names)
def test_jobs_list_takes_pages_and_names_or_refuses_them(
    url: str, client: Queuetopia, page: str, size: str, queue: str
) -> None:
    args = ["jobs", "list", "--scope", SCOPE, "--repo", url, "--json"]
    result = CliRunner().invoke(cli, [*args, "--page", page, "--page-size", size, "--queue", queue])
    try:
        valid = 1 <= int(page) <= 10**9 and 1 <= int(size) <= 10_000  # as click reads them
    except ValueError:
        valid = False
    if not valid:
        assert_refused(result, client, count(client))
        return
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["jobs"] == []
