"""Statements of periodic jobs: each schedule of a scope has a row in the schedules
table, locked by the transaction that creates its due jobs and records the fire time it
dealt with, so that each fire time gets its job once, whatever the nodes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from queuetopia_py._job import Job, NewJob
from queuetopia_py._schedules import Schedule
from queuetopia_py._schema import build_tables
from queuetopia_py._status import ScheduleStatus
from queuetopia_py._store.database import Database
from queuetopia_py._store.jobs import JobStore


class ScheduleStore:
    """The schedules of one scope."""

    def __init__(self, db: Database, jobs: JobStore) -> None:
        self.db = db
        self.jobs = jobs
        self.scope = jobs.scope
        self.table = db.tables.schedules

    def _key(self, name: str) -> sa.ColumnElement[bool]:
        return sa.and_(self.table.c.scope == self.scope, self.table.c.name == name)

    def fire(
        self, schedule: Schedule, job_of: Callable[[Schedule, datetime], NewJob], origin: str
    ) -> tuple[list[Job], float]:
        """Create the jobs of `schedule`'s due fire times (as its catch-up says) in one
        transaction; the jobs created, and the seconds until its next fire time by the
        database's clock. A schedule seen for the first time, or defined anew, starts
        from now: no fire time before it is due."""
        table = self.table

        def run() -> tuple[list[Job], float]:
            with self.db.transaction() as conn:
                now: datetime = conn.execute(sa.select(self.db.now())).scalar_one()
                self._ensure(conn, schedule, now)
                row = conn.execute(
                    sa.select(table).where(self._key(schedule.name)).with_for_update()
                ).one()
                last = row.last_fire_at if row.definition == schedule.definition else now
                fires, latest = schedule.to_create(last, now)
                news = [job_of(schedule, fire) for fire in fires]
                created = self.jobs.create(conn, news, origin=origin).new if news else []
                following = schedule.next_after(max(latest or last, now))
                conn.execute(
                    table.update()
                    .where(self._key(schedule.name))
                    .values(
                        definition=schedule.definition,
                        last_fire_at=latest or last,
                        last_job_id=created[-1].id if created else row.last_job_id,
                        next_fire_at=following,
                        updated_at=now,
                    )
                )
            return created, (following - now).total_seconds()

        return self.db.retrying(run, conflicts_only=True)

    def _ensure(self, conn: Connection, schedule: Schedule, now: datetime) -> None:
        """Give the schedule its row if it has none (another node may be giving it one)."""
        values = {
            "scope": self.scope,
            "name": schedule.name,
            "definition": schedule.definition,
            "last_fire_at": now,
            "next_fire_at": schedule.next_after(now),
            "updated_at": now,
        }
        dialect = self.db.dialect
        if dialect in ("postgresql", "sqlite"):
            module: Any = postgresql if dialect == "postgresql" else sqlite
            conn.execute(module.insert(self.table).values(values).on_conflict_do_nothing())
            return
        insert = mysql.insert(self.table).values(values)
        conn.execute(insert.on_duplicate_key_update(name=insert.inserted.name))

    def forget_others(self, names: Sequence[str]) -> None:
        """Delete the rows of the scope's schedules not named (removed from the code)."""
        table = self.table
        condition = table.c.scope == self.scope
        if names:
            condition = sa.and_(condition, table.c.name.not_in(list(names)))

        def run() -> None:
            with self.db.transaction() as conn:
                conn.execute(table.delete().where(condition))

        self.db.retrying(run)


def read_statuses(conn: Connection, table: sa.Table, scope: str | None) -> list[ScheduleStatus]:
    """The schedules of `scope` (None: of every scope) on `conn`, by scope and name."""
    query = sa.select(table).order_by(table.c.scope, table.c.name)
    if scope is not None:
        query = query.where(table.c.scope == scope)
    return [
        ScheduleStatus(
            scope=row.scope,
            name=row.name,
            definition=row.definition,
            next_fire_at=row.next_fire_at,
            last_fire_at=row.last_fire_at,
            last_job_id=row.last_job_id,
        )
        for row in conn.execute(query)
    ]


def schedule_statuses(engine: Engine, prefix: str, scope: str | None) -> list[ScheduleStatus]:
    """The schedules of `scope` (None: every scope) in the tables of `prefix`."""
    with engine.connect() as conn:
        return read_statuses(conn, build_tables(prefix).schedules, scope)
