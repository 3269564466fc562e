"""Version 6: tracing. `jobs.trace_context`, nullable: the trace context of the span a
job was created in (the W3C `traceparent` and `tracestate` an OpenTelemetry propagator
injects, as JSON), so that its attempts join the trace of the request that created it.
See docs/tracing.md.

Nodes of version 5 keep working on version 6 tables (the jobs they create have no trace
context); upgrade them in any order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from queuetopia_py._schema import trace_context_type

if TYPE_CHECKING:
    from alembic.operations import Operations


def upgrade(op: Operations, prefix: str) -> None:
    """Add the trace context column, last: on MariaDB/MySQL, a column placed before the
    indexed generated `unique_pending` would have the table copied, not rebuilt in place."""
    op.add_column(f"{prefix}jobs", sa.Column("trace_context", trace_context_type(), nullable=True))


def downgrade(op: Operations, prefix: str) -> None:
    """Back to version 5: the jobs' trace contexts are dropped."""
    op.drop_column(f"{prefix}jobs", "trace_context")
