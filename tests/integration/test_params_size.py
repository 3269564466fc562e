"""Params and results have a size limit, `max_params_bytes` (1 MiB by default): larger
params are refused before anything is written, larger results stored as null, and bulk
inserts of big params stay below what each server accepts in one statement."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from queuetopia_py import InvalidJobError, Job, Performer
from queuetopia_py.testing import drain

MIB = 1024 * 1024


def params_of(size: int) -> dict[str, str]:
    """Params whose JSON text is `size` bytes."""
    return {"x": "y" * (size - len('{"x": ""}'))}


def test_params_larger_than_the_limit_are_refused_and_nothing_is_written(
    make_queue: Callable,
) -> None:
    queue = make_queue(scope="sizes")
    queue.create_job("q", "a", params_of(MIB))  # exactly the default limit
    with pytest.raises(InvalidJobError, match=r"params: is 1,048,577 bytes of JSON, more than"):
        queue.create_job("q", "a", params_of(MIB + 1))
    items = [{"queue": "q", "action": "a", "params": params_of(100)} for _ in range(3)]
    items[2]["params"] = params_of(2 * MIB)
    with pytest.raises(InvalidJobError, match=r"jobs\[2\]\.params: is 2,097,152 bytes"):
        queue.create_jobs(items)
    assert len(queue.list_jobs()) == 1


def test_the_limit_is_an_option(make_queue: Callable) -> None:
    small = make_queue(scope="sizes", max_params_bytes=1000)
    with pytest.raises(InvalidJobError, match="more than max_params_bytes"):
        small.create_job("q", "a", params_of(1001))
    large = make_queue(scope="sizes", max_params_bytes=3 * MIB)
    job = large.create_job("q", "a", params_of(3 * MIB))
    assert large.get_job(job.id).params == params_of(3 * MIB)


def test_many_big_params_in_one_call_are_all_stored(make_queue: Callable) -> None:
    # 20 x 1 MiB: more than MariaDB's and MySQL's default max_allowed_packet (16 MiB).
    queue = make_queue(scope="sizes")
    created = queue.create_jobs(
        [{"queue": "q", "action": "a", "params": params_of(MIB)} for _ in range(20)]
    )
    assert [j.id for j in queue.list_jobs()] == [j.id for j in created]
    assert all(j.params == params_of(MIB) for j in queue.list_jobs(limit=2))


class BigResult(Performer):
    def perform(self, job: Job) -> object:
        return "z" * job.params["size"]


def test_a_result_larger_than_the_limit_is_stored_as_null_with_a_warning(
    make_queue: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(scope="sizes", performer=BigResult, max_params_bytes=1000)
    small = queue.create_job("q", "a", {"size": 10})
    big = queue.create_job("q", "a", {"size": 2000})
    with caplog.at_level(logging.WARNING, logger="queuetopia_py"):
        drain(queue)
    assert queue.get_job(small.id).result == "z" * 10
    stored = queue.get_job(big.id)
    assert stored.done and stored.result is None
    assert any(
        "too large" in r.getMessage() and "2,002 bytes" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)  # max_allowed_packet
def test_params_longer_than_a_mariadb_statement_are_refused_as_such(make_queue: Callable) -> None:
    queue = make_queue(scope="sizes", max_params_bytes=64 * MIB)
    with pytest.raises(InvalidJobError, match="max_allowed_packet"):
        queue.create_job("q", "a", params_of(20 * MIB))
    assert queue.list_jobs() == []
