"""The scheduler of one scope on one node: decides what runs next, and runs it.

A dispatcher thread polls when woken: by APScheduler every `poll_interval`, when a runner
has nothing left to do, and at the next due time it learnt from the last poll. A poll
lists due queues, oldest due work first; up to `max_concurrency` runner threads take
them. New work in a queue (a local `create_job`, or an announcement from another node on
PostgreSQL) is offered to the scheduler directly, without a poll.

A runner claims its queue's lock and head, runs the attempt on the executor, and records
it; while its queue's turn lasts, the record also claims the queue's next job (the lock
passes from job to job). When its turn is over and other queues wait for a runner, it
hands its queue back to the end of that line (round robin). When no queue is left for
it, it waits a while to be handed one, and ends.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from queuetopia_py import defaults
from queuetopia_py._attempts import Attempted, AttemptRunner
from queuetopia_py._backoff import lock_lifetime
from queuetopia_py._event_loop import PerformerLoop
from queuetopia_py._execution import Executor, Outcome, describe_exception
from queuetopia_py._group_commit import GroupCommit
from queuetopia_py._lease import LeaseKeeper
from queuetopia_py._performer import Performer
from queuetopia_py._store.claims import ClaimRequest, ClaimStore
from queuetopia_py._store.database import is_transient
from queuetopia_py._store.locks import Claim, Interrupted, NotDue, Taken
from queuetopia_py.events import EventBus

logger = logging.getLogger("queuetopia_py.scheduler")

# The interval triggers run on APScheduler, whose scheduler and executor log each start,
# stop and run at INFO: under loggers of their own, quiet below WARNING unless a user
# lowers their level (the application's own APScheduler loggers are left alone).
_TRIGGERS = "queuetopia_py"
_triggers_logger = logging.getLogger("queuetopia_py.scheduler.triggers")
for _quiet in (_triggers_logger, logging.getLogger(f"apscheduler.executors.{_TRIGGERS}")):
    if _quiet.level == logging.NOTSET:
        _quiet.setLevel(logging.WARNING)

# After an error in the poll itself (database down...), wait this long, doubling up to
# the poll interval or `_ERROR_PAUSE_MAX`, whichever is shorter.
_ERROR_PAUSE = 0.5
_ERROR_PAUSE_MAX = 10.0
# A poll lists this many due queues beyond the free runners, so that runners go on
# with waiting queues without polling again.
_EXTRA_LISTED = 1000
# While other queues wait for a runner, a runner goes on with its queue for this long
# (then hands it to the end of the line): fast jobs run many to a turn, and a slow job
# gives its turn up after each job. Each turn begins with a claim of its own (a
# transaction of three statements) where its other jobs pass the lock on as they are
# recorded: long enough a turn for the claim to be a small part of it under load.
_TURN = 0.2
# A runner that finds no queue to go on with waits this long to be handed one (by an
# announcement or a poll) before it ends: a warm runner, with its attempt thread and its
# connection, starts new work sooner than a new thread.
_RUNNER_IDLE = 2.0
# A queue whose runner failed outside an attempt (database down, worker process that
# cannot start) is left aside this long, so that a lasting failure does not spin.
_RUNNER_ERROR_PAUSE = 5.0


class RunState(enum.StrEnum):
    """Lifecycle of a scheduler."""

    STOPPED = "stopped"
    RUNNING = "running"
    STOPPING = "stopping"


class Scheduler:
    """Runs the due queues of one scope on this node. Created and driven by `Queuetopia`."""

    def __init__(
        self,
        claims: ClaimStore,
        executor: Executor,
        performer: Performer,
        events: EventBus,
        *,
        poll_interval: float,
        max_concurrency: int,
        cleaner: Callable[[], object] | None = None,
        cleanup_interval: float | None = None,
        max_result_bytes: int = defaults.MAX_PARAMS_BYTES,
        loop: PerformerLoop | None = None,
    ) -> None:
        self.claims = claims
        self.locks = claims.locks
        self.scope = claims.where.scope
        self.executor = executor
        self.performer = performer
        self.attempts = AttemptRunner(
            claims.records,
            executor,
            performer,
            events,
            LeaseKeeper(claims.locks),
            max_result_bytes=max_result_bytes,
            loop=loop,
        )
        self._loop = loop
        self._claims: GroupCommit[ClaimRequest, Taken] = GroupCommit(
            lambda requests: self.claims.claim_all(requests), key=lambda request: request.queue
        )
        self.poll_interval = poll_interval
        self.max_concurrency = max_concurrency
        self.state = RunState.STOPPED
        self._cleaner = cleaner
        self._cleanup_interval = cleanup_interval
        self._wake = threading.Event()
        self._holding: set[str] = set()
        self._active: set[str] = set()
        # Due queues listed by the last poll (or offered) that no runner has taken yet, in
        # line: a dict, for membership at no cost.
        self._waiting: dict[str, None] = {}
        # Queues whose head is not due yet (or whose runner failed): left aside until
        # that monotonic time.
        self._not_due: dict[str, float] = {}
        # Running queues offered new work: their runner claims again before leaving them.
        self._recheck: set[str] = set()
        # Runners waiting for a queue, and the queues handed to them (already active).
        self._idle_runners = 0
        self._handoffs: deque[str] = deque()
        self._active_lock = threading.Lock()
        self._idle = threading.Condition(self._active_lock)
        self._dispatcher: threading.Thread | None = None
        self._triggers: BackgroundScheduler | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start polling and running queues in the background; returns at once."""
        if self.state is not RunState.STOPPED:
            return
        self.state = RunState.RUNNING
        self._triggers = BackgroundScheduler(
            daemon=True,
            logger=_triggers_logger,
            executors={_TRIGGERS: ThreadPoolExecutor(2)},
        )
        triggered = {"executor": _TRIGGERS, "coalesce": True, "max_instances": 1}
        self._triggers.add_job(
            self.wake, "interval", seconds=self.poll_interval, id="poll", **triggered
        )
        if self._cleaner is not None and self._cleanup_interval:
            self._triggers.add_job(
                self._clean, "interval", seconds=self._cleanup_interval, id="cleanup", **triggered
            )
        self._triggers.start()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop,
            name=f"queuetopia-dispatch-{self.scope}",
            daemon=True,
        )
        self._dispatcher.start()
        self.wake()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop starting attempts, let running ones finish, and release their locks.

        Waits at most `timeout` seconds (None: until running attempts are recorded).
        Returns whether every runner has finished.
        """
        if self.state is RunState.STOPPED:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            self.state = RunState.STOPPING
            self._idle.notify_all()  # idle runners end
        if self._triggers is not None:
            self._triggers.shutdown(wait=False)
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        with self._idle:
            # Runners that only hold the lock of a timed-out, unkillable thread are not
            # waited for: they keep renewing it until the thread returns or this
            # process exits (then the lock expires).
            while self._active - self._holding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(remaining)
            finished = not self._active - self._holding
            if self._holding:
                logger.warning(
                    "stopped while timed-out attempts still run in queues %s; their locks "
                    "are renewed until they return",
                    sorted(self._holding),
                    extra={"scope": self.scope},
                )
        self.executor.close()
        if self._loop is not None:
            self._loop.close()
        self.state = RunState.STOPPED
        return finished

    def wake(self) -> None:
        """Poll now instead of at the next interval."""
        self._wake.set()

    def offer(self, queue: str | None) -> None:
        """`queue` has new due work (None: somewhere in the scope): run it now.

        A queue that is running is claimed again by its runner before it leaves it; one
        that is not gets a runner at once if one is free, else it waits in line.
        """
        if queue is None:
            self.wake()
            return
        start = False
        with self._active_lock:
            if self.state is not RunState.RUNNING:
                return
            self._not_due.pop(queue, None)
            if queue in self._active:
                self._recheck.add(queue)
            elif len(self._active) < self.max_concurrency:
                self._active.add(queue)
                start = self._launch_locked(queue)
            else:
                self._waiting.setdefault(queue)
        if start:
            self._start_runner(queue)

    def reconsider(self, queue: str) -> None:
        """Forget that `queue`'s head was not due (an operator acted on it), and poll."""
        with self._active_lock:
            self._not_due.pop(queue, None)
        self.wake()

    @property
    def running_queues(self) -> set[str]:
        """Queues this node is running now."""
        with self._active_lock:
            return set(self._active)

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        wait: float | None = 0.0
        pause = _ERROR_PAUSE
        failing_since: float | None = None  # monotonic time of the first failed poll
        log = {"scope": self.scope}
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            if self.state is not RunState.RUNNING:
                return
            try:
                wait = self._poll()
            except Exception as exc:
                if failing_since is not None:
                    logger.debug("poll failed again; retrying in %.1f s", pause, extra=log)
                elif is_transient(exc):
                    logger.warning(
                        "database unreachable; polling again with a backoff (at most %.0f s)"
                        " until it is back: %s",
                        _ERROR_PAUSE_MAX,
                        exc,
                        extra=log,
                    )
                else:
                    logger.exception("poll failed; retrying in %.1f s", pause, extra=log)
                failing_since = failing_since or time.monotonic()
                wait, pause = pause, min(pause * 2, self.poll_interval, _ERROR_PAUSE_MAX)
                continue
            if failing_since is not None:
                logger.warning(
                    "polling again after %.1f s of failures",
                    time.monotonic() - failing_since,
                    extra=log,
                )
                failing_since = None
            pause = _ERROR_PAUSE

    def _poll(self) -> float | None:
        with self._active_lock:
            now = time.monotonic()
            self._not_due = {q: t for q, t in self._not_due.items() if t > now}
            free = self.max_concurrency - len(self._active)
        # The queues this node runs are locked (so not listed); those it leaves aside are
        # left out here: no list of names travels to the database.
        result = self.claims.poll(free + _EXTRA_LISTED)
        to_start = []
        with self._active_lock:
            # Queues offered while the poll ran stay in line after the listed ones.
            listed = dict.fromkeys(
                q for q in result.queues if q not in self._active and q not in self._not_due
            )
            offered = [q for q in self._waiting if q not in self._active and q not in listed]
            self._waiting = {**listed, **dict.fromkeys(offered)}
            while self._waiting and len(self._active) < self.max_concurrency:
                queue = self._pop_waiting()
                self._active.add(queue)
                if self._launch_locked(queue):
                    to_start.append(queue)
            next_local = min(self._not_due.values(), default=None)
        for queue in to_start:
            self._start_runner(queue)
        waits = [] if result.next_in is None else [result.next_in.total_seconds()]
        if next_local is not None:
            waits.append(next_local - time.monotonic())
        # The interval trigger wakes the dispatcher anyway; a far-off due time (a job
        # scheduled years ahead) must not overflow the wait.
        return max(0.0, min(*waits, self.poll_interval)) if waits else None

    def _pop_waiting(self) -> str:
        """The first queue in line, taken out of it (called with the lock held)."""
        queue = next(iter(self._waiting))
        del self._waiting[queue]
        return queue

    def _launch_locked(self, queue: str) -> bool:
        """Hand the newly active `queue` to an idle runner if one waits; else say that a
        runner thread must be started for it (outside the lock)."""
        if self._idle_runners > len(self._handoffs):
            self._handoffs.append(queue)
            self._idle.notify_all()
            return False
        return True

    def _start_runner(self, queue: str) -> None:
        threading.Thread(
            target=self._run, args=(queue,), name="queuetopia-runner", daemon=True
        ).start()

    def _clean(self) -> None:
        try:
            assert self._cleaner is not None
            self._cleaner()
        except Exception:
            logger.exception("job cleanup failed", extra={"scope": self.scope})

    # -- one queue ---------------------------------------------------------------------

    def _next_queue(self, queue: str, *, more: bool, turn: float = 0.0) -> str | None:
        """The queue a runner goes on with after `queue` (None: the runner ends).

        `more` says `queue` may have more due work: it stays with this runner unless
        other queues wait and its turn (begun at monotonic time `turn`) is over, in which
        case it goes to the end of their line.
        """
        with self._idle:
            if queue in self._recheck:
                self._recheck.discard(queue)
                more = True
            if more and self._may_keep_locked(turn):
                return queue
            self._active.discard(queue)
            if more:
                self._waiting.setdefault(queue)
            now = time.monotonic()
            while self._waiting and self.state is RunState.RUNNING:
                candidate = self._pop_waiting()
                if candidate not in self._active and self._not_due.get(candidate, 0) <= now:
                    self._active.add(candidate)
                    return candidate
            self._idle.notify_all()
            return self._wait_for_handoff()

    def _wait_for_handoff(self) -> str | None:
        """Called with the lock held by a runner that has no queue: wait a while to be
        handed one; None when none came (or stopping began) and the runner ends."""
        if self.state is not RunState.RUNNING:
            return None
        self.wake()  # a runner is free: let the dispatcher look for due queues
        self._idle_runners += 1
        try:
            self._idle.wait_for(
                lambda: bool(self._handoffs) or self.state is not RunState.RUNNING,
                _RUNNER_IDLE,
            )
        finally:
            self._idle_runners -= 1
        if self._handoffs and self.state is RunState.RUNNING:
            return self._handoffs.popleft()
        if self.state is not RunState.RUNNING:
            # Queues handed to runners that will not take them are not running.
            for queue in self._handoffs:
                self._active.discard(queue)
            self._handoffs.clear()
            self._idle.notify_all()
        return None

    def _run(self, first: str) -> None:
        queue: str | None = first
        turn = time.monotonic()
        # The claim of the queue's next job, taken as the last success was recorded.
        claim: Taken = None
        try:
            with self.claims.where.db.pinned():
                while queue is not None:
                    if self.state is not RunState.RUNNING:
                        if isinstance(claim, Claim):
                            # Taken with the last record, just before stopping began.
                            self.locks.give_back(claim)
                        break
                    unready = self._prepare()
                    if claim is None:
                        # With the claims other runners make meanwhile, in one transaction.
                        claim = self._claims.submit(ClaimRequest(queue))
                    claim, following = self._step(queue, claim, unready, turn)
                    if following != queue:
                        turn = time.monotonic()
                    queue = following
        except Exception as exc:
            log = {"scope": self.scope, "queue": queue}
            if is_transient(exc):  # the database is down: no traceback for each runner
                logger.warning(
                    "queue runner stopped, database unreachable; leaving the queue aside"
                    " for %.0f s: %s",
                    _RUNNER_ERROR_PAUSE,
                    exc,
                    extra=log,
                )
            else:
                logger.exception(
                    "queue runner failed; leaving the queue aside for %.0f s",
                    _RUNNER_ERROR_PAUSE,
                    extra=log,
                )
            if queue is not None:
                with self._active_lock:
                    self._not_due[queue] = time.monotonic() + _RUNNER_ERROR_PAUSE
        finally:
            self.executor.release()
            if queue is not None:
                with self._idle:
                    self._active.discard(queue)
                    self._idle.notify_all()
            self.wake()

    def _step(
        self, queue: str, claim: Taken, unready: Outcome | None, turn: float
    ) -> tuple[Taken, str | None]:
        """Act on what claiming `queue` gave; return what follows in the queue (a claim
        taken with the record) and the queue the runner goes on with."""
        if isinstance(claim, Interrupted):
            self.attempts.interrupted(claim)
            return None, queue
        if isinstance(claim, NotDue):
            # Looked at again by the next poll at the latest: an operator on another
            # node may retry the head (an action on this node reconsiders the queue at
            # once).
            wait = self.poll_interval
            if claim.wait is not None:
                wait = min(wait, claim.wait.total_seconds())
            self._leave_aside(queue, wait)
            return None, self._next_queue(queue, more=False)
        if isinstance(claim, Claim):
            # While the queue's turn lasts, the success is recorded and the queue's next
            # job claimed in one transaction.
            keep = self._may_keep(turn)
            attempted = self._attempt(claim, unready, claim_next=keep)
            if attempted.following is not None:
                return attempted.following, queue
            # Nothing was claimed. After a success recorded alone, the queue may have
            # more due work; after a success that claimed nothing, it has none. After a
            # failure, its head waits for its backoff (left aside until then, without a
            # claim), or the queue moved on (more work may be due).
            more = not keep
            if attempted.outcome.error is not None:
                retry_in = attempted.retry_in
                more = retry_in is None or retry_in <= 0
                if not more:
                    self._leave_aside(queue, min(retry_in or 0.0, self.poll_interval))
            return None, self._next_queue(queue, more=more, turn=turn)
        return None, self._next_queue(queue, more=False)  # empty, or claimed by another node

    def _leave_aside(self, queue: str, seconds: float) -> None:
        """Leave `queue` out of the polls' listings on this node for `seconds`: the poll
        after that looks at it again."""
        with self._active_lock:
            self._not_due[queue] = time.monotonic() + seconds

    def _may_keep(self, turn: float) -> bool:
        """Whether a runner whose turn began at `turn` may go on with its queue."""
        with self._active_lock:
            return self._may_keep_locked(turn)

    def _may_keep_locked(self, turn: float) -> bool:
        if self.state is not RunState.RUNNING:
            return False
        return not self._waiting or time.monotonic() - turn < _TURN

    def _prepare(self) -> Outcome | None:
        """Get the executor ready; if it cannot be (a worker process whose performer
        does not load), the failure that the next attempt records instead of running."""
        try:
            self.executor.prepare()
        except Exception as exc:
            logger.exception("executor could not get ready", extra={"scope": self.scope})
            return Outcome(describe_exception(exc))
        return None

    def _attempt(self, claim: Claim, unready: Outcome | None, *, claim_next: bool) -> Attempted:
        """Run the attempt and record it (with `claim_next`, claiming what follows it in
        the queue)."""
        attempted = self.attempts.run(claim, unready, claim_next=claim_next)
        if attempted.outcome.wait_stopped is not None:
            self._hold_until_stopped(claim, attempted.outcome.wait_stopped)
        return attempted

    def _hold_until_stopped(self, claim: Claim, wait_stopped: Callable[[float], bool]) -> None:
        """Keep the queue locked while a timed-out attempt's thread still runs."""
        log = {"scope": claim.job.scope, "queue": claim.job.queue, "job_id": claim.job.id}
        logger.warning("attempt timed out but its thread still runs; queue stays locked", extra=log)
        # Renew even while stopping: exclusivity holds for as long as this process (and
        # so the thread) lives; once the process exits, the lock simply expires.
        lease = self.claims.where.lease
        period = max(lock_lifetime(claim.job.timeout, lease).total_seconds() / 3, 0.05)
        with self._idle:
            self._holding.add(claim.job.queue)
            self._idle.notify_all()
        try:
            while not wait_stopped(period):
                if not self.locks.renew(claim):
                    logger.error("lock of a still-running timed-out attempt was lost", extra=log)
                    return
            self.locks.release(claim)
        finally:
            with self._idle:
                self._holding.discard(claim.job.queue)
                self._idle.notify_all()
