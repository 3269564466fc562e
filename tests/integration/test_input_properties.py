"""Property-based tests of what `create_job` and `create_jobs` accept: whatever the input
(odd Unicode, deep or large params, NaN, non-string keys, long names), it is stored and
read back exactly, or refused with `InvalidJobError` and nothing is written."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuetopia_py import InvalidJobError, Queuetopia

# One database per test (the fixture), shared by the test's examples: each example
# checks its own job, and the count of jobs tells whether anything was written.
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=8)

# Anything, JSON or not: NaN, infinities, non-string keys, bytes, sets, objects.
odd_values = st.recursive(
    json_scalars
    | st.floats()
    | st.binary(max_size=4)
    | st.sets(st.integers(), max_size=2)
    | st.builds(object),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text() | st.integers() | st.none(), inner, max_size=4)
    ),
    max_leaves=12,
)


def _count(queue: Queuetopia) -> int:
    return len(queue.list_jobs())


def _is_json(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int | str)


@EXAMPLES
@given(params=json_objects)
def test_json_params_are_stored_exactly(make_queue: Callable, params: dict[str, Any]) -> None:
    queue = make_queue()
    job = queue.create_job("q", "a", params)
    stored = queue.get_job(job.id)
    assert stored is not None and stored.params == params == job.params


@EXAMPLES
@given(params=st.dictionaries(st.text() | st.integers(), odd_values, max_size=4))
def test_params_that_are_not_json_are_refused_and_nothing_is_written(
    make_queue: Callable, params: dict[Any, Any]
) -> None:
    queue = make_queue()
    before = _count(queue)
    if _is_json(params):
        assert queue.get_job(queue.create_job("q", "a", params).id).params == params  # type: ignore[union-attr]
        return
    with pytest.raises(InvalidJobError) as refused:
        queue.create_job("q", "a", params)
    assert refused.value.field == "params"
    assert _count(queue) == before


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
def test_lone_surrogates_are_refused(make_queue: Callable, text: str) -> None:
    queue = make_queue()
    for field, args in (
        ("queue", (text, "a", {})),
        ("action", ("q", text, {})),
        ("params", ("q", "a", {"k": text})),
        ("params", ("q", "a", {text: 1})),
        ("params", ("q", "a", {"k": [1, {"deep": text}]})),
    ):
        with pytest.raises(InvalidJobError) as refused:
            queue.create_job(*args)
        assert refused.value.field == field
    assert _count(queue) == 0


@EXAMPLES
@given(name=st.text(max_size=300))
def test_names_are_stored_exactly_or_refused(make_queue: Callable, name: str) -> None:
    queue = make_queue()
    before = _count(queue)
    try:
        job = queue.create_job(name, name, {})
    except InvalidJobError as refused:
        assert refused.field == "queue"
        assert _count(queue) == before
        return
    stored = queue.get_job(job.id)
    assert stored is not None and stored.queue == name and stored.action == name
    assert queue.list_jobs(queue=name) == [stored]


@EXAMPLES
@given(
    items=st.lists(
        st.fixed_dictionaries(
            {"queue": st.sampled_from(["a", "b", " c", ""]), "action": st.just("x")},
            optional={"params": json_objects | st.just({"n": math.nan})},
        ),
        min_size=1,
        max_size=6,
    )
)
def test_create_jobs_writes_all_or_nothing(
    make_queue: Callable, items: list[dict[str, Any]]
) -> None:
    queue = make_queue()
    before = _count(queue)
    for item in items:
        item.setdefault("params", {})
    valid = all(item["queue"] in ("a", "b") and _is_json(item["params"]) for item in items)
    if not valid:
        with pytest.raises(InvalidJobError) as refused:
            queue.create_jobs(items)
        assert str(refused.value.field).startswith("jobs[")
        assert _count(queue) == before
        return
    created = queue.create_jobs(items)
    assert [(j.queue, j.params) for j in created] == [(i["queue"], i["params"]) for i in items]
    assert _count(queue) == before + len(items)


@pytest.mark.parametrize("depth", [30, 31, 32, 1000])
def test_deeply_nested_params(make_queue: Callable, depth: int) -> None:
    queue = make_queue()
    params: dict[str, Any] = {"leaf": 1}  # `depth` objects, the innermost value inside all
    for _ in range(depth - 1):
        params = {"n": params}
    if depth <= 31:
        assert queue.get_job(queue.create_job("q", "a", params).id).params == params  # type: ignore[union-attr]
    else:
        with pytest.raises(InvalidJobError, match="nested deeper than 31"):
            queue.create_job("q", "a", params)
        assert _count(queue) == 0


def test_large_params_are_stored_exactly(make_queue: Callable) -> None:
    # About 6.3 MB of JSON text (each "é" escaped as 6 bytes): above the default limit.
    queue = make_queue(max_params_bytes=8 * 1024 * 1024)
    params = {"blob": "é" * 1_000_000, "items": list(range(50_000))}
    job = queue.create_job("q", "a", params)
    assert queue.get_job(job.id).params == params  # type: ignore[union-attr]
