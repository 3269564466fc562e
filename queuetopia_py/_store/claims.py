"""Polls and claims: which queues of a scope are due, and taking a queue's lock and its
head job for an attempt.

A poll reads the queues table by the index on the heads' due times: a queue whose head
is not due (backing off, blocked, scheduled later) is not read at all, whatever is due
behind its head, and the cost of a poll follows the queues it returns. A claim locks the
queue's row and decides from it and its head: busy, not due, interrupted, or taken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from queuetopia_py import defaults
from queuetopia_py._backoff import is_due
from queuetopia_py._schema import WHOLE_SCOPE
from queuetopia_py._store.database import Database
from queuetopia_py._store.jobs import job_from_mapping
from queuetopia_py._store.locks import Busy, Claim, LockStore, NotDue, Taken, new_token
from queuetopia_py._store.queues import NodeScope, QueueBook
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
        where = self.where
        token = new_token()
        first: list[float] = []

        def run() -> Taken:
            # Taken before the database's time is read (and after any wait for SQLite's
            # write lock, taken as the transaction begins): time spent waiting to claim
            # does not eat into the attempt.
            started = time.monotonic()
            first.append(started)
            with where.db.transaction() as conn:
                locked = self.book.lock_with_head(conn, where.scope, queue)
                row, now = locked.row, locked.now
                if row is None or locked.job is None or locked.suspended:
                    return None
                if row.held_by(token):  # our own claim, whose answer was lost
                    assert row.locked_until is not None
                    return Claim(job_from_mapping(locked.job), token, row.locked_until, first[0])
                if row.locked(now):
                    return Busy()
                head = job_from_mapping(locked.job)
                if not is_due(head.next_attempt_at, now):
                    waits = head.next_attempt_at
                    return NotDue(None if waits is None else waits - now)
                if head.round_attempts >= head.max_attempts:
                    return self.records.interrupted(conn, row, head, now)
                claim, lock = self.locks.take(conn, head, now, started, token)
                self.book.write(conn, where.scope, row, head_due=claim.job.next_attempt_at, **lock)
                return claim

        return where.db.retrying(run)
