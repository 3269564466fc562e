"""The cleaner: deleting a scope's completed jobs, in batches, one node at a time.

A scope's cleaner lock is a row of the locks table (queue `CLEANER_LOCK`, which no queue
can be named: names have no leading space), renewed by each batch and taken over when
the node that held it died while cleaning.
"""

from __future__ import annotations

import functools
import logging
import random
import uuid
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from queuetopia_py._errors import DatabaseError
from queuetopia_py._job import OUTCOMES, JobState
from queuetopia_py._store.database import Database

logger = logging.getLogger("queuetopia_py.store.cleaner")

#: The `queue` of a scope's cleaner lock in the locks table. No queue has this name (names
#: have no leading space), so it never holds up a queue, nor is it taken for one.
CLEANER_LOCK = " cleaner"
#: How long the cleaner's lock lives unless renewed; each batch of deletes renews it, so
#: that the lock of a node that died while cleaning is taken over this long after.
CLEANER_LOCK_LIFETIME = timedelta(seconds=60)
# A node waiting for another's cleaner lock looks again after this long, doubling.
_CLEANER_FIRST_WAIT = 0.05
_CLEANER_MAX_WAIT = 1.0


class _CleanerBusy(Exception):
    pass


class Cleaner:
    """Deletes the completed jobs of one scope."""

    def __init__(self, db: Database, scope: str) -> None:
        self.db = db
        self.scope = scope
        self.jobs = db.tables.jobs

    def delete_completed(
        self,
        older_than: timedelta,
        *,
        include_ended: bool = False,
        batch_size: int = 1000,
        node: str = "",
        skip_if_busy: bool = False,
    ) -> int:
        """Delete this scope's jobs done more than `older_than` ago (and, with
        `include_ended`, those that ended without success that long ago), whose scheduled
        time is that old too, `batch_size` at a time, each batch in a transaction of its
        own.

        Holds the scope's cleaner lock (for `node`) meanwhile, so that one node at a time
        cleans a scope. While another node holds it, returns 0 at once if `skip_if_busy`,
        else waits for it. Each batch renews the lock and runs only while it is held.
        """
        token = self._take_cleaner_lock(node)
        pause = _CLEANER_FIRST_WAIT
        while token is None:
            if skip_if_busy:
                logger.debug("another node is cleaning", extra={"scope": self.scope})
                return 0
            self.db.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, _CLEANER_MAX_WAIT)
            token = self._take_cleaner_lock(node)
        try:
            return self._delete_batches(older_than, include_ended, batch_size, token)
        finally:
            self._release_cleaner_lock(token)

    def _cleaner_lock(self) -> sa.ColumnElement[bool]:
        locks = self.db.tables.locks
        return sa.and_(locks.c.scope == self.scope, locks.c.queue == CLEANER_LOCK)

    def _take_cleaner_lock(self, node: str) -> str | None:
        """Take the scope's cleaner lock: its token, or None while another's is live. An
        expired one (its node died while cleaning) is taken over in place."""
        locks = self.db.tables.locks

        def run() -> str | None:
            token = uuid.uuid4().hex
            try:
                with self.db.transaction() as conn:
                    now = conn.execute(sa.select(self.db.now())).scalar_one()
                    values = {
                        "token": token,
                        "locked_at": now,
                        "locked_by_node": node,
                        "locked_until": now + CLEANER_LOCK_LIFETIME,
                        "job_id": None,
                    }
                    # A plain read first: a live lock is left alone without a write.
                    held = conn.execute(
                        sa.select(locks.c.token, locks.c.locked_until).where(self._cleaner_lock())
                    ).first()
                    if held is not None and held.locked_until > now:
                        return None
                    if held is not None:
                        taken = conn.execute(
                            locks.update()
                            .where(self._cleaner_lock(), locks.c.token == held.token)
                            .values(**values)
                        ).rowcount
                        return token if taken == 1 else None
                    try:
                        conn.execute(
                            locks.insert().values(scope=self.scope, queue=CLEANER_LOCK, **values)
                        )
                    except IntegrityError as exc:  # another node took it just now
                        raise _CleanerBusy from exc
                return token
            except _CleanerBusy:
                return None

        return self.db.retrying(run)

    def _release_cleaner_lock(self, token: str) -> None:
        locks = self.db.tables.locks

        def run() -> None:
            with self.db.transaction() as conn:
                conn.execute(locks.delete().where(self._cleaner_lock(), locks.c.token == token))

        try:
            self.db.retrying(run)
        except DatabaseError:  # it expires by itself
            logger.warning("could not release the cleaner lock", exc_info=True)

    def _delete_batches(
        self, older_than: timedelta, include_ended: bool, batch_size: int, token: str
    ) -> int:
        jobs, locks = self.jobs, self.db.tables.locks
        cutoff = sa.bindparam("cutoff", type_=jobs.c.done_at.type)

        def older(state: JobState) -> list[sa.ColumnElement[bool]]:
            # A job's end comes after its scheduled time (but when an operator ran or
            # withdrew it early): the scheduled time bounds the index range read.
            ended = jobs.c.done_at if state is JobState.DONE else jobs.c.ended_at
            return [jobs.c.state == state, jobs.c.scheduled_at < cutoff, ended < cutoff]

        states = [JobState.DONE, *(OUTCOMES if include_ended else ())]

        def batch(conditions: list[sa.ColumnElement[bool]]) -> int | None:
            with self.db.transaction() as conn:
                now = conn.execute(sa.select(self.db.now())).scalar_one()
                renewed = conn.execute(
                    locks.update()
                    .where(self._cleaner_lock(), locks.c.token == token)
                    .values(locked_until=now + CLEANER_LOCK_LIFETIME)
                ).rowcount
                if renewed != 1:
                    return None  # our lock expired and was taken over: stop
                ids: Sequence[int] = (
                    conn.execute(
                        sa.select(jobs.c.id)
                        .where(jobs.c.scope == self.scope, *conditions)
                        .limit(batch_size),
                        {"cutoff": now - older_than},
                    )
                    .scalars()
                    .all()
                )
                if ids:
                    conn.execute(jobs.delete().where(jobs.c.id.in_(ids)))
            return len(ids)

        deleted = 0
        for conditions in map(older, states):
            while True:
                # Deleting ended jobs is idempotent: every transient failure may be retried.
                count = self.db.retrying(functools.partial(batch, conditions))
                if count is None:
                    logger.warning("lost the cleaner lock; stopping", extra={"scope": self.scope})
                    return deleted
                deleted += count
                if count < batch_size:
                    break
        return deleted
