"""Version 3: the queues table, and jobs stored by state.

- `queues`: one row a queue with pending work (or locked): its head job, the head's due
  time, its pending count and its lock. The queue locks move there from `locks`, which
  keeps the scope-wide locks of the nodes' duties (the cleaner's).
- `jobs.state` (pending, done, given_up, cancelled, aborted, dead_lettered) replaces
  `jobs.outcome`; `jobs.on_failure` holds the mode alone (give_up, block, move_to) and
  `jobs.dead_letter_queue` the queue "move_to" names; `jobs.claim_token` the claim of
  the latest attempt.
- The jobs indexes lead with the state.

Stop every node before upgrading: nodes of the previous version do not know the queues
table. The upgrade backfills the queues table from the pending jobs and moves the live
queue locks into it; the downgrade moves them back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from queuetopia_py import defaults
from queuetopia_py._schema import UtcDateTime, id_type, name_type, table_options

if TYPE_CHECKING:
    from alembic.operations import Operations

# The `queue` of the cleaner's lock, which stays in the locks table.
_CLEANER = " cleaner"
_MOVE_TO = "move_to:"


def _queue_columns(prefix: str) -> list[Any]:
    return [
        sa.Column("scope", name_type(), nullable=False),
        sa.Column("queue", name_type(), nullable=False),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("head_id", id_type(), nullable=True),
        sa.Column("head_at", UtcDateTime(), nullable=True),
        sa.Column("head_due", UtcDateTime(), nullable=True),
        sa.Column("blocked_since", UtcDateTime(), nullable=True),
        sa.Column("token", sa.String(32), nullable=True),
        sa.Column("locked_by", sa.String(defaults.MAX_NAME_LENGTH), nullable=True),
        sa.Column("locked_at", UtcDateTime(), nullable=True),
        sa.Column("locked_until", UtcDateTime(), nullable=True),
        sa.Column("locked_job", id_type(), nullable=True),
        sa.PrimaryKeyConstraint("scope", "queue", name=f"pk_{prefix}queues"),
    ]


def _jobs(prefix: str, *names: str) -> sa.TableClause:
    return sa.table(f"{prefix}jobs", *(sa.column(n) for n in names))


def upgrade(op: Operations, prefix: str) -> None:
    """Add the queues table and the jobs' state; move the queue locks."""
    conn = op.get_bind()
    name = f"{prefix}jobs"
    with op.batch_alter_table(name) as batch:
        batch.add_column(
            sa.Column("state", sa.String(16), nullable=False, server_default="pending")
        )
        batch.add_column(sa.Column("dead_letter_queue", name_type(), nullable=True))
        batch.add_column(sa.Column("claim_token", sa.String(32), nullable=True))
    jobs = _jobs(prefix, "id", "done_at", "outcome", "state", "on_failure", "dead_letter_queue")
    conn.execute(jobs.update().where(jobs.c.done_at.is_not(None)).values(state="done"))
    conn.execute(
        jobs.update()
        .where(jobs.c.done_at.is_(None), jobs.c.outcome.is_not(None))
        .values(state=jobs.c.outcome)
    )
    # The dead-letter queue first: MariaDB assigns from left to right.
    conn.execute(
        jobs.update()
        .where(jobs.c.on_failure.like(f"{_MOVE_TO}%"))
        .ordered_values(
            (jobs.c.dead_letter_queue, sa.func.substr(jobs.c.on_failure, len(_MOVE_TO) + 1)),
            (jobs.c.on_failure, "move_to"),
        )
    )
    conn.execute(jobs.update().where(jobs.c.on_failure.is_(None)).values(on_failure="give_up"))
    op.drop_index(f"ix_{prefix}jobs_queue_order", table_name=name)
    op.drop_index(f"ix_{prefix}jobs_due", table_name=name)
    with op.batch_alter_table(name) as batch:
        batch.drop_column("outcome")
        batch.alter_column(
            "on_failure",
            existing_type=sa.String(defaults.MAX_NAME_LENGTH + 16),
            type_=sa.String(16),
            nullable=False,
            server_default="give_up",
        )
    op.create_index(
        f"ix_{prefix}jobs_queue_order", name, ["scope", "queue", "state", "scheduled_at", "id"]
    )
    op.create_index(f"ix_{prefix}jobs_state_order", name, ["scope", "state", "scheduled_at", "id"])

    queues = f"{prefix}queues"
    op.create_table(queues, *_queue_columns(prefix), **table_options())
    op.create_index(f"ix_{prefix}queues_due", queues, ["scope", "head_due", "queue"])
    op.create_index(f"ix_{prefix}queues_lock", queues, ["scope", "locked_until"])
    op.create_index(f"ix_{prefix}queues_blocked", queues, ["scope", "blocked_since", "queue"])
    _backfill_queues(op, prefix)
    _move_locks_in(op, prefix)


def _backfill_queues(op: Operations, prefix: str) -> None:
    op.get_bind().execute(queues_backfill(prefix))


def queues_backfill(prefix: str) -> sa.Insert:
    """The statement filling an empty queues table from the jobs: one row per queue with
    pending jobs, its count and its head (also for tools that load jobs by hand). One
    pass over the pending jobs, numbered in queue order within each queue."""
    jobs = sa.table(
        f"{prefix}jobs",
        *(
            sa.column(n)
            for n in (
                "id",
                "scope",
                "queue",
                "state",
                "scheduled_at",
                "next_attempt_at",
                "failing_since",
            )
        ),
    )
    queue = (jobs.c.scope, jobs.c.queue)
    pending = (
        sa.select(
            *queue,
            sa.func.count().over(partition_by=queue).label("n"),
            sa.func.row_number()
            .over(partition_by=queue, order_by=(jobs.c.scheduled_at, jobs.c.id))
            .label("place"),
            jobs.c.id,
            jobs.c.scheduled_at,
            jobs.c.next_attempt_at,
            jobs.c.failing_since,
        )
        .where(jobs.c.state == "pending")
        .subquery("p")
    )
    heads = sa.select(
        pending.c.scope,
        pending.c.queue,
        pending.c.n,
        pending.c.id,
        pending.c.scheduled_at,
        pending.c.next_attempt_at,
        pending.c.failing_since,
    ).where(pending.c.place == 1)
    columns = ["scope", "queue", "pending", "head_id", "head_at", "head_due", "blocked_since"]
    queues = sa.table(f"{prefix}queues", *(sa.column(n) for n in columns))
    return queues.insert().from_select(columns, heads)


def _lock_tables(prefix: str) -> tuple[sa.TableClause, sa.TableClause, sa.TableClause]:
    """The locks, queues and jobs columns that moving the queue locks touches."""
    at = UtcDateTime()
    locks = sa.table(
        f"{prefix}locks",
        *(sa.column(n) for n in ("scope", "queue", "token", "locked_by_node", "job_id")),
        sa.column("locked_at", at),
        sa.column("locked_until", at),
    )
    queues = sa.table(
        f"{prefix}queues",
        *(sa.column(n) for n in ("scope", "queue", "pending", "token", "locked_by")),
        sa.column("locked_at", at),
        sa.column("locked_until", at),
        sa.column("locked_job"),
    )
    return locks, queues, _jobs(prefix, "id", "claim_token")


def _move_locks_in(op: Operations, prefix: str) -> None:
    """The live queue locks move to their queues' rows (a locked queue without pending
    work gets a row of its own); the cleaner's lock stays."""
    conn = op.get_bind()
    locks, queues, jobs = _lock_tables(prefix)
    for lock in conn.execute(sa.select(locks).where(locks.c.queue != _CLEANER)).all():
        values = {
            "token": lock.token[:32],
            "locked_by": lock.locked_by_node,
            "locked_at": lock.locked_at,
            "locked_until": lock.locked_until,
            "locked_job": lock.job_id,
        }
        key = sa.and_(queues.c.scope == lock.scope, queues.c.queue == lock.queue)
        if not conn.execute(queues.update().where(key).values(**values)).rowcount:
            conn.execute(
                queues.insert().values(scope=lock.scope, queue=lock.queue, pending=0, **values)
            )
        if lock.job_id is not None:
            conn.execute(
                jobs.update().where(jobs.c.id == lock.job_id).values(claim_token=values["token"])
            )
    conn.execute(locks.delete().where(locks.c.queue != _CLEANER))


def _move_locks_out(op: Operations, prefix: str) -> None:
    conn = op.get_bind()
    locks, queues, _ = _lock_tables(prefix)
    held = conn.execute(sa.select(queues).where(queues.c.token.is_not(None))).all()
    for row in held:
        conn.execute(
            locks.insert().values(
                scope=row.scope,
                queue=row.queue,
                token=row.token,
                locked_by_node=row.locked_by,
                locked_at=row.locked_at,
                locked_until=row.locked_until,
                job_id=row.locked_job,
            )
        )


def downgrade(op: Operations, prefix: str) -> None:
    """Back to version 2: the queue locks return to the locks table, the state to
    `outcome`, the failure mode to its `move_to:<queue>` form."""
    conn = op.get_bind()
    name = f"{prefix}jobs"
    _move_locks_out(op, prefix)
    op.drop_table(f"{prefix}queues")
    op.drop_index(f"ix_{prefix}jobs_queue_order", table_name=name)
    op.drop_index(f"ix_{prefix}jobs_state_order", table_name=name)
    with op.batch_alter_table(name) as batch:
        batch.add_column(sa.Column("outcome", sa.String(16), nullable=True))
        batch.alter_column(
            "on_failure",
            existing_type=sa.String(16),
            type_=sa.String(defaults.MAX_NAME_LENGTH + 16),
            nullable=True,
            server_default=None,
        )
    jobs = sa.table(
        name,
        sa.column("state"),
        sa.column("outcome"),
        sa.column("on_failure", sa.String()),
        sa.column("dead_letter_queue", sa.String()),
    )
    conn.execute(
        jobs.update().where(jobs.c.state.not_in(["pending", "done"])).values(outcome=jobs.c.state)
    )
    conn.execute(
        jobs.update()
        .where(jobs.c.on_failure == "move_to")
        .values(on_failure=sa.literal(_MOVE_TO) + jobs.c.dead_letter_queue)
    )
    with op.batch_alter_table(name) as batch:
        batch.drop_column("claim_token")
        batch.drop_column("dead_letter_queue")
        batch.drop_column("state")
    op.create_index(
        f"ix_{prefix}jobs_queue_order",
        name,
        ["scope", "queue", "done_at", "outcome", "scheduled_at", "id"],
    )
    op.create_index(
        f"ix_{prefix}jobs_due", name, ["scope", "done_at", "outcome", "next_attempt_at", "queue"]
    )
