"""The `Performer` base class: what users subclass to run their jobs."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

from queuetopia_py._backoff import default_backoff
from queuetopia_py._errors import ConfigurationError
from queuetopia_py._job import Job

#: The methods the scheduler calls on a performer.
_HOOKS = ("perform", "backoff", "handle_failed_job", "handle_succeeded_job")


def _is_coroutine_function(hook: object) -> bool:
    # An object whose calls are coroutines is as async as an `async def`.
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 (its call, not whether it has one)
    )


def is_async(performer: type[Performer] | Performer) -> bool:
    """Whether `performer` (a class, or an instance whose hooks may be set on it) is an
    async performer: its `perform` is an `async def`.

    Raises `ConfigurationError` when it mixes the two kinds: the hooks it defines (those
    it does not inherit from `Performer`) must all be `async def`, or all be `def`.

    >>> is_async(MailPerformer())   # False: every hook is a def
    """
    owner = (
        performer.__qualname__
        if isinstance(performer, type)
        else f"the {type(performer).__qualname__} instance"
    )
    own = {
        name: _is_coroutine_function(hook)
        for name in _HOOKS
        if (hook := getattr(performer, name, None)) is not None
        and getattr(hook, "__func__", hook) is not getattr(Performer, name)
    }
    kinds = set(own.values())
    if len(kinds) > 1:
        asynchronous = sorted(name for name, flag in own.items() if flag)
        synchronous = sorted(name for name, flag in own.items() if not flag)
        raise ConfigurationError(
            f"performer: {owner} mixes async def ({', '.join(asynchronous)}) and def "
            f"({', '.join(synchronous)}) hooks: define them all with async def (they run on "
            "an event loop) or all with def (they run on threads)"
        )
    return own.get("perform", False)


class Performer:
    """Runs jobs. Subclass it and implement `perform`.

    `perform` returning normally means success, and its return value, if it is JSON, is
    stored as the job's `result`; raising means this attempt failed and the job (the head
    of its queue) is retried after `backoff(job)`, blocking its queue. While it runs,
    `perform` may call `queuetopia_py.report_progress`.

    >>> class MailPerformer(Performer):
    ...     def perform(self, job: Job) -> object:
    ...         send(job.params["email_address"])
    >>> class AsyncMailPerformer(Performer):
    ...     async def perform(self, job: Job) -> object:
    ...         await send(job.params["email_address"])

    A performer is instantiated once per Queuetopia instance (or per worker process with
    `executor="process"`), so it may hold connections and caches.

    An async performer defines `async def perform(self, job)` (and any other hook it
    defines with `async def` too: one performer does not mix the two kinds). Its attempts
    run as tasks on an event loop: the application's when the scheduler was started
    with `await queue.astart()` (or `async with`), else a loop thread of the node's own;
    an attempt past its timeout is cancelled. It must not block the loop (use
    `asyncio.to_thread` for blocking calls).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        is_async(cls)  # refuses a mix of async def and def hooks

    def perform(self, job: Job) -> object:
        """Run one attempt of `job`. Raise to fail the attempt."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement perform(job)")

    def backoff(self, job: Job) -> timedelta:
        """The delay before the next attempt of `job`, which just failed.

        `job.round_attempts` counts the attempts of this round, the failed one included
        (`job.attempts` counts all of them; an operator's retry starts a new round). The
        default is Queuetopia's `min((2**(round_attempts - 1) + 1) s, max_backoff)`:
        2 s, 3 s, 5 s, 9 s ...
        """
        return default_backoff(job.round_attempts - 1, job.max_backoff)

    def handle_failed_job(self, job: Job) -> None:
        """Called with the updated job after each failed attempt has been recorded.

        Meant for alerting: `job.state` tells whether it will be retried ("retrying"),
        met its failure mode ("given_up", "blocked", "dead_lettered") or was aborted by an
        operator while the attempt ran ("aborted"). If it raises, the
        exception is logged and appended to the job's recorded error; scheduling goes on.
        """

    def handle_succeeded_job(self, job: Job) -> None:
        """Called with the done job (its `result` included) after its success is recorded.

        If it raises, the exception is logged; the job stays done.
        """
