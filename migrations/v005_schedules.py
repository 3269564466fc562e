"""Version 5: periodic jobs. The `schedules` table: one row a schedule of a scope (its
definition, the latest fire time dealt with, the job it created, the next fire time),
which the nodes lock to create each fire's job once.

Nodes of version 4 keep working on version 5 tables (they have no schedules); upgrade
them in any order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from queuetopia_py._schema import schedule_columns, table_options

if TYPE_CHECKING:
    from alembic.operations import Operations


def upgrade(op: Operations, prefix: str) -> None:
    """Add the schedules table."""
    op.create_table(f"{prefix}schedules", *schedule_columns(prefix), **table_options())


def downgrade(op: Operations, prefix: str) -> None:
    """Back to version 4: the schedules' state is dropped."""
    op.drop_table(f"{prefix}schedules")
