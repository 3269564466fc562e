"""Async performers are not supported yet: a performer whose hooks are coroutine functions
is refused where it is defined or given, never run as if it had succeeded."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

import pytest

from queuetopia_py import ConfigurationError, Job, Performer, Queuetopia

HOOKS = ["perform", "backoff", "handle_failed_job", "handle_succeeded_job"]
REFUSED = "async performers are not supported yet"


async def asynchronous(*args: object) -> None:
    """A coroutine function to set as a hook."""


class AsyncCall:
    """A callable object whose calls are coroutines."""

    async def __call__(self, *args: object) -> None:
        """Never awaited: refused before."""


class SyncPerformer(Performer):
    def perform(self, job: Job) -> object:
        return None


def test_an_async_perform_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(ConfigurationError, match=rf"\bperform\b.*{REFUSED}"):

        class MailPerformer(Performer):
            async def perform(self, job: Job) -> object:  # type: ignore[override]
                return None


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(asynchronous, id="async-def-set-on-the-class"),
        pytest.param(staticmethod(asynchronous), id="async-staticmethod"),
        pytest.param(AsyncCall(), id="object-with-async-call"),
        pytest.param(functools.partial(asynchronous, 1), id="partial-of-async-def"),
    ],
)
def test_a_class_with_an_async_hook_is_refused_when_it_is_defined(hook: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"\b{hook}\b.*{REFUSED}"):
        type("AsyncHooked", (SyncPerformer,), {hook: value})


def test_an_async_hook_inherited_from_a_mixin_is_refused() -> None:
    class Alerting:
        async def handle_failed_job(self, job: Job) -> None:
            return None

    with pytest.raises(ConfigurationError, match=rf"handle_failed_job.*{REFUSED}"):

        class Alerted(Alerting, SyncPerformer):  # type: ignore[misc]
            pass


@pytest.mark.parametrize("hook", HOOKS)
def test_an_instance_with_an_async_hook_set_on_it_is_refused_as_the_performer_option(
    hook: str, tmp_path: Path
) -> None:
    performer = SyncPerformer()
    setattr(performer, hook, asynchronous)
    with pytest.raises(ConfigurationError, match=rf"performer: {hook}\b.*{REFUSED}"):
        Queuetopia(repo=f"sqlite:///{tmp_path / 'q.db'}", performer=performer)


def test_sync_hooks_are_accepted(tmp_path: Path) -> None:
    class Plain(Performer):
        def perform(self, job: Job) -> object:
            return None

        def backoff(self, job: Job) -> timedelta:
            return timedelta(seconds=1)

    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert isinstance(Queuetopia(repo=url, performer=Plain()).options.performer, Plain)
    assert Queuetopia(repo=url, performer=Plain).options.performer is Plain
