"""Following callers' transactions: jobs created with `create_job(..., connection=...)`
exist only once the caller commits, and only then are their events emitted and their
queues offered to this node's scheduler.

One listener pair per connection (however many jobs and transactions it has), and one
follower thread per `Queuetopia` instance, started when there is something to follow.
SQLAlchemy's "commit" event fires just *before* the database commits, so the follower
looks for the transaction's last job a few times (it is readable once the commit has
happened, and never if the commit failed) before it tells of them.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.engine import Connection

from queuetopia_py._job import Job

logger = logging.getLogger("queuetopia_py.commits")

#: Seconds after a commit at which its jobs are looked for.
LOOKS = (0.0, 0.05, 0.5, 2.0)


@dataclass
class _Committed:
    jobs: list[Job]
    at: float


class CommitFollower:
    """Tells of the jobs created in callers' transactions once those commit.

    `exists(job_id)` says whether a job can be read; `tell(jobs)` is called with the jobs
    of each committed transaction, once.
    """

    def __init__(self, exists: Callable[[int], bool], tell: Callable[[list[Job]], None]) -> None:
        self._exists = exists
        self._tell = tell
        # The jobs created in each connection's open transaction, and the connections
        # listened to (once each, for as long as they live).
        self._open: weakref.WeakKeyDictionary[Connection, list[Job]] = weakref.WeakKeyDictionary()
        self._listened: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._line: deque[_Committed] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def follow(self, connection: Connection, jobs: list[Job]) -> None:
        """Tell of `jobs`, created in `connection`'s transaction, once it commits; forget
        them if it rolls back."""
        created = self._open.get(connection)
        if created is not None:  # this transaction is followed already
            created.extend(jobs)
            return
        self._open[connection] = list(jobs)
        if connection not in self._listened:
            self._listened.add(connection)
            event.listen(connection, "commit", self._on_commit)
            event.listen(connection, "rollback", self._on_rollback)

    def _on_commit(self, connection: Connection) -> None:
        created = self._open.pop(connection, None)
        if created:
            self._committed(created)

    def _on_rollback(self, connection: Connection) -> None:
        self._open.pop(connection, None)

    def _committed(self, jobs: list[Job]) -> None:
        with self._changed:
            self._line.append(_Committed(jobs, time.monotonic()))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="queuetopia-commits", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def _loop(self) -> None:
        while True:
            with self._changed:
                if not self._line:
                    self._thread = None
                    return
                committed = self._line.popleft()
            self._wait_for(committed)

    def _wait_for(self, committed: _Committed) -> None:
        last = committed.jobs[-1].id
        for delay in LOOKS:
            time.sleep(max(0.0, committed.at + delay - time.monotonic()))
            try:
                if self._exists(last):
                    self._tell(committed.jobs)
                    return
            except Exception:
                logger.debug("could not read jobs after a commit", exc_info=True)
        logger.debug("jobs created in a transaction never appeared: it did not commit")
