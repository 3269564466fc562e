"""Tables migrated by a newer queuetopia_py: `migrate` refuses them, with a message saying
to upgrade, and changes nothing (it never downgrades unless asked to, and then only
through versions it knows)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from click.testing import CliRunner

from queuetopia_py import DatabaseError, Queuetopia, migrate
from queuetopia_py._cli import cli
from queuetopia_py._store.database import create_engine
from queuetopia_py.migrations import LATEST, down, up

NEWER = LATEST + 1
REFUSAL = (
    rf"the queuetopia tables are at schema version {NEWER}, newer than this version of "
    rf"queuetopia_py knows \({LATEST}\): upgrade queuetopia_py"
)


def _contents(url: str) -> dict[str, object]:
    """Every queuetopia table: its columns and its rows."""
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            return {
                name: ([c.name for c in table.columns], conn.execute(table.select()).all())
                for name, table in sorted(metadata.tables.items())
                if name.startswith("queuetopia_")
            }
    finally:
        engine.dispose()


@pytest.fixture
def newer_url(url: str) -> str:
    """Tables holding a job, recorded at a schema version newer than this code knows."""
    queue = Queuetopia(repo=url, scope="newer")
    queue.create_job("q", "a", {"kept": True})
    queue.stop()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE queuetopia_schema_version SET version = {NEWER}"))
    engine.dispose()
    return url


def test_migrate_refuses_tables_newer_than_it_knows_and_changes_nothing(newer_url: str) -> None:
    before = _contents(newer_url)
    with pytest.raises(DatabaseError, match=REFUSAL):
        migrate(newer_url)
    assert _contents(newer_url) == before


@pytest.mark.parametrize("to", [0, LATEST - 1, LATEST])
def test_a_downgrade_from_a_version_it_does_not_know_is_refused(newer_url: str, to: int) -> None:
    before = _contents(newer_url)
    with pytest.raises(DatabaseError, match=REFUSAL):
        migrate(newer_url, to=to)
    assert _contents(newer_url) == before


def test_the_command_line_prints_the_refusal_on_one_line(newer_url: str) -> None:
    before = _contents(newer_url)
    result = CliRunner().invoke(cli, ["migrate", newer_url])
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert re.match(rf"Error: {REFUSAL} \(", line), line
    assert _contents(newer_url) == before


def test_the_alembic_helpers_refuse_them_too(newer_url: str) -> None:
    before = _contents(newer_url)
    engine = create_engine(newer_url)
    try:
        with engine.connect() as conn:
            op = Operations(MigrationContext.configure(conn))
            with pytest.raises(DatabaseError, match=REFUSAL):
                up(op)
            with pytest.raises(DatabaseError, match=REFUSAL):
                down(op, to=0)
    finally:
        engine.dispose()
    assert _contents(newer_url) == before
