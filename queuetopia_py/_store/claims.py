"""Polls and claims: which queues of a scope are due, and taking a queue's lock and its
head job for an attempt.

A poll reads the queues table by the index on the heads' due times: a queue whose head
is not due (backing off, blocked, scheduled later) is not read at all, whatever is due
behind its head, and the cost of a poll follows the queues it returns. A claim locks the
queue's row and decides from it and its head: busy, not due, interrupted, or taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from queuetopia_py import defaults
from queuetopia_py._backoff import is_due
from queuetopia_py._job import Job
from queuetopia_py._schema import WHOLE_SCOPE
from queuetopia_py._store.database import Database, Deferred
from queuetopia_py._store.jobs import job_from_mapping
from queuetopia_py._store.locks import Busy, Claim, LockStore, NotDue, Taken, new_token
from queuetopia_py._store.queues import (
    LEFT,
    Left,
    Locked,
    NodeScope,
    QueueBook,
    QueueRow,
    in_queue_order,
)
from queuetopia_py._store.records import RecordStore


@dataclass(frozen=True, slots=True)
class PollResult:
    """Due, unlocked queues (oldest due first), and how long until the next known due
    time or lock expiry (None: nothing to wait for)."""

    queues: list[str]
    next_in: timedelta | None


class ClaimStore:
    """The poll and claim statements of one scope and one node, with the lock and record
    statements (`locks`, `records`) of the claims they make."""

    def __init__(
        self, db: Database, scope: str, node: str, lease: timedelta = defaults.LOCK_LEASE
    ) -> None:
        self.where = where = NodeScope(db, scope, node, lease)
        self.locks = LockStore(where)
        self.records = RecordStore(where, self.locks)
        self.book = QueueBook(db)
        queues, s = db.tables.queues, db.tables.suspensions
        now = sa.bindparam("b_now", type_=queues.c.head_due.type)
        unlocked = sa.or_(queues.c.token.is_(None), queues.c.locked_until <= now)
        suspended = sa.exists().where(
            s.c.scope == queues.c.scope, s.c.queue.in_([queues.c.queue, WHOLE_SCOPE])
        )
        self._clock = sa.select(
            db.now(),
            sa.exists().where(s.c.scope == scope, s.c.queue == WHOLE_SCOPE),
        )
        self._due = (
            sa.select(queues.c.queue)
            .where(queues.c.scope == scope, queues.c.head_due <= now, unlocked, ~suspended)
            .order_by(queues.c.head_due, queues.c.queue)
            .limit(sa.bindparam("b_limit"))
        )
        # When to look again: the next head to fall due, or the next lock to expire on a
        # queue whose head is due (its holder may be dead).
        self._next = sa.select(
            sa.select(sa.func.min(queues.c.head_due))
            .where(queues.c.scope == scope, queues.c.head_due > now)
            .scalar_subquery(),
            sa.select(sa.func.min(queues.c.locked_until))
            .where(
                queues.c.scope == scope,
                queues.c.locked_until > now,
                queues.c.head_due <= now,
            )
            .scalar_subquery(),
        )

    def poll(self, limit: int) -> PollResult:
        """Up to `limit` queues whose head is due and which no live lock holds, oldest
        due first, leaving out suspended ones; and when to look again."""

        def run() -> PollResult:
            with self.where.db.transaction() as conn:
                now, scope_suspended = conn.execute(self._clock).one()
                if scope_suspended:
                    return PollResult([], None)
                params = {"b_now": now, "b_limit": limit}
                queues = list(conn.execute(self._due, params).scalars()) if limit > 0 else []
                next_head, next_lock = conn.execute(self._next, params).one()
            times: list[datetime] = [t for t in (next_head, next_lock) if t is not None]
            return PollResult(queues, min(times) - now if times else None)

        return self.where.db.retrying(run)

    def claim(self, queue: str) -> Taken:
        """Take `queue`'s lock and its head job if the head is due.

        None when the queue has no pending work or is suspended; `Busy` when another
        claim holds it; `NotDue` when its head may not start yet; `Interrupted` when its
        head's last attempt never ended (the head met its failure mode).
        """
        return self.claim_all([ClaimRequest(queue)])[0]

    def claim_all(self, requests: Sequence[ClaimRequest]) -> list[Taken]:
        """`claim` each request's queue (all different), in as few transactions as the
        queues' rows allow: one, unless some are busy; what each claim gave, in order.

        Rows are locked in the order of the queues' names, and only a transaction's
        first claim waits for its row: a claim whose row is busy (or whose head met its
        failure mode, which may create a job in another queue) is left to a transaction
        of its own after, so that a transaction never waits while it holds a row."""
        return in_queue_order(
            self.where.db, requests, lambda request: request.queue, self._claim_one
        )

    def _claim_one(
        self, conn: Connection, request: ClaimRequest, started: float, writes: Deferred, first: bool
    ) -> Taken | Left:
        """Make one claim in the transaction of `conn` (see `in_queue_order`), holding its
        writes back in `writes`."""
        where = self.where
        if first:
            locked: Locked | None = self.book.lock_with_head(conn, where.scope, request.queue)
        else:
            locked = self.book.try_lock_with_head(conn, where.scope, request.queue)
        if locked is None:
            return LEFT
        outcome = self._decide(locked, request)
        if isinstance(outcome, _Exhausted):
            if not first:
                return LEFT  # a transaction of its own, after
            writes.flush(conn)  # its failure mode reads the jobs as they stand
            return self.records.interrupted(conn, outcome.row, outcome.head, outcome.now)
        if isinstance(outcome, _Take):
            claim, lock = self.locks.take(
                conn, outcome.head, outcome.now, started, request.token, writes
            )
            if outcome.row.token is not None:  # an expired lock of another claim
                claim = replace(claim, taken_over=True)
            head_due = claim.job.next_attempt_at
            self.book.write(conn, where.scope, outcome.row, writes, head_due=head_due, **lock)
            return claim
        return outcome

    def _decide(self, locked: Locked, request: ClaimRequest) -> Taken | _Take | _Exhausted:
        """What a claim makes of its queue's row and head, read under the row's lock."""
        row, now = locked.row, locked.now
        if row is None or locked.job is None or locked.suspended:
            return None
        if row.held_by(request.token):  # our own claim, whose answer was lost
            assert row.locked_until is not None and request.first is not None
            return Claim(
                job_from_mapping(locked.job), request.token, row.locked_until, request.first
            )
        if row.locked(now):
            return Busy()
        head = job_from_mapping(locked.job)
        if not is_due(head.next_attempt_at, now):
            waits = head.next_attempt_at
            return NotDue(None if waits is None else waits - now)
        if head.round_attempts >= head.max_attempts:
            return _Exhausted(row, head, now)
        return _Take(row, head, now)


@dataclass(slots=True)
class ClaimRequest:
    """A claim to make of `queue`. Its token, and the start of its first try, stay the
    same through retries: a try that finds its own earlier commit recognises it."""

    queue: str
    token: str = field(default_factory=new_token)
    first: float | None = None


@dataclass(frozen=True, slots=True)
class _Take:
    """The head is due: take it."""

    row: QueueRow
    head: Job
    now: datetime


@dataclass(frozen=True, slots=True)
class _Exhausted:
    """The head's final attempt started but was never recorded: its failure mode."""

    row: QueueRow
    head: Job
    now: datetime
