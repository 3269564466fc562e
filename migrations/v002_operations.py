"""Version 2: operations. Job outcomes, failure modes, rounds of attempts, progress,
results and interventions; the suspensions table; indexes that skip ended jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from queuetopia_py import defaults
from queuetopia_py._schema import UtcDateTime, id_type, name_type, table_options

if TYPE_CHECKING:
    from alembic.operations import Operations


def ops_columns() -> list[sa.Column[Any]]:
    """Columns of the jobs table added by schema version 2 (operations)."""
    return [
        # None while pending or done; how the job ended otherwise.
        sa.Column("outcome", sa.String(16), nullable=True),
        # When it ended without success (set with `outcome`), for the cleaner.
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("on_failure", sa.String(defaults.MAX_NAME_LENGTH + 16), nullable=True),
        sa.Column("round_start", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failing_since", UtcDateTime(), nullable=True),
        sa.Column("progress_message", sa.Text(), nullable=True),
        sa.Column("progress_fraction", sa.Float(precision=53), nullable=True),
        sa.Column("progress_at", UtcDateTime(), nullable=True),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("interventions", sa.JSON(none_as_null=True), nullable=True),
    ]


def lock_job_column() -> sa.Column[Any]:
    """The job whose attempt a lock was taken for."""
    return sa.Column("job_id", id_type(), nullable=True)


def suspension_columns(prefix: str) -> list[Any]:
    """Columns and key of the suspensions table."""
    return [
        sa.Column("scope", name_type(), nullable=False),
        # "" for the whole scope.
        sa.Column("queue", name_type(), nullable=False),
        sa.Column("suspended_at", UtcDateTime(), nullable=False),
        sa.Column("suspended_by", sa.String(defaults.MAX_NAME_LENGTH), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("scope", "queue", name=f"pk_{prefix}suspensions"),
    ]


def upgrade(op: Operations, prefix: str) -> None:
    """Add the columns and the table of version 2."""
    jobs = f"{prefix}jobs"
    with op.batch_alter_table(jobs) as batch:
        for column in ops_columns():
            batch.add_column(column)
    with op.batch_alter_table(f"{prefix}locks") as batch:
        batch.add_column(lock_job_column())
    # Jobs given up under version 1 (not done, no next attempt) get their outcome.
    op.execute(
        sa.text(
            f"UPDATE {jobs} SET outcome = 'given_up',"
            " ended_at = COALESCE(attempted_at, inserted_at)"
            " WHERE done_at IS NULL AND next_attempt_at IS NULL"
        )
    )
    op.drop_index(f"ix_{prefix}jobs_queue_order", table_name=jobs)
    op.drop_index(f"ix_{prefix}jobs_due", table_name=jobs)
    op.create_index(
        f"ix_{prefix}jobs_queue_order",
        jobs,
        ["scope", "queue", "done_at", "outcome", "scheduled_at", "id"],
    )
    op.create_index(
        f"ix_{prefix}jobs_due", jobs, ["scope", "done_at", "outcome", "next_attempt_at", "queue"]
    )
    op.create_table(f"{prefix}suspensions", *suspension_columns(prefix), **table_options())


def downgrade(op: Operations, prefix: str) -> None:
    """Back to version 1: jobs that ended without success stay given up (no next attempt)."""
    jobs = f"{prefix}jobs"
    op.drop_table(f"{prefix}suspensions")
    with op.batch_alter_table(f"{prefix}locks") as batch:
        batch.drop_column("job_id")
    op.execute(sa.text(f"UPDATE {jobs} SET next_attempt_at = NULL WHERE outcome IS NOT NULL"))
    op.drop_index(f"ix_{prefix}jobs_queue_order", table_name=jobs)
    op.drop_index(f"ix_{prefix}jobs_due", table_name=jobs)
    with op.batch_alter_table(jobs) as batch:
        for column in reversed(ops_columns()):
            batch.drop_column(column.name)
    op.create_index(
        f"ix_{prefix}jobs_queue_order", jobs, ["scope", "queue", "done_at", "scheduled_at", "id"]
    )
    op.create_index(f"ix_{prefix}jobs_due", jobs, ["scope", "done_at", "next_attempt_at", "queue"])
