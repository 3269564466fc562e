"""Group commit: items handed over while a batch runs go together in the next batch; an
item alone is done at once; two items with the same key never share a batch; a batch's
error is each of its items' error."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from queuetopia_py._group_commit import GroupCommit


class Batches:
    """A `run_batch` that notes each batch, and can hold the first one until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.seen: list[list[str]] = []
        self.running = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: Sequence[str]) -> list[str]:
        self.seen.append(list(items))
        self.running.set()
        assert self.release.wait(10)
        if "boom" in items:
            raise RuntimeError("batch failed")
        return [item.upper() for item in items]


def submit_in_threads(group: GroupCommit[str, str], items: list[str]) -> dict[str, object]:
    outcomes: dict[str, object] = {}

    def one(item: str) -> None:
        try:
            outcomes[item] = group.submit(item)
        except Exception as exc:
            outcomes[item] = exc

    threads = [threading.Thread(target=one, args=(item,)) for item in items]
    outcomes["_threads"] = threads
    for thread in threads:
        thread.start()
    return outcomes


def until_waiting(group: GroupCommit[str, str], count: int) -> None:
    """Wait until `count` items wait in line (their threads are in `submit`)."""
    for _ in range(1000):
        if len(group._waiting) == count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{len(group._waiting)} items wait, not {count}")


def join(outcomes: dict[str, object]) -> dict[str, object]:
    for thread in outcomes.pop("_threads"):  # type: ignore[attr-defined]
        thread.join(10)
    return outcomes


def test_an_item_alone_is_done_at_once_by_its_own_thread() -> None:
    batches = Batches()
    group = GroupCommit(batches, key=lambda item: item[0])
    assert group.submit("a1") == "A1"
    assert batches.seen == [["a1"]]


def test_items_handed_over_while_a_batch_runs_go_together_in_the_next() -> None:
    batches = Batches(hold_first=True)
    group = GroupCommit(batches, key=lambda item: item[0])
    first = submit_in_threads(group, ["a1"])
    assert batches.running.wait(10)  # the first batch runs, held
    others = submit_in_threads(group, ["b1", "c1", "d1"])
    until_waiting(group, 3)
    batches.release.set()
    assert join(first) == {"a1": "A1"}
    assert join(others) == {"b1": "B1", "c1": "C1", "d1": "D1"}
    assert batches.seen[0] == ["a1"] and sorted(batches.seen[1]) == ["b1", "c1", "d1"]


def test_two_items_with_the_same_key_never_share_a_batch() -> None:
    batches = Batches(hold_first=True)
    group = GroupCommit(batches, key=lambda item: item[0])
    first = submit_in_threads(group, ["x0"])
    assert batches.running.wait(10)
    others = submit_in_threads(group, ["a1", "a2", "b1"])
    until_waiting(group, 3)
    batches.release.set()
    join(first)
    assert join(others) == {"a1": "A1", "a2": "A2", "b1": "B1"}
    assert all(len({item[0] for item in batch}) == len(batch) for batch in batches.seen)


def test_a_batchs_error_is_raised_to_each_of_its_items() -> None:
    batches = Batches(hold_first=True)
    group = GroupCommit(batches, key=lambda item: item)
    first = submit_in_threads(group, ["a"])
    assert batches.running.wait(10)
    others = submit_in_threads(group, ["boom", "c"])
    until_waiting(group, 2)
    batches.release.set()
    assert join(first) == {"a": "A"}
    outcomes = join(others)
    assert all(isinstance(outcomes[item], RuntimeError) for item in ("boom", "c"))
    # The line goes on after an error.
    assert group.submit("d") == "D"


def test_at_most_limit_items_a_batch() -> None:
    batches = Batches(hold_first=True)
    group = GroupCommit(batches, key=lambda item: item, limit=2)
    first = submit_in_threads(group, ["a"])
    assert batches.running.wait(10)
    others = submit_in_threads(group, ["b", "c", "d"])
    until_waiting(group, 3)
    batches.release.set()
    join(first)
    assert len(join(others)) == 3
    assert max(len(batch) for batch in batches.seen) == 2


@pytest.mark.parametrize("count", [1, 8])
def test_every_item_gets_its_own_result(count: int) -> None:
    group = GroupCommit(Batches(), key=lambda item: item)
    items = [f"i{n}" for n in range(count)]
    assert join(submit_in_threads(group, items)) == {item: item.upper() for item in items}
