"""A `perform` that returns a coroutine (a sync def calling an async function) is a failed
attempt, never a success whose body did not run: on each executor and each database."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable

import pytest

from queuetopia_py import Job, JobGivenUpError, Performer
from queuetopia_py.testing import drain

REFUSED = "perform returned an awaitable (coroutine) from a def: define perform with async def"


async def send_mail(address: str) -> None:
    """The body that must not be counted as run."""


class ReturnsACoroutine(Performer):
    """Forgets to run its coroutine (importable by worker processes)."""

    def perform(self, job: Job) -> object:
        return send_mail(job.params["to"])


@pytest.mark.parametrize("executor", ["inline", "thread", "process"])
def test_a_perform_returning_a_coroutine_fails_its_attempt(
    make_queue: Callable, executor: str
) -> None:
    options = {} if executor == "inline" else {"executor": executor, "poll_interval": 0.2}
    queue = make_queue(performer=ReturnsACoroutine, **options)
    job = queue.create_job("q", "a", {"to": "toto@mail.com"}, max_attempts=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if executor == "inline":
            drain(queue)
        else:
            queue.start()
        with pytest.raises(JobGivenUpError):
            queue.wait_for(job.id, timeout=60)
        gc.collect()
    stored = queue.get_job(job.id)
    assert (stored.done, stored.result, stored.attempts) == (False, None, 1)
    assert REFUSED in stored.error
    # Closed, not left to the garbage collector (in this process; a worker's own warnings
    # would go to its stderr).
    assert not [w for w in caught if "never awaited" in str(w.message)]
