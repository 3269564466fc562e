from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from queuetopia_py import Performer, Queuetopia, SchemaMissingError, migrate
from queuetopia_py.migrations import LATEST
from queuetopia_py.schema import build_tables
from queuetopia_py.store.database import create_engine


def _describe(engine: sa.Engine, prefix: str) -> dict[str, object]:
    """Tables, columns (name, type, nullability), primary keys and indexes, prefix removed."""
    inspector = sa.inspect(engine)
    out: dict[str, object] = {}
    for table in sorted(t for t in inspector.get_table_names() if t.startswith(prefix)):
        columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
        indexes = sorted(
            (i["name"].replace(prefix, "", 1), tuple(i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(table)
        )
        pk = inspector.get_pk_constraint(table)["constrained_columns"]
        out[table[len(prefix) :]] = (columns, indexes, pk)
    return out


def test_migrate_is_idempotent(db_url: str) -> None:
    assert migrate(db_url) == LATEST
    assert migrate(db_url) == LATEST


def test_full_migration_chain_equals_a_fresh_schema(db_url: str) -> None:
    migrate(db_url, prefix="chain_")
    engine = create_engine(db_url)
    build_tables("fresh_").metadata.create_all(engine)
    assert _describe(engine, "chain_") == _describe(engine, "fresh_")
    engine.dispose()


def test_downgrade_to_zero_removes_every_table(db_url: str) -> None:
    migrate(db_url)
    assert migrate(db_url, to=0) == 0
    engine = create_engine(db_url)
    assert [t for t in sa.inspect(engine).get_table_names() if t.startswith("queuetopia_")] == []
    engine.dispose()
    assert migrate(db_url) == LATEST  # and back up again


def test_concurrent_migrations_all_succeed(db_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(db_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_jobs_on_an_unmigrated_database_raise_schema_missing(db_url: str) -> None:
    queue = Queuetopia(repo=db_url)
    with pytest.raises(SchemaMissingError, match="queuetopia migrate"):
        queue.create_job("q", "a", {})
    queue.stop()


def test_starting_on_an_unmigrated_database_raises_schema_missing(db_url: str) -> None:
    queue = Queuetopia(repo=db_url, performer=Performer)
    with pytest.raises(SchemaMissingError, match="queuetopia migrate"):
        queue.start()
    assert not queue.running


def test_a_custom_table_prefix_keeps_its_own_tables(db_url: str) -> None:
    migrate(db_url, prefix="jobs2_")
    queue = Queuetopia(repo=db_url, table_prefix="jobs2_")
    job = queue.create_job("q", "a", {})
    assert queue.get_job(job.id) == job
    with pytest.raises(SchemaMissingError):
        Queuetopia(repo=db_url).create_job("q", "a", {})


def test_a_node_refuses_to_start_on_tables_newer_than_it_knows(url: str) -> None:
    import sqlalchemy as sa

    from queuetopia_py import DatabaseError
    from queuetopia_py.migrations import LATEST

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE queuetopia_schema_version SET version = {LATEST + 1}"))
    engine.dispose()
    queue = Queuetopia(repo=url, performer=Performer)
    with pytest.raises(DatabaseError, match="newer than this version"):
        queue.start()
    assert not queue.running
