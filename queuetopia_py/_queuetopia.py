"""The `Queuetopia` facade: options, job creation and queries, start and stop."""

from __future__ import annotations

import asyncio
import atexit
import functools
import getpass
import logging
import os
import socket
import sys
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from sqlalchemy.engine import Connection, Engine

from queuetopia_py import _listener as listener
from queuetopia_py import _tracing as tracing
from queuetopia_py import defaults
from queuetopia_py._commits import CommitFollower
from queuetopia_py._errors import (
    ConfigurationError,
    InvalidJobError,
    JobAbortedError,
    JobCancelledError,
    JobDeadLetteredError,
    JobFailedError,
    JobGivenUpError,
    JobNotFoundError,
    WaitTimeoutError,
)
from queuetopia_py._event_loop import PerformerLoop
from queuetopia_py._execution import Executor, ProcessExecutor, ThreadExecutor
from queuetopia_py._job import (
    Duration,
    FailureMode,
    Job,
    JobState,
    NewJob,
    Page,
    to_timedelta,
    validate_name,
    validate_new_job,
)
from queuetopia_py._options import Options
from queuetopia_py._performer import is_async
from queuetopia_py._scheduler import RunState, Scheduler
from queuetopia_py._schedules import Schedule, ScheduleRunner
from queuetopia_py._schema import build_tables
from queuetopia_py._sources import check_installed
from queuetopia_py._status import Status, Suspension
from queuetopia_py._store.aio import AsyncCalls
from queuetopia_py._store.announcements import MAX_QUEUES_ANNOUNCED, channel
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.cleaner import Cleaner
from queuetopia_py._store.control import ControlStore
from queuetopia_py._store.database import Database, check_schema, create_engine, normalize_url
from queuetopia_py._store.inspection import Inspection
from queuetopia_py._store.jobs import Created, JobStore
from queuetopia_py._store.schedules import ScheduleStore
from queuetopia_py.events import Event, EventBus, EventKind, Subscriber, Subscription, process_bus

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

logger = logging.getLogger("queuetopia_py.queuetopia")

# `wait_for` reads the job again after this long, doubling up to the maximum.
_WAIT_FIRST_POLL = 0.02
_WAIT_MAX_POLL = 0.5
# The keys an item of `create_jobs` may have: the arguments of `create_job`.
_JOB_ITEM_KEYS = frozenset(
    {
        "queue",
        "action",
        "params",
        "timeout",
        "max_backoff",
        "max_attempts",
        "scheduled_at",
        "on_failure",
        "unique_key",
    }
)
# The default scope of `Queuetopia` itself: the name it has had since it was defined in
# the module `queuetopia_py.queuetopia` (jobs stored under it stay in view).
_BASE_SCOPE = "queuetopia_py.queuetopia.Queuetopia"


def default_scope(cls: type) -> str:
    """`<module>.<QualName>` of `cls`, its module named as an import would name it: a
    class of a program run as a script (`python app.py`, module `__main__`) gets the scope
    the same class gets when a worker imports it (`queuetopia worker app:MailQueue`)."""
    module = cls.__module__
    # `__mp_main__`: the same program, loaded again by a spawned multiprocessing child.
    if module in ("__main__", "__mp_main__"):
        main = sys.modules.get(module)
        spec = getattr(main, "__spec__", None)
        path = getattr(main, "__file__", None)
        if spec is not None and spec.name:  # python -m pkg.app
            module = spec.name
        elif path:  # python app.py: what `import app` names it, from its directory
            module = Path(path).stem
    return f"{module}.{cls.__qualname__}"


_FAILED_ERRORS: dict[JobState, type[JobFailedError]] = {
    JobState.GIVEN_UP: JobGivenUpError,
    JobState.CANCELLED: JobCancelledError,
    JobState.ABORTED: JobAbortedError,
    JobState.DEAD_LETTERED: JobDeadLetteredError,
}


class _Wait:
    """The pace of `wait_for`: a first look at once, then looks further and further
    apart, until `timeout` (None: no end)."""

    def __init__(self, timeout: Duration | None) -> None:
        self.limit = None if timeout is None else to_timedelta("timeout", timeout, allow_zero=True)
        self._deadline = (
            None if self.limit is None else time.monotonic() + self.limit.total_seconds()
        )
        self._pause = _WAIT_FIRST_POLL

    def over(self) -> bool:
        """Whether the timeout has passed."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    def pause(self) -> float:
        """Seconds until the next look."""
        pause, self._pause = self._pause, min(self._pause * 2, _WAIT_MAX_POLL)
        if self._deadline is None:
            return pause
        return max(0.0, min(pause, self._deadline - time.monotonic()))


def default_operator() -> str:
    """Who an operator's action is recorded as by default: `user@host`."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (some containers)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


class Queuetopia:
    """A scope of strictly ordered, blocking job queues stored in one SQL table.

    Subclass it with options as class keywords, or pass them to the constructor (these
    win); see `Options` for the list.

    >>> class MailQueue(Queuetopia, repo="sqlite:///jobs.db", performer=MailPerformer):
    ...     pass
    >>> mail_queue = MailQueue(poll_interval=1.0)
    >>> job = mail_queue.create_job("mails_queue_1", "send_mail", {"to": "toto@mail.com"})
    >>> mail_queue.start()   # returns at once; queues run in the background
    >>> mail_queue.stop()    # lets running attempts finish
    """

    _class_options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **options: Any) -> None:
        super().__init_subclass__()
        cls._class_options = {**cls._class_options, **options}

    def __init__(self, **options: Any) -> None:
        cls = type(self)
        scope = _BASE_SCOPE if cls is Queuetopia else default_scope(cls)
        self.options = Options.parse({**cls._class_options, **options}, scope)
        repo = self.options.repo
        self._owns_engine = not isinstance(repo, Engine)
        engine = (
            repo
            if isinstance(repo, Engine)
            # Each runner keeps a connection while it runs its queue; the rest is for
            # polls, progress reports and the application's own calls.
            else create_engine(
                repo,
                pool_size=self.options.max_concurrency + 5,
                statement_timeout=self.options.statement_timeout,
            )
        )
        self._db = Database(engine, build_tables(self.options.table_prefix))
        # The awaitable methods' calls: on PostgreSQL, on an asyncio engine of the same
        # URL (made on the first one), with a pool of its own.
        self._aio = AsyncCalls(
            self._db,
            None if isinstance(repo, Engine) else normalize_url(repo),
            statement_timeout=self.options.statement_timeout,
            pool_size=5,
        )
        self._jobs = JobStore(self._db, self.scope)
        self._cleaner = Cleaner(self._db, self.scope)
        # Tells of the jobs created in callers' transactions once those commit.
        self._commits = CommitFollower(
            lambda job_id: self.get_job(job_id) is not None, self._created
        )
        # Names this instance in its announcements, so that it is not woken by its own.
        self._origin = uuid.uuid4().hex
        self._control = ControlStore(self._db, self.scope, self._origin)
        self._inspection = Inspection(self._db, self.scope)
        self._events = EventBus(parent=process_bus)
        self._scheduler: Scheduler | None = None
        self._schedules = ScheduleStore(self._db, self._jobs)
        self._schedule_runner: ScheduleRunner | None = None
        # The loop `astart` was awaited on, while it starts the scheduler.
        self._app_loop: asyncio.AbstractEventLoop | None = None
        self._subscription: listener.Registration | None = None
        self._stop_at_exit_registered = False

    @property
    def scope(self) -> str:
        """The scope: only this scope's jobs are seen, locked and run."""
        return self.options.scope

    @property
    def node(self) -> str:
        """This instance's node name, recorded in locks and in `attempted_by`."""
        return self.options.node

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine jobs are stored through."""
        return self._db.engine

    # -- jobs --------------------------------------------------------------------------

    def create_job(
        self,
        queue: str,
        action: str,
        params: dict[str, Any],
        *,
        timeout: Duration | None = None,
        max_backoff: Duration | None = None,
        max_attempts: int | None = None,
        scheduled_at: Any = None,
        on_failure: FailureMode | None = None,
        unique_key: str | None = None,
        connection: Connection | None = None,
    ) -> Job:
        """Store a job at the end of `queue` (created by its first job) and return it.

        `scheduled_at` (an aware datetime) delays the job and orders it in its queue;
        by default it is the database's now. `on_failure` says what happens once it has
        used `max_attempts`: "give_up" (the default, or the `on_failure` option), "block"
        (it stays its queue's head until an operator acts) or `MoveTo("queue")` (it moves
        to that dead-letter queue). With `unique_key`, while a pending job of the scope
        (neither done nor ended) has the same key, no job is stored and that job is
        returned. With `connection`, the job is written in the caller's transaction and
        exists only if the caller commits.
        Invalid input raises `InvalidJobError` (a `ValueError`) and writes nothing.

        >>> queue.create_job("mails_queue_1", "send_mail", {"email_address": "a@b.c"},
        ...                  timeout=30, max_backoff=timedelta(minutes=5))
        """
        opts = self.options
        new = validate_new_job(
            queue,
            action,
            params,
            timeout=opts.timeout if timeout is None else timeout,
            max_backoff=opts.max_backoff if max_backoff is None else max_backoff,
            max_attempts=opts.max_attempts if max_attempts is None else max_attempts,
            scheduled_at=scheduled_at,
            on_failure=opts.on_failure if on_failure is None else on_failure,
            max_params_bytes=opts.max_params_bytes,
            unique_key=unique_key,
        )
        return self._create([new], connection)[0]

    def create_jobs(
        self, jobs: Iterable[Mapping[str, Any]], *, connection: Connection | None = None
    ) -> list[Job]:
        """Store several jobs at once, all or none, and return them in the order given.

        Each item is a mapping with the arguments of `create_job`: `queue`, `action`,
        `params`, and optionally `timeout`, `max_backoff`, `max_attempts`,
        `scheduled_at`, `on_failure` and `unique_key` (an item whose key a pending job
        holds, or an earlier item, gets that job). Jobs of one queue keep the order given. An
        invalid item raises `InvalidJobError` naming it (`jobs[3].params: ...`) and
        nothing is written. With `connection`, the jobs join the caller's transaction.

        >>> queue.create_jobs([{"queue": "mails", "action": "send", "params": {"to": t}}
        ...                    for t in recipients])
        """
        news = [self._validate_item(index, item) for index, item in enumerate(jobs)]
        return self._create(news, connection, batch=True) if news else []

    def _create(
        self, news: list[NewJob], connection: Connection | None, *, batch: bool = False
    ) -> list[Job]:
        """Store `news` as `_store` does; with a tracer installed, in the trace of a
        creation (`batch`: by `create_jobs`), whose context each job carries."""
        tracer = tracing.tracer()
        if tracer is None:
            return self._store(news, connection).jobs
        with tracer.publish(self.scope, self.node, news, batch=batch) as publication:
            context = publication.trace_context
            if context is not None:
                news = [replace(new, trace_context=context) for new in news]
            created = self._store(news, connection)
            publication.created(created.jobs, created.new)
        return created.jobs

    def _store(self, news: list[NewJob], connection: Connection | None) -> Created:
        """Store `news` (in the caller's transaction, with `connection`), announce them to
        the other nodes (PostgreSQL) and offer their queues to this node's scheduler."""
        if connection is not None:
            with self._db.transaction(connection) as conn:
                created = self._jobs.create(conn, news, origin=self._origin)
            self._commits.follow(connection, created.new)
            return created

        def insert() -> Created:
            if len(news) == 1:
                return self._jobs.create_one(news[0], origin=self._origin)
            with self._db.transaction() as conn:
                return self._jobs.create(conn, news, origin=self._origin)

        created = self._db.retrying(insert, conflicts_only=True)
        self._created(created.new)
        return created

    def _created(self, created: list[Job]) -> None:
        """Tell of jobs that exist now: their events, and their queues offered."""
        for job in created:
            self._emit(EventKind.JOB_CREATED, job)
        self._offer([job.queue for job in created])

    def _validate_item(self, index: int, item: Mapping[str, Any]) -> NewJob:
        where = f"jobs[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidJobError(where, item, "must be a mapping of create_job's arguments")
        unknown = sorted(set(item) - _JOB_ITEM_KEYS)
        if unknown:
            raise InvalidJobError(
                where,
                item,
                f"unknown key(s) {', '.join(map(str, unknown))}; "
                f"known: {', '.join(sorted(_JOB_ITEM_KEYS))}",
            )
        missing = [k for k in ("queue", "action", "params") if k not in item]
        if missing:
            raise InvalidJobError(where, item, f"missing {', '.join(missing)}")
        opts = self.options
        try:
            return validate_new_job(
                item["queue"],
                item["action"],
                item["params"],
                timeout=opts.timeout if item.get("timeout") is None else item["timeout"],
                max_backoff=opts.max_backoff
                if item.get("max_backoff") is None
                else item["max_backoff"],
                max_attempts=opts.max_attempts
                if item.get("max_attempts") is None
                else item["max_attempts"],
                scheduled_at=item.get("scheduled_at"),
                on_failure=opts.on_failure
                if item.get("on_failure") is None
                else item["on_failure"],
                max_params_bytes=opts.max_params_bytes,
                unique_key=item.get("unique_key"),
            )
        except InvalidJobError as exc:
            raise InvalidJobError(f"{where}.{exc.field}", exc.value, exc.reason) from None

    def get_job(self, job_id: int) -> Job | None:
        """The job with this id, if it exists in this scope."""
        return self._jobs.get(job_id)

    def list_jobs(
        self,
        queue: str | None = None,
        *,
        action: str | None = None,
        available: bool | None = None,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: int | None = None,
    ) -> list[Job]:
        """This scope's jobs in queue order (`scheduled_at`, then creation), optionally
        filtered.

        `available=True` keeps pending jobs (neither done nor ended otherwise), `False`
        the others. `state` keeps one of "pending" (which includes retrying and blocked
        jobs), "done", "given_up", "cancelled", "aborted" or "dead_lettered".

        `after` (a job id) starts the listing after that job: page through a long
        listing with `limit` and the last id of each page, at a cost that follows the
        page, however much history lies before it (`offset` reads what it skips).

        >>> page = queue.list_jobs(state="done", limit=100)
        >>> following = queue.list_jobs(state="done", limit=100, after=page[-1].id)
        """
        if after is not None and (not isinstance(after, int) or isinstance(after, bool)):
            raise InvalidJobError("after", after, "must be a job id (an int)")
        return self._jobs.list_jobs(
            queue=queue,
            action=action,
            available=available,
            state=state,
            limit=limit,
            offset=offset,
            after=after,
        )

    def paginate_jobs(
        self,
        page_size: int = 100,
        page_number: int = 1,
        *,
        queue: str | None = None,
        action: str | None = None,
        available: bool | None = None,
        state: str | None = None,
    ) -> Page:
        """One page (numbered from 1) of `list_jobs`, with the listing's total."""
        for name, value in (("page_size", page_size), ("page_number", page_number)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidJobError(name, value, "must be an int >= 1")
        items = self._jobs.list_jobs(
            queue=queue,
            action=action,
            available=available,
            state=state,
            limit=page_size,
            offset=(page_number - 1) * page_size,
        )
        total = self._jobs.count(queue=queue, action=action, available=available, state=state)
        return Page(items=items, total=total, page_number=page_number, page_size=page_size)

    def cleanup_jobs(
        self,
        older_than: Duration | None = None,
        *,
        include_ended: bool = False,
        skip_if_busy: bool = False,
    ) -> int:
        """Delete this scope's jobs done longer than `older_than` ago (default: the
        `job_retention` option). With `include_ended`, also those that ended without
        success (given up, cancelled, aborted, moved) that long ago. A job run or
        withdrawn before its scheduled time is deleted once that time is as old too.
        Returns how many were deleted.

        Deletes in batches of 1000, each in a short transaction of its own, holding the
        scope's cleaner lock: one node at a time cleans a scope. While another node
        cleans it, waits for it to finish, or with `skip_if_busy` returns 0 at once.
        """
        retention = (
            self.options.job_retention
            if older_than is None
            else to_timedelta("older_than", older_than, allow_zero=True)
        )
        deleted = self._cleaner.delete_completed(
            retention, include_ended=include_ended, node=self.node, skip_if_busy=skip_if_busy
        )
        if deleted:
            logger.info("deleted %d completed jobs", deleted, extra={"scope": self.scope})
        return deleted

    def wait_for(self, job_id: int, timeout: Duration | None = None) -> Any:
        """Wait until the job is done and return its `result`, from any node.

        Raises `JobGivenUpError`, `JobCancelledError`, `JobAbortedError` or
        `JobDeadLetteredError` (all `JobFailedError`, with the `job`) when it ended
        without success, `JobNotFoundError` when it does not exist in this scope, and
        `WaitTimeoutError` (a `TimeoutError`) when `timeout` passes first. A blocked job
        is waited for: an operator may retry it.
        """
        wait = _Wait(timeout)
        while True:
            done, result = self._look(job_id, wait)
            if done:
                return result
            time.sleep(wait.pause())

    def _look(self, job_id: int, wait: _Wait) -> tuple[bool, Any]:
        """Read the job waited for: (True, its result) once done; (False, None) while it
        may still be. Raises as `wait_for` says."""
        # Read without its params (which may be large) until it has ended.
        job = self._jobs.summary(job_id)
        if job is None:
            raise JobNotFoundError(job_id, self.scope)
        if job.done:
            return True, self._jobs.result(job_id)
        if job.outcome is not None:
            raise _FAILED_ERRORS[job.outcome](self._jobs.get(job_id) or job)
        if wait.over():
            limit = wait.limit
            raise WaitTimeoutError(
                f"job {job_id} still {job.state} after {limit.total_seconds():g} s"
                if limit is not None
                else f"job {job_id} still {job.state}"
            )
        return False, None

    # -- operations --------------------------------------------------------------------

    def status(self, limit: int | None = None, *, after: str | None = None) -> Status:
        """This scope's queues with pending work or a lock (pending and failed counts,
        head, lock, suspension), blocked ones first, and the attempts each node runs,
        read in one short transaction.

        With `limit`, one page of at most that many queues; `Status.next_after` then
        names the queue to pass as `after` for the next page. Its cost follows the page
        (and the scope's count of queues), never the jobs' history.

        >>> first = queue.status(limit=100)
        >>> second = queue.status(limit=100, after=first.next_after)
        """
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise InvalidJobError("limit", limit, "must be an int >= 1")
        if after is not None:
            validate_name("after", after)
        return self._inspection.status(limit, after)

    def suspend(
        self, queue: str | None = None, *, by: str | None = None, reason: str | None = None
    ) -> Suspension:
        """Suspend `queue`, or the whole scope when `queue` is None, on every node.

        Persisted: nothing new starts there until `resume`, even across restarts; running
        attempts finish. Nodes see it at their next claim or poll. Suspending again keeps
        the first record, which is returned.
        """
        name = None if queue is None else validate_name("queue", queue)
        who = self._operator(by)
        suspension, created = self._control.suspend(name, who, reason)
        if created:
            self._emit(EventKind.QUEUE_SUSPENDED, None, queue=name, by=who, reason=reason)
        return suspension

    def resume(
        self, queue: str | None = None, *, by: str | None = None, reason: str | None = None
    ) -> bool:
        """Lift the suspension of `queue` (None: of the whole scope; queues suspended one
        by one stay so). Returns whether it was suspended."""
        name = None if queue is None else validate_name("queue", queue)
        resumed = self._control.resume(name)
        if resumed:
            who = self._operator(by)
            self._emit(EventKind.QUEUE_RESUMED, None, queue=name, by=who, reason=reason)
            self._wake()
        return resumed

    def suspensions(self) -> list[Suspension]:
        """This scope's suspensions (the whole scope's first)."""
        return self._control.list_suspensions()

    def cancel_job(self, job_id: int, *, by: str | None = None, reason: str | None = None) -> Job:
        """Withdraw a pending job: it will not run. Returns the cancelled job.

        Raises `JobNotFoundError`, `JobInProgressError` when its attempt runs now (abort
        it instead), or `JobStateError` when it is done or ended already.
        """
        return self._act(EventKind.JOB_CANCELLED, self._control.cancel, job_id, by, reason)

    def abort_job(self, job_id: int, *, by: str | None = None, reason: str | None = None) -> Job:
        """Give a pending job up now so that its queue moves on (a blocked head, say).

        An attempt running now is not interrupted: if it succeeds the job is done, if it
        fails the job stays aborted. Raises `JobNotFoundError`, or `JobStateError` when
        it is done or ended already.
        """
        return self._act(EventKind.JOB_ABORTED, self._control.abort, job_id, by, reason)

    def retry_job(self, job_id: int, *, by: str | None = None, reason: str | None = None) -> Job:
        """Make a job due now: a head waiting for its next attempt runs at once; a job
        given up, aborted, cancelled or blocked gets a new round of `max_attempts`
        attempts, back at its place in its queue.

        Raises `JobNotFoundError`, `JobInProgressError` when its attempt runs now, or
        `JobStateError` when it is done or was moved to a dead-letter queue.
        """
        return self._act(EventKind.JOB_RETRIED, self._control.retry, job_id, by, reason)

    def _act(
        self,
        kind: EventKind,
        action: Any,
        job_id: int,
        by: str | None,
        reason: str | None,
    ) -> Job:
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise InvalidJobError("job_id", job_id, "must be an int")
        if reason is not None and not isinstance(reason, str):
            raise InvalidJobError("reason", reason, "must be a string")
        who = self._operator(by)
        job: Job = action(job_id, who, reason)
        self._emit(kind, job, by=who, reason=reason)
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.reconsider(job.queue)
        return job

    def _operator(self, by: str | None) -> str:
        return default_operator() if by is None else validate_name("by", by)

    def subscribe(
        self, callback: Subscriber, kinds: Iterable[EventKind | str] | None = None
    ) -> Subscription:
        """Call `callback(event)` for each event of this instance (of `kinds` only, if
        given). See `queuetopia_py.events`."""
        return self._events.subscribe(callback, kinds)

    def _emit(self, kind: EventKind, job: Job | None, **fields: Any) -> None:
        fields.setdefault("queue", None if job is None else job.queue)
        self._events.emit(Event(kind=kind, scope=self.scope, node=self.node, job=job, **fields))

    def known_scopes(self) -> list[str]:
        """Every scope with jobs, locks or suspensions in these tables (for tools: it
        reads across scopes)."""
        return self._inspection.known_scopes()

    def scope_of(self, job_id: int) -> str | None:
        """The scope of job `job_id` in these tables, whatever its scope (for tools)."""
        return self._inspection.scope_of(job_id)

    # -- asyncio -----------------------------------------------------------------------
    # Awaitable counterparts of the methods above, with their arguments and behaviour.
    # On PostgreSQL (psycopg) their statements are awaited on the caller's loop; on
    # SQLite and MariaDB/MySQL, or with an engine given as `repo`, each call runs on a
    # worker thread (see `_store.aio`).

    async def acreate_job(
        self,
        queue: str,
        action: str,
        params: dict[str, Any],
        *,
        timeout: Duration | None = None,
        max_backoff: Duration | None = None,
        max_attempts: int | None = None,
        scheduled_at: Any = None,
        on_failure: FailureMode | None = None,
        unique_key: str | None = None,
        connection: AsyncConnection | None = None,
    ) -> Job:
        """`create_job`, awaitable. With `connection` (an `AsyncConnection`), the job is
        written in the caller's transaction and exists only if the caller commits.

        >>> job = await queue.acreate_job("mails_queue_1", "send_mail", {"to": "a@b.c"})
        """
        create = functools.partial(
            self.create_job,
            queue,
            action,
            params,
            timeout=timeout,
            max_backoff=max_backoff,
            max_attempts=max_attempts,
            scheduled_at=scheduled_at,
            on_failure=on_failure,
            unique_key=unique_key,
        )
        if connection is not None:
            return await connection.run_sync(lambda conn: create(connection=conn))
        return await self._aio(create)

    async def acreate_jobs(
        self, jobs: Iterable[Mapping[str, Any]], *, connection: AsyncConnection | None = None
    ) -> list[Job]:
        """`create_jobs`, awaitable (`connection`: an `AsyncConnection`)."""
        items = list(jobs)
        if connection is not None:
            return await connection.run_sync(lambda conn: self.create_jobs(items, connection=conn))
        return await self._aio(self.create_jobs, items)

    async def aget_job(self, job_id: int) -> Job | None:
        """`get_job`, awaitable."""
        return await self._aio(self.get_job, job_id)

    async def alist_jobs(
        self,
        queue: str | None = None,
        *,
        action: str | None = None,
        available: bool | None = None,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: int | None = None,
    ) -> list[Job]:
        """`list_jobs`, awaitable."""
        return await self._aio(
            self.list_jobs,
            queue,
            action=action,
            available=available,
            state=state,
            limit=limit,
            offset=offset,
            after=after,
        )

    async def apaginate_jobs(
        self,
        page_size: int = 100,
        page_number: int = 1,
        *,
        queue: str | None = None,
        action: str | None = None,
        available: bool | None = None,
        state: str | None = None,
    ) -> Page:
        """`paginate_jobs`, awaitable."""
        return await self._aio(
            self.paginate_jobs,
            page_size,
            page_number,
            queue=queue,
            action=action,
            available=available,
            state=state,
        )

    async def await_for(self, job_id: int, timeout: Duration | None = None) -> Any:
        """`wait_for`, awaitable: the loop runs other tasks between looks at the job.

        >>> result = await queue.await_for(job.id, timeout=30)
        """
        wait = _Wait(timeout)
        while True:
            done, result = await self._aio(self._look, job_id, wait)
            if done:
                return result
            await asyncio.sleep(wait.pause())

    async def acleanup_jobs(
        self,
        older_than: Duration | None = None,
        *,
        include_ended: bool = False,
        skip_if_busy: bool = False,
    ) -> int:
        """`cleanup_jobs`, awaitable."""
        return await self._aio(
            self.cleanup_jobs, older_than, include_ended=include_ended, skip_if_busy=skip_if_busy
        )

    async def astatus(self, limit: int | None = None, *, after: str | None = None) -> Status:
        """`status`, awaitable."""
        return await self._aio(self.status, limit, after=after)

    async def asuspend(
        self, queue: str | None = None, *, by: str | None = None, reason: str | None = None
    ) -> Suspension:
        """`suspend`, awaitable."""
        return await self._aio(self.suspend, queue, by=by, reason=reason)

    async def aresume(
        self, queue: str | None = None, *, by: str | None = None, reason: str | None = None
    ) -> bool:
        """`resume`, awaitable."""
        return await self._aio(self.resume, queue, by=by, reason=reason)

    async def asuspensions(self) -> list[Suspension]:
        """`suspensions`, awaitable."""
        return await self._aio(self.suspensions)

    async def acancel_job(
        self, job_id: int, *, by: str | None = None, reason: str | None = None
    ) -> Job:
        """`cancel_job`, awaitable."""
        return await self._aio(self.cancel_job, job_id, by=by, reason=reason)

    async def aabort_job(
        self, job_id: int, *, by: str | None = None, reason: str | None = None
    ) -> Job:
        """`abort_job`, awaitable."""
        return await self._aio(self.abort_job, job_id, by=by, reason=reason)

    async def aretry_job(
        self, job_id: int, *, by: str | None = None, reason: str | None = None
    ) -> Job:
        """`retry_job`, awaitable."""
        return await self._aio(self.retry_job, job_id, by=by, reason=reason)

    async def astart(self) -> None:
        """`start`, awaitable: checks the tables without blocking the loop, then runs the
        scope's queues in the background. An async performer's attempts run on this
        loop (stop with `astop`: a `stop()` that blocks the loop holds them up)."""
        self._app_loop = asyncio.get_running_loop()
        try:
            await self._aio(self.start)
        finally:
            self._app_loop = None

    async def astop(self, timeout: float | None = None) -> bool:
        """`stop`, awaitable: running attempts finish while the loop runs on; then the
        connections of the awaitable methods are closed too."""
        finished = await asyncio.to_thread(self.stop, timeout)
        await self._aio.dispose()
        return finished

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # -- scheduler ---------------------------------------------------------------------

    def _hint_other_scopes(self) -> None:
        """Warn when this scope has no jobs while other scopes of the tables have some:
        jobs created under another scope (another class name, module or `scope=`) never
        run here, and nothing else would say so."""
        known = self._inspection.known_scopes()
        others = [scope for scope in known if scope != self.scope]
        if self.scope in known or not others:
            return
        shown = ", ".join(repr(scope) for scope in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        logger.warning(
            "scope %r has no jobs, while these tables hold jobs of other scopes: %s%s. A job"
            " created under another scope never runs here: where jobs are created and where"
            " they run, give the class the same `scope=` (or the same module and name)",
            self.scope,
            shown,
            more,
            extra={"scope": self.scope},
        )

    def start(self) -> None:
        """Start running this scope's queues in the background; returns at once.

        Does nothing when the `disabled` option is set (create_job keeps working).
        """
        if self.options.disabled:
            logger.info("scheduler disabled; not starting", extra={"scope": self.scope})
            return
        if self._scheduler is not None and self._scheduler.state is not RunState.STOPPED:
            return
        performer = self.options.performer
        if performer is None:
            raise ConfigurationError("performer: required to start the scheduler")
        check_schema(self._db)
        check_installed(self._db, self.options, type(self).__qualname__)
        self._hint_other_scopes()
        instance = performer() if isinstance(performer, type) else performer
        # An async performer's attempts (with the thread executor) and hooks run there.
        loop = PerformerLoop(self._app_loop) if is_async(instance) else None
        executor: Executor = (
            ProcessExecutor(performer)
            if self.options.executor == "process"
            else ThreadExecutor(instance, loop)
        )
        self._scheduler = Scheduler(
            ClaimStore(self._db, self.scope, self.node, self.options.lock_lease),
            executor,
            instance,
            self._events,
            poll_interval=self.options.poll_interval,
            max_concurrency=self.options.max_concurrency,
            # One node cleans a scope at a time; the others skip their turn.
            cleaner=functools.partial(self.cleanup_jobs, skip_if_busy=True),
            cleanup_interval=self.options.cleanup_interval,
            max_result_bytes=self.options.max_params_bytes,
            loop=loop,
        )
        self._scheduler.start()
        # Schedules removed from the code leave nothing behind.
        self._schedules.forget_others([s.name for s in self.options.schedules])
        if self.options.schedules:
            self._schedule_runner = ScheduleRunner(self._fire, self.options.schedules, self.scope)
            self._schedule_runner.start()
        if self._db.dialect == "postgresql":
            self._subscription = listener.subscribe(
                self._db.engine,
                channel(self._db.tables),
                self.scope,
                self._origin,
                self._scheduler.offer,
            )
        if not self._stop_at_exit_registered:
            atexit.register(_stop_at_exit, weakref.ref(self))
            self._stop_at_exit_registered = True
        logger.info("scheduler started", extra={"scope": self.scope, "node": self.node})

    def stop(self, timeout: float | None = None) -> bool:
        """Stop gracefully: no new attempt starts, running ones finish and are recorded.

        Waits at most `timeout` seconds (None: as long as running attempts take).
        Returns whether every running attempt finished.
        """
        scheduler, self._scheduler = self._scheduler, None
        subscription, self._subscription = self._subscription, None
        runner, self._schedule_runner = self._schedule_runner, None
        if runner is not None:
            runner.stop(timeout)
        if subscription is not None:
            subscription.close()
        finished = True if scheduler is None else scheduler.stop(timeout)
        if self._owns_engine:
            self._db.engine.dispose()
        return finished

    def _fire(self, schedule: Schedule) -> float:
        """Create the due jobs of `schedule` (see `ScheduleStore.fire`), tell of them, and
        return the seconds until its next fire time."""
        created, wait = self._schedules.fire(schedule, self._scheduled_job, self._origin)
        self._created(created)
        return wait

    def _scheduled_job(self, schedule: Schedule, fire: datetime) -> NewJob:
        """The job of `schedule` for fire time `fire`, with the instance's job options
        where the schedule has none."""
        opts = self.options
        return validate_new_job(
            schedule.queue,
            schedule.action,
            schedule.params,
            timeout=opts.timeout if schedule.timeout is None else schedule.timeout,
            max_backoff=opts.max_backoff if schedule.max_backoff is None else schedule.max_backoff,
            max_attempts=opts.max_attempts
            if schedule.max_attempts is None
            else schedule.max_attempts,
            scheduled_at=fire,
            on_failure=opts.on_failure if schedule.on_failure is None else schedule.on_failure,
            max_params_bytes=opts.max_params_bytes,
        )

    @property
    def running(self) -> bool:
        """Whether the scheduler runs."""
        return self._scheduler is not None and self._scheduler.state is RunState.RUNNING

    def _wake(self) -> None:
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.wake()

    def _offer(self, queues: list[str]) -> None:
        """Wake this node's scheduler for new work in `queues`."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        distinct = list(dict.fromkeys(queues))
        if len(distinct) > MAX_QUEUES_ANNOUNCED:
            scheduler.wake()
            return
        for queue in distinct:
            scheduler.offer(queue)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} scope={self.scope!r} node={self.node!r}>"


def _stop_at_exit(ref: weakref.ref[Queuetopia]) -> None:
    instance = ref()
    if instance is not None and instance.running:
        instance.stop(timeout=defaults.TIMEOUT.total_seconds())
