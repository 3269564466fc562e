"""The `Queuetopia` facade: options, job creation and queries, start and stop."""

from __future__ import annotations

import atexit
import functools
import getpass
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, ClassVar, Literal

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine

from queuetopia_py import defaults, listener
from queuetopia_py.errors import (
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
from queuetopia_py.events import Event, EventBus, EventKind, Subscriber, Subscription, process_bus
from queuetopia_py.execution import Executor, ProcessExecutor, ThreadExecutor
from queuetopia_py.job import (
    GIVE_UP,
    Duration,
    FailureMode,
    Job,
    NewJob,
    Page,
    to_max_attempts,
    to_on_failure,
    to_timedelta,
    validate_name,
    validate_new_job,
)
from queuetopia_py.performer import Performer
from queuetopia_py.scheduler import RunState, Scheduler
from queuetopia_py.schema import build_tables
from queuetopia_py.status import Status, Suspension
from queuetopia_py.store.announcements import (
    MAX_QUEUES_ANNOUNCED,
    Announcement,
    announce,
    channel,
)
from queuetopia_py.store.claims import ClaimStore
from queuetopia_py.store.control import ControlStore
from queuetopia_py.store.database import Database, check_schema, create_engine
from queuetopia_py.store.inspection import Inspection
from queuetopia_py.store.jobs import JobStore

logger = logging.getLogger(__name__)

# Seconds after a caller's commit at which the scheduler is woken for a job created
# in that transaction.
_AFTER_COMMIT_WAKES = (0.0, 0.05, 0.5, 2.0)
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
    }
)
_FAILED_ERRORS: dict[str, type[JobFailedError]] = {
    "given_up": JobGivenUpError,
    "cancelled": JobCancelledError,
    "aborted": JobAbortedError,
    "dead_lettered": JobDeadLetteredError,
}


def default_node() -> str:
    """A node name unique to this instance: `host:pid:random`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def default_operator() -> str:
    """Who an operator's action is recorded as by default: `user@host`."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (some containers)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every option of a Queuetopia instance, validated. See docs/configuration.md."""

    repo: str | URL | Engine
    performer: type[Performer] | Performer | None = None
    scope: str = ""
    node: str = field(default_factory=default_node)
    poll_interval: float = defaults.POLL_INTERVAL
    max_concurrency: int = defaults.MAX_CONCURRENCY
    executor: Literal["thread", "process"] = "thread"
    disabled: bool = False
    table_prefix: str = defaults.TABLE_PREFIX
    cleanup_interval: float | None = None
    job_retention: timedelta = defaults.JOB_RETENTION
    timeout: timedelta = defaults.TIMEOUT
    max_backoff: timedelta = defaults.MAX_BACKOFF
    max_attempts: int = defaults.MAX_ATTEMPTS
    on_failure: str = GIVE_UP
    lock_lease: timedelta = defaults.LOCK_LEASE
    statement_timeout: timedelta = defaults.STATEMENT_TIMEOUT

    @classmethod
    def parse(cls, options: dict[str, Any], default_scope: str) -> Options:
        """Validate raw keyword options; raise `ConfigurationError` naming the bad one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if options.get("repo") is None:
            raise ConfigurationError("repo: a database URL or SQLAlchemy Engine is required")
        values = dict(options)
        values.setdefault("scope", default_scope)
        try:
            validate_name("scope", values["scope"])
            if "node" in values:
                validate_name("node", values["node"])
            for name in (
                "timeout",
                "max_backoff",
                "job_retention",
                "lock_lease",
                "statement_timeout",
            ):
                if name in values:
                    values[name] = to_timedelta(
                        name, values[name], allow_zero=name not in ("timeout", "statement_timeout")
                    )
            if "max_attempts" in values:
                to_max_attempts(values["max_attempts"])
            if "on_failure" in values:
                values["on_failure"] = to_on_failure(values["on_failure"])
            if "poll_interval" in values:
                values["poll_interval"] = to_timedelta(
                    "poll_interval", values["poll_interval"]
                ).total_seconds()
            if values.get("cleanup_interval") is not None:
                values["cleanup_interval"] = to_timedelta(
                    "cleanup_interval", values["cleanup_interval"]
                ).total_seconds()
        except InvalidJobError as exc:
            raise ConfigurationError(str(exc)) from None
        if values.get("lock_lease", defaults.LOCK_LEASE) < timedelta(seconds=1):
            raise ConfigurationError(
                f"lock_lease: must be at least 1 second (got {values['lock_lease']!r})"
            )
        concurrency = values.get("max_concurrency", defaults.MAX_CONCURRENCY)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigurationError(f"max_concurrency: must be an int >= 1 (got {concurrency!r})")
        if values.get("executor", "thread") not in ("thread", "process"):
            raise ConfigurationError(
                f"executor: must be 'thread' or 'process' (got {values['executor']!r})"
            )
        performer = values.get("performer")
        if performer is not None and not (
            isinstance(performer, Performer)
            or (isinstance(performer, type) and issubclass(performer, Performer))
        ):
            raise ConfigurationError(
                f"performer: must be a Performer subclass or instance (got {performer!r})"
            )
        return cls(**values)


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
        self.options = Options.parse(
            {**cls._class_options, **options}, f"{cls.__module__}.{cls.__qualname__}"
        )
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
        self._jobs = JobStore(self._db, self.scope)
        # Names this instance in its announcements, so that it is not woken by its own.
        self._origin = uuid.uuid4().hex
        self._control = ControlStore(self._db, self.scope, self._origin)
        self._inspection = Inspection(self._db, self.scope)
        self._events = EventBus(parent=process_bus)
        self._scheduler: Scheduler | None = None
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
        connection: Connection | None = None,
    ) -> Job:
        """Store a job at the end of `queue` (created by its first job) and return it.

        `scheduled_at` (an aware datetime) delays the job and orders it in its queue;
        by default it is the database's now. `on_failure` says what happens once it has
        used `max_attempts`: "give_up" (the default, or the `on_failure` option), "block"
        (it stays its queue's head until an operator acts) or `MoveTo("queue")` (it moves
        to that dead-letter queue). With `connection`, the job is written in the caller's
        transaction and exists only if the caller commits.
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
        )
        # PostgreSQL: the same statement announces the job to the other nodes.
        announcing = None
        if self._db.dialect == "postgresql":
            announcing = Announcement(self.scope, new.queue, self._origin).to_payload()
        if connection is not None:
            with self._db.transaction(connection) as conn:
                job = self._jobs.insert(conn, new, announcing=announcing)

            self._follow_commit(connection, [job])
            return job

        def insert() -> Job:
            if announcing is not None:  # one statement, committed by itself
                return self._jobs.insert_announced(new, announcing)
            with self._db.transaction() as conn:
                return self._jobs.insert(conn, new)

        job = self._db.retrying(insert, conflicts_only=True)
        self._emit(EventKind.JOB_CREATED, job)
        self._offer([job.queue])
        return job

    def create_jobs(
        self, jobs: Iterable[Mapping[str, Any]], *, connection: Connection | None = None
    ) -> list[Job]:
        """Store several jobs at once, all or none, and return them in the order given.

        Each item is a mapping with the arguments of `create_job`: `queue`, `action`,
        `params`, and optionally `timeout`, `max_backoff`, `max_attempts`,
        `scheduled_at` and `on_failure`. Jobs of one queue keep the order given. An
        invalid item raises `InvalidJobError` naming it (`jobs[3].params: ...`) and
        nothing is written. With `connection`, the jobs join the caller's transaction.

        >>> queue.create_jobs([{"queue": "mails", "action": "send", "params": {"to": t}}
        ...                    for t in recipients])
        """
        news = [self._validate_item(index, item) for index, item in enumerate(jobs)]
        if not news:
            return []
        queues = [new.queue for new in news]
        if connection is not None:
            with self._db.transaction(connection) as conn:
                created = self._jobs.insert_many(conn, news)
                self._announce(conn, queues)
            self._follow_commit(connection, created)
            return created

        def insert() -> list[Job]:
            with self._db.transaction() as conn:
                created = self._jobs.insert_many(conn, news)
                self._announce(conn, queues)
                return created

        created = self._db.retrying(insert, conflicts_only=True)
        for job in created:
            self._emit(EventKind.JOB_CREATED, job)
        self._offer(queues)
        return created

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
    ) -> list[Job]:
        """This scope's jobs in queue order, optionally filtered.

        `available=True` keeps pending jobs (neither done nor ended otherwise), `False`
        the others. `state` keeps one of "pending" (which includes retrying and blocked
        jobs), "done", "given_up", "cancelled", "aborted" or "dead_lettered".
        """
        return self._jobs.list(
            queue=queue,
            action=action,
            available=available,
            state=state,
            limit=limit,
            offset=offset,
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
        items = self._jobs.list(
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
        success (given up, cancelled, aborted, moved) that long ago. Returns how many
        were deleted.

        Deletes in batches of 1000, each in a short transaction of its own, holding the
        scope's cleaner lock: one node at a time cleans a scope. While another node
        cleans it, waits for it to finish, or with `skip_if_busy` returns 0 at once.
        """
        retention = (
            self.options.job_retention
            if older_than is None
            else to_timedelta("older_than", older_than, allow_zero=True)
        )
        deleted = self._jobs.delete_completed(
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
        limit = None if timeout is None else to_timedelta("timeout", timeout, allow_zero=True)
        deadline = None if limit is None else time.monotonic() + limit.total_seconds()
        pause = _WAIT_FIRST_POLL
        while True:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(job_id, self.scope)
            if job.done:
                return job.result
            if job.outcome is not None:
                raise _FAILED_ERRORS[job.outcome](job)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {job_id} still {job.state} after {limit.total_seconds():g} s"
                    if limit is not None
                    else f"job {job_id} still {job.state}"
                )
            remaining = None if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, pause if remaining is None else min(pause, remaining)))
            pause = min(pause * 2, _WAIT_MAX_POLL)

    # -- operations --------------------------------------------------------------------

    def status(self) -> Status:
        """This scope's queues (pending and failed counts, head, lock, suspension) and
        the attempts each node runs, read in one short transaction. Its cost grows with
        the pending work, not with the completed history."""
        return self._inspection.status()

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

    # -- scheduler ---------------------------------------------------------------------

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
        instance = performer() if isinstance(performer, type) else performer
        executor: Executor = (
            ProcessExecutor(performer)
            if self.options.executor == "process"
            else ThreadExecutor(instance)
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
        )
        self._scheduler.start()
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
        if subscription is not None:
            subscription.close()
        finished = True if scheduler is None else scheduler.stop(timeout)
        if self._owns_engine:
            self._db.engine.dispose()
        return finished

    @property
    def running(self) -> bool:
        """Whether the scheduler runs."""
        return self._scheduler is not None and self._scheduler.state is RunState.RUNNING

    def _wake(self) -> None:
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.wake()

    def _announce(self, conn: Connection, queues: list[str]) -> None:
        """Tell the other nodes listening (PostgreSQL) about new work in `queues`."""
        announce(conn, self._db.tables, self.scope, queues, self._origin)

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

    def _follow_commit(self, connection: Connection, jobs: list[Job]) -> None:
        """Once the caller's transaction commits, wake the scheduler and announce `jobs`;
        if it rolls back, forget them."""
        live = [True]

        def committed(_conn: Connection) -> None:
            if live[0]:
                live[0] = False
                self._after_commit(jobs)

        def rolled_back(_conn: Connection) -> None:
            live[0] = False

        event.listen(connection, "commit", committed, once=True)
        event.listen(connection, "rollback", rolled_back, once=True)

    def _after_commit(self, jobs: list[Job]) -> None:
        # SQLAlchemy's "commit" event fires just *before* the database commits, so a
        # poll woken now may not see the jobs yet: wake again shortly after, and announce
        # the jobs once they can be read (never, if the commit failed). They were written
        # in one transaction: when one can be read, all can.
        def follow() -> None:
            started = time.monotonic()
            announced = False
            for delay in _AFTER_COMMIT_WAKES:
                time.sleep(max(0.0, started + delay - time.monotonic()))
                self._wake()
                if not announced:
                    try:
                        announced = self._jobs.get(jobs[-1].id) is not None
                    except Exception:
                        logger.debug("could not read jobs after commit", exc_info=True)
                    if announced:
                        for job in jobs:
                            self._emit(EventKind.JOB_CREATED, job)

        threading.Thread(target=follow, name="queuetopia-after-commit", daemon=True).start()

    def __enter__(self) -> Queuetopia:
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
