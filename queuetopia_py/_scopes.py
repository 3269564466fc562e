"""The tables of one database and prefix across their scopes, for the tools that
operate on every scope: the command line's operations commands and the dashboard."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from queuetopia_py._errors import JobNotFoundError, SchemaMissingError
from queuetopia_py._job import Job
from queuetopia_py._queuetopia import Queuetopia
from queuetopia_py._schema import build_tables
from queuetopia_py._status import ScheduleStatus
from queuetopia_py._store.board import Board, blocked_by_scope
from queuetopia_py._store.database import Database
from queuetopia_py._store.schedules import schedule_statuses
from queuetopia_py.migrations import LATEST, current_version


class Scopes:
    """The queuetopia tables of one database and prefix as operators see them: one
    `Queuetopia` instance (never started) per scope, all sharing one engine."""

    def __init__(self, repo: str | Engine, prefix: str) -> None:
        self.prefix = prefix
        # The first instance owns the engine; `close()` disposes of it (unless given).
        self._owner = Queuetopia(repo=repo, table_prefix=prefix)
        self._instances: dict[str, Queuetopia] = {}
        self._db = Database(self._owner.engine, build_tables(prefix))

    def board(self, scope: str) -> Board:
        """The dashboard's reads of `scope`."""
        return Board(self._db, scope)

    def blocked_by_scope(self, scopes: list[str]) -> dict[str, int]:
        """How many blocked queues each of `scopes` has (those with none left out)."""
        return blocked_by_scope(self._db, scopes)

    @property
    def engine(self) -> Engine:
        """The engine every instance shares."""
        return self._owner.engine

    def check_schema(self, hint: str) -> None:
        """Raise `SchemaMissingError` unless the tables exist at the newest version;
        `hint` says how to create or upgrade them."""
        with self._owner.engine.connect() as conn:
            version = current_version(conn, self.prefix)
        if version == 0:
            raise SchemaMissingError(
                f"the queuetopia tables ({self.prefix}*) are missing: run {hint} first"
            )
        if version < LATEST:
            raise SchemaMissingError(
                f"the queuetopia tables ({self.prefix}*) are at schema version {version}, "
                f"this version needs {LATEST}: run {hint} first"
            )

    def scope(self, scope: str) -> Queuetopia:
        """A Queuetopia instance (never started) of `scope`."""
        if scope not in self._instances:
            self._instances[scope] = Queuetopia(
                repo=self._owner.engine, scope=scope, table_prefix=self.prefix
            )
        return self._instances[scope]

    def known_scopes(self) -> list[str]:
        """Every scope with jobs, locks or suspensions in these tables."""
        return self._owner.known_scopes()

    def instance_of(self, job_id: int, scope: str | None) -> Queuetopia:
        """The instance of the scope holding job `job_id` (looked up unless `scope` is
        given); `JobNotFoundError` when no such job exists."""
        if scope is None:
            scope = self._owner.scope_of(job_id)
            if scope is None:
                raise JobNotFoundError(job_id)
        return self.scope(scope)

    def job(self, job_id: int, scope: str | None) -> Job:
        """The job `job_id` (in `scope`, or wherever it is); `JobNotFoundError` if none."""
        instance = self.instance_of(job_id, scope)
        job = instance.get_job(job_id)
        if job is None:
            raise JobNotFoundError(job_id, instance.scope)
        return job

    def schedules(self, scope: str | None) -> list[ScheduleStatus]:
        """The schedules of `scope` (None: every scope) as the database records them."""
        return schedule_statuses(self._owner.engine, self.prefix, scope)

    def close(self) -> None:
        """Release the database connections."""
        self._owner.stop()
