"""Version 4: unique jobs. `jobs.unique_key`, held by at most one pending job of a scope:
a partial unique index on PostgreSQL and SQLite; on MariaDB and MySQL, which have none, a
generated column holding the key of a pending job (NULL otherwise) under a unique index.

Nodes of version 3 keep working on version 4 tables (their jobs have no key); upgrade
them in any order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from queuetopia_py._schema import UNIQUE_HELD, name_type, unique_key_ddl

if TYPE_CHECKING:
    from alembic.operations import Operations


def upgrade(op: Operations, prefix: str) -> None:
    """Add the key column and its uniqueness among pending jobs."""
    jobs = f"{prefix}jobs"
    op.add_column(jobs, sa.Column("unique_key", name_type(), nullable=True))
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        for statement in unique_key_ddl(prefix):
            op.execute(sa.text(statement))
        return
    op.create_index(
        f"ux_{prefix}jobs_unique_key",
        jobs,
        ["scope", "unique_key"],
        unique=True,
        postgresql_where=sa.text(UNIQUE_HELD),
        sqlite_where=sa.text(UNIQUE_HELD),
    )


def downgrade(op: Operations, prefix: str) -> None:
    """Back to version 3: the keys are dropped."""
    jobs = f"{prefix}jobs"
    op.drop_index(f"ux_{prefix}jobs_unique_key", table_name=jobs)
    with op.batch_alter_table(jobs) as batch:
        if op.get_bind().dialect.name in ("mysql", "mariadb"):
            batch.drop_column("unique_pending")
        batch.drop_column("unique_key")
