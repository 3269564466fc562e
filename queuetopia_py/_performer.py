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


def refuse_async(performer: type[Performer] | Performer) -> None:
    """Raise `ConfigurationError` if a hook of `performer` (a class, or an instance whose
    hooks may be set on it) is a coroutine function: nothing would await it.

    >>> refuse_async(MailPerformer())   # returns when every hook is a plain function
    """
    owner = (
        performer.__qualname__
        if isinstance(performer, type)
        else f"the {type(performer).__qualname__} instance"
    )
    for name in _HOOKS:
        hook = getattr(performer, name, None)
        # An object whose calls are coroutines is as async as an `async def`.
        if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
            getattr(hook, "__call__", None)  # noqa: B004 (its call, not whether it has one)
        ):
            raise ConfigurationError(
                f"performer: {name} of {owner} is an async def (a coroutine function): "
                f"async performers are not supported yet; define {name} with def"
            )


class Performer:
    """Runs jobs. Subclass it and implement `perform`.

    `perform` returning normally means success, and its return value, if it is JSON, is
    stored as the job's `result`; raising means this attempt failed and the job (the head
    of its queue) is retried after `backoff(job)`, blocking its queue. While it runs,
    `perform` may call `queuetopia_py.report_progress`.

    >>> class MailPerformer(Performer):
    ...     def perform(self, job: Job) -> object:
    ...         send(job.params["email_address"])

    A performer is instantiated once per Queuetopia instance (or per worker process with
    `executor="process"`), so it may hold connections and caches.

    Async performers are not supported yet: a subclass whose `perform`, `backoff`,
    `handle_failed_job` or `handle_succeeded_job` is an `async def` raises
    `ConfigurationError` when it is defined, and an attempt whose `perform` returns a
    coroutine (or any awaitable) fails, the coroutine closed without being run.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_async(cls)

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
