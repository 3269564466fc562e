"""Announcing work to the other nodes: PostgreSQL's NOTIFY, sent inside the transaction
that creates or frees the work, so that it is delivered when (and only if) it commits.

One channel per set of tables (named after the jobs table); the payload names the scope,
the queue (None: "look at the whole scope") and the Queuetopia instance that announced
it, which needs no wake-up of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from queuetopia_py._schema import Tables

#: Beyond this many queues in one transaction, one announcement stands for the scope.
MAX_QUEUES_ANNOUNCED = 100


def channel(tables: Tables) -> str:
    """The NOTIFY channel of these tables."""
    return tables.jobs.name


@dataclass(frozen=True, slots=True)
class Announcement:
    """New or freed work in `queue` of `scope` (None: anywhere in the scope)."""

    scope: str
    queue: str | None
    origin: str

    def to_payload(self) -> str:
        """The NOTIFY payload (at most about 800 bytes: names are at most 255 characters)."""
        return json.dumps([self.scope, self.queue, self.origin], separators=(",", ":"))

    @classmethod
    def from_payload(cls, payload: str) -> Announcement | None:
        """Parse a payload; None if it is not one of ours."""
        try:
            scope, queue, origin = json.loads(payload)
        except (ValueError, TypeError):
            return None
        if not isinstance(scope, str) or not isinstance(origin, str):
            return None
        if queue is not None and not isinstance(queue, str):
            return None
        return cls(scope, queue, origin)


def notify(tables: Tables, payload: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """PostgreSQL: an expression that announces `payload` when evaluated (as text)."""
    return sa.cast(sa.func.pg_notify(channel(tables), payload), sa.Text)


def announce(
    conn: Connection, tables: Tables, scope: str, queues: Iterable[str] | None, origin: str
) -> None:
    """Announce work in `queues` of `scope` (None: anywhere in it) to the listening nodes,
    on commit of `conn`'s transaction. Does nothing but on PostgreSQL (other databases
    are polled)."""
    if conn.dialect.name != "postgresql":
        return
    named: list[str | None] = [None] if queues is None else list(dict.fromkeys(queues))
    if not named:
        return
    if len(named) > MAX_QUEUES_ANNOUNCED:
        named = [None]
    payloads = [Announcement(scope, queue, origin).to_payload() for queue in named]
    conn.execute(
        sa.text(
            "SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload"
        ),
        {"channel": channel(tables), "payloads": payloads},
    )
