"""Helpers for your own test suites: check which jobs your code created, and run a
scope's due jobs synchronously, without starting the scheduler.

>>> from queuetopia_py.testing import assert_job_created, drain, refute_job_created
>>> signup(user)                       # your code calls mail_queue.create_job(...)
>>> job = assert_job_created(mail_queue, "mails_queue_1", action="send_mail",
...                          params={"email_address": "toto@mail.com"})
>>> drain(mail_queue)                  # runs it now, on this thread
>>> assert mail_queue.get_job(job.id).done
"""

from __future__ import annotations

from typing import Any

from queuetopia_py._attempts import AttemptRunner
from queuetopia_py._errors import ConfigurationError
from queuetopia_py._event_loop import PerformerLoop
from queuetopia_py._execution import InlineExecutor
from queuetopia_py._job import Job
from queuetopia_py._performer import Performer, is_async
from queuetopia_py._queuetopia import Queuetopia
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Claim, Interrupted

_UNSET: Any = object()


def _matching(
    instance: Queuetopia, queue: str | None, action: str | None, params: Any, attrs: dict[str, Any]
) -> tuple[list[Job], list[Job]]:
    jobs = instance.list_jobs(queue, action=action)
    matches = [
        job
        for job in jobs
        if (params is _UNSET or job.params == params)
        and all(getattr(job, name) == value for name, value in attrs.items())
    ]
    return matches, jobs


def _describe(queue: str | None, action: str | None, params: Any, attrs: dict[str, Any]) -> str:
    wanted = {"queue": queue, "action": action}
    if params is not _UNSET:
        wanted["params"] = params
    wanted.update(attrs)
    return ", ".join(f"{k}={v!r}" for k, v in wanted.items() if v is not None)


def _listing(jobs: list[Job]) -> str:
    if not jobs:
        return "  (none)"
    shown = [
        f"  #{j.id} queue={j.queue!r} action={j.action!r} params={j.params!r} state={j.state}"
        for j in jobs[:20]
    ]
    if len(jobs) > 20:
        shown.append(f"  ... and {len(jobs) - 20} more")
    return "\n".join(shown)


def assert_job_created(
    instance: Queuetopia,
    queue: str | None = None,
    *,
    action: str | None = None,
    params: Any = _UNSET,
    count: int | None = None,
    **attrs: Any,
) -> Job:
    """Assert that the scope of `instance` holds a job matching every given attribute
    (`params` compared whole; other `Job` fields by keyword, e.g. `max_attempts=3`).

    With `count`, exactly that many must match. Returns the first match (queue order).
    """
    matches, jobs = _matching(instance, queue, action, params, attrs)
    wanted = _describe(queue, action, params, attrs)
    if not matches or (count is not None and len(matches) != count):
        expected = "a job" if count is None else f"{count} job(s)"
        raise AssertionError(
            f"expected {expected} with {wanted or 'any attributes'} in scope "
            f"{instance.scope!r}, found {len(matches)}; the jobs there:\n{_listing(jobs)}"
        )
    return matches[0]


def refute_job_created(
    instance: Queuetopia,
    queue: str | None = None,
    *,
    action: str | None = None,
    params: Any = _UNSET,
    **attrs: Any,
) -> None:
    """Assert that no job of the scope of `instance` matches every given attribute."""
    matches, _jobs = _matching(instance, queue, action, params, attrs)
    if matches:
        raise AssertionError(
            f"expected no job with {_describe(queue, action, params, attrs) or 'any attributes'}"
            f" in scope {instance.scope!r}, found:\n{_listing(matches)}"
        )


def drain(
    instance: Queuetopia,
    *,
    performer: Performer | None = None,
    max_attempts: int = 10_000,
) -> list[Job]:
    """Run the due jobs of the scope of `instance` now, on this thread, queue after
    queue in order, until none is due; return the jobs as each attempt left them.

    Everything else works as in the scheduler: order, blocking, backoff (a failed head
    is due again only later, so it is attempted once), failure modes, suspensions,
    hooks and events. Timeouts are not enforced. `performer` defaults to the instance's.
    Raises `RuntimeError` if more than `max_attempts` attempts run (a job that keeps
    creating due jobs).
    """
    chosen = performer if performer is not None else instance.options.performer
    if chosen is None:
        raise ConfigurationError("performer: drain() needs the instance's or one given")
    runner_performer = chosen() if isinstance(chosen, type) else chosen
    db = instance._db
    claims = ClaimStore(db, instance.scope, instance.node, instance.options.lock_lease)
    loop = PerformerLoop() if is_async(runner_performer) else None
    runner = AttemptRunner(
        claims.records,
        InlineExecutor(runner_performer, loop),
        runner_performer,
        instance._events,
        max_result_bytes=instance.options.max_params_bytes,
        loop=loop,
    )
    try:
        return _drained(instance, claims, runner, max_attempts)
    finally:
        if loop is not None:
            loop.close()


def _drained(
    instance: Queuetopia, claims: ClaimStore, runner: AttemptRunner, max_attempts: int
) -> list[Job]:
    attempted: list[Job] = []
    while True:
        progressed = False
        for queue in claims.poll(limit=1000).queues:
            while True:
                claim = claims.claim(queue)
                if isinstance(claim, Interrupted):
                    runner.interrupted(claim)
                    continue
                if not isinstance(claim, Claim):
                    break
                runner.run(claim)
                after = instance.get_job(claim.job.id)
                attempted.append(after if after is not None else claim.job)
                progressed = True
                if len(attempted) > max_attempts:
                    raise RuntimeError(f"drain: more than {max_attempts} attempts ran")
        if not progressed:
            return attempted
