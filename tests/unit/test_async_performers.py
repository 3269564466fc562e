"""The rule of async performers: `async def perform`, and the hooks a performer defines
all of one kind (all `async def` or all `def`); a mix is refused where the class is
defined or the performer given."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

import pytest

from queuetopia_py import ConfigurationError, Job, Performer, Queuetopia
from queuetopia_py._performer import is_async

OTHER_HOOKS = ["backoff", "handle_failed_job", "handle_succeeded_job"]
MIXED = "mixes async def"


async def asynchronous(*args: object) -> None:
    """A coroutine function to set as a hook."""


def synchronous(*args: object) -> None:
    """A plain function to set as a hook."""


class AsyncCall:
    """A callable object whose calls are coroutines."""

    async def __call__(self, *args: object) -> None:
        """Never awaited: refused before."""


class SyncPerformer(Performer):
    def perform(self, job: Job) -> object:
        return None


class AsyncPerformer(Performer):
    async def perform(self, job: Job) -> object:
        return None


def test_an_async_perform_makes_an_async_performer() -> None:
    class Mailer(Performer):
        async def perform(self, job: Job) -> object:
            return None

        async def handle_failed_job(self, job: Job) -> None:
            return None

    assert is_async(Mailer) and is_async(Mailer())
    assert not is_async(SyncPerformer) and not is_async(SyncPerformer())


@pytest.mark.parametrize("hook", OTHER_HOOKS)
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(asynchronous, id="async-def-set-on-the-class"),
        pytest.param(staticmethod(asynchronous), id="async-staticmethod"),
        pytest.param(AsyncCall(), id="object-with-async-call"),
        pytest.param(functools.partial(asynchronous, 1), id="partial-of-async-def"),
    ],
)
def test_an_async_hook_beside_a_def_perform_is_refused_when_the_class_is_defined(
    hook: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=rf"{MIXED} \({hook}\) and def \(perform\)"):
        type("Mixed", (SyncPerformer,), {hook: value})


@pytest.mark.parametrize("hook", OTHER_HOOKS)
def test_a_def_hook_beside_an_async_perform_is_refused(hook: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"{MIXED} \(perform\) and def \({hook}\)"):
        type("Mixed", (AsyncPerformer,), {hook: synchronous})


def test_the_base_classs_own_hooks_go_with_either_kind() -> None:
    # backoff and the handle_* hooks of Performer itself are not the performer's own.
    assert is_async(AsyncPerformer) and not is_async(SyncPerformer)


def test_a_mix_inherited_from_a_mixin_is_refused() -> None:
    class Alerting:
        async def handle_failed_job(self, job: Job) -> None:
            return None

    with pytest.raises(ConfigurationError, match=rf"{MIXED} \(handle_failed_job\)"):

        class Alerted(Alerting, SyncPerformer):  # type: ignore[misc]
            pass


@pytest.mark.parametrize("hook", OTHER_HOOKS)
def test_an_instance_with_a_mix_set_on_it_is_refused_as_the_performer_option(
    hook: str, tmp_path: Path
) -> None:
    performer = SyncPerformer()
    setattr(performer, hook, asynchronous)
    with pytest.raises(ConfigurationError, match=rf"performer: the SyncPerformer instance {MIXED}"):
        Queuetopia(repo=f"sqlite:///{tmp_path / 'q.db'}", performer=performer)


def test_performers_of_one_kind_are_accepted(tmp_path: Path) -> None:
    class Plain(Performer):
        def perform(self, job: Job) -> object:
            return None

        def backoff(self, job: Job) -> timedelta:
            return timedelta(seconds=1)

    class Awaiting(Performer):
        async def perform(self, job: Job) -> object:
            return None

        async def backoff(self, job: Job) -> timedelta:  # type: ignore[override]
            return timedelta(seconds=1)

    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert isinstance(Queuetopia(repo=url, performer=Plain()).options.performer, Plain)
    assert Queuetopia(repo=url, performer=Awaiting).options.performer is Awaiting
