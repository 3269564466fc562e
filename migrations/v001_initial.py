"""Version 1: the jobs, locks and schema_version tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from queuetopia_py._schema import UtcDateTime, id_type, name_type, table_options

if TYPE_CHECKING:
    from alembic.operations import Operations


def upgrade(op: Operations, prefix: str) -> None:
    """Create the tables of version 1."""
    options = table_options()
    op.create_table(
        f"{prefix}schema_version",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        **options,
    )
    op.create_table(
        f"{prefix}jobs",
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("scope", name_type(), nullable=False),
        sa.Column("queue", name_type(), nullable=False),
        sa.Column("action", name_type(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("timeout_us", sa.BigInteger(), nullable=False),
        sa.Column("max_backoff_us", sa.BigInteger(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempted_at", UtcDateTime(), nullable=True),
        sa.Column("attempted_by", sa.String(255), nullable=True),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("scheduled_at", UtcDateTime(), nullable=False),
        sa.Column("done_at", UtcDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("inserted_at", UtcDateTime(), nullable=False),
        **options,
    )
    op.create_index(
        f"ix_{prefix}jobs_queue_order",
        f"{prefix}jobs",
        ["scope", "queue", "done_at", "scheduled_at", "id"],
    )
    op.create_index(
        f"ix_{prefix}jobs_due", f"{prefix}jobs", ["scope", "done_at", "next_attempt_at", "queue"]
    )
    op.create_table(
        f"{prefix}locks",
        sa.Column("scope", name_type(), nullable=False),
        sa.Column("queue", name_type(), nullable=False),
        sa.Column("token", sa.String(36), nullable=False),
        sa.Column("locked_at", UtcDateTime(), nullable=False),
        sa.Column("locked_by_node", sa.String(255), nullable=False),
        sa.Column("locked_until", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "queue", name=f"pk_{prefix}locks"),
        **options,
    )
    op.create_index(f"ix_{prefix}locks_expiry", f"{prefix}locks", ["scope", "locked_until"])


def downgrade(op: Operations, prefix: str) -> None:
    """Drop the tables of version 1."""
    op.drop_table(f"{prefix}locks")
    op.drop_table(f"{prefix}jobs")
    op.drop_table(f"{prefix}schema_version")
