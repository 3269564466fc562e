"""Read-only statements for operators and tools: a scope's status, the scopes present.

`status` reads only pending and ended-without-success jobs through the indexes that
lead with `(scope, done_at, outcome)`, never the completed history, so its cost grows
with the pending work, not with the table.
"""

from __future__ import annotations

import sqlalchemy as sa

from queuetopia_py.job import OUTCOMES
from queuetopia_py.status import Lock, QueueStatus, RunningAttempt, Status
from queuetopia_py.store.control import row_to_suspension
from queuetopia_py.store.database import Database
from queuetopia_py.store.jobs import CLEANER_LOCK, pending, queue_order, row_to_job

_FAILED = [o for o in OUTCOMES if o != "cancelled"]


class Inspection:
    """Status of one scope."""

    def __init__(self, db: Database, scope: str) -> None:
        self.db = db
        self.scope = scope

    def status(self) -> Status:
        """The scope's queues, their heads, locks and suspensions, and the running attempts."""
        jobs, locks, sus = self.db.tables.jobs, self.db.tables.locks, self.db.tables.suspensions
        with self.db.transaction() as conn:
            now = conn.execute(sa.select(self.db.now())).scalar_one()
            counts = conn.execute(
                sa.select(
                    jobs.c.queue,
                    sa.func.sum(sa.case((jobs.c.outcome.is_(None), 1), else_=0)),
                    sa.func.sum(sa.case((jobs.c.outcome.in_(_FAILED), 1), else_=0)),
                )
                .where(jobs.c.scope == self.scope, jobs.c.done_at.is_(None))
                .group_by(jobs.c.queue)
            ).all()
            # Each pending queue's head, found through the queue-order index.
            queues = (
                sa.select(jobs.c.queue)
                .where(jobs.c.scope == self.scope, pending(jobs))
                .group_by(jobs.c.queue)
                .subquery("pending_queues")
            )
            head = jobs.alias("head")
            head_id = (
                sa.select(head.c.id)
                .where(head.c.scope == self.scope, head.c.queue == queues.c.queue, pending(head))
                .order_by(*queue_order(head))
                .limit(1)
                .scalar_subquery()
            )
            # A join, not `id IN (...)`: MariaDB would scan the whole table for the IN.
            head_ids = sa.select(head_id.label("head_id")).select_from(queues).subquery("heads")
            heads = [
                row_to_job(r)
                for r in conn.execute(
                    sa.select(jobs).join(head_ids, jobs.c.id == head_ids.c.head_id)
                )
            ]
            lock_rows = conn.execute(
                sa.select(locks).where(
                    locks.c.scope == self.scope,
                    locks.c.queue != CLEANER_LOCK,
                    locks.c.locked_until > now,
                )
            ).all()
            running_ids = [r.job_id for r in lock_rows if r.job_id is not None]
            locked_jobs = {
                job.id: job
                for job in (
                    row_to_job(r)
                    for r in conn.execute(
                        # By id alone: with `done_at IS NULL` too, SQLite would pick
                        # the due index and read every pending job.
                        sa.select(jobs).where(jobs.c.id.in_(running_ids))
                    )
                )
                if not job.done
            }
            suspensions = [
                row_to_suspension(r)
                for r in conn.execute(sa.select(sus).where(sus.c.scope == self.scope))
            ]
        scope_suspension = next((s for s in suspensions if s.queue is None), None)
        own = {s.queue: s for s in suspensions if s.queue is not None}
        by_queue_heads = {j.queue: j for j in heads}
        by_queue_locks = {
            r.queue: Lock(r.queue, r.locked_by_node, r.locked_at, r.locked_until, r.job_id)
            for r in lock_rows
        }
        # Queues whose jobs were all cancelled have nothing to show.
        tallies = {q: (int(p or 0), int(f or 0)) for q, p, f in counts if p or f}
        names = set(tallies) | set(by_queue_locks) | set(own)
        result: list[QueueStatus] = []
        nodes: dict[str, list[RunningAttempt]] = {}
        for name in sorted(names):
            lock = by_queue_locks.get(name)
            attempt = None if lock is None or lock.job_id is None else locked_jobs.get(lock.job_id)
            running = None
            # The live lock was taken for this job's current attempt (see in_progress).
            if lock is not None and attempt is not None and attempt.attempted_at is not None:
                running = RunningAttempt(
                    lock.node, name, attempt, attempt.attempted_at, lock.locked_until
                )
                nodes.setdefault(lock.node, []).append(running)
            pending_count, failed = tallies.get(name, (0, 0))
            result.append(
                QueueStatus(
                    queue=name,
                    pending=pending_count,
                    failed=failed,
                    head=by_queue_heads.get(name),
                    lock=lock,
                    suspended=own.get(name) or scope_suspension,
                    running=running,
                )
            )
        return Status(self.scope, now, scope_suspension, result, nodes)

    def known_scopes(self) -> list[str]:
        """Every scope with jobs, locks or suspensions in these tables."""
        t = self.db.tables
        union = sa.union(
            sa.select(t.jobs.c.scope).distinct(),
            sa.select(t.locks.c.scope).distinct(),
            sa.select(t.suspensions.c.scope).distinct(),
        ).subquery()
        with self.db.transaction() as conn:
            return sorted(conn.execute(sa.select(union.c.scope)).scalars().all())

    def scope_of(self, job_id: int) -> str | None:
        """The scope of the job `job_id`, in any scope."""
        jobs = self.db.tables.jobs
        with self.db.transaction() as conn:
            scope = conn.execute(sa.select(jobs.c.scope).where(jobs.c.id == job_id)).scalar()
        return None if scope is None else str(scope)
