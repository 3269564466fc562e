"""The migration history runs inside a user's own Alembic environment."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from queuetopia_py import Queuetopia
from queuetopia_py._store.database import create_engine
from queuetopia_py.migrations import LATEST, current_version

ENV_PY = """
from alembic import context
from sqlalchemy import create_engine

engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = '''
"""add queuetopia"""
from alembic import op
from queuetopia_py.migrations import down, up

revision = "0001"
down_revision = None


def upgrade() -> None:
    up(op)


def downgrade() -> None:
    down(op)
'''


def _alembic(tmp_path: Path, url: str) -> Config:
    (tmp_path / "versions").mkdir(parents=True)
    (tmp_path / "env.py").write_text(ENV_PY)
    (tmp_path / "script.py.mako").write_text("")
    (tmp_path / "versions" / "0001_queuetopia.py").write_text(REVISION)
    config = Config()
    config.set_main_option("script_location", str(tmp_path))
    config.set_main_option("sqlalchemy.url", url)
    return config


def test_up_and_down_work_from_a_users_alembic_revision(db_url: str, tmp_path: Path) -> None:
    config = _alembic(tmp_path / "alembic", db_url)
    command.upgrade(config, "head")
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert current_version(conn) == LATEST
    queue = Queuetopia(repo=engine)
    job = queue.create_job("q", "a", {})
    assert queue.get_job(job.id) == job
    command.downgrade(config, "base")
    with engine.connect() as conn:
        assert current_version(conn) == 0
        assert not sa.inspect(conn).has_table("queuetopia_jobs")
    engine.dispose()


SOURCE_REVISION = '''
"""photos, a row-sourced queue"""
import sqlalchemy as sa
from alembic import op
from queuetopia_py import Queuetopia, RowSource, install_source, uninstall_source

revision = "0002"
down_revision = "0001"

photos = sa.Table(
    "photos", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=False)
)


class Photos(Queuetopia, repo="sqlite://", scope="photos", source=RowSource(photos)):
    pass


def upgrade() -> None:
    photos.create(op.get_bind())
    install_source(op.get_bind(), Photos)


def downgrade() -> None:
    uninstall_source(op.get_bind(), Photos)
    photos.drop(op.get_bind())
'''


def test_a_row_source_is_installed_and_removed_by_a_users_alembic_revision(
    db_url: str, tmp_path: Path
) -> None:
    config = _alembic(tmp_path / "alembic", db_url)
    (tmp_path / "alembic" / "versions" / "0002_photos.py").write_text(SOURCE_REVISION)
    photos = sa.table("photos", sa.column("id"))
    command.upgrade(config, "head")
    command.upgrade(config, "head")  # nothing left to do
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(photos.insert().values(id=1))
        assert [j.params for j in Queuetopia(repo=engine, scope="photos").list_jobs()] == [
            {"id": 1}
        ]
        command.downgrade(config, "0001")
        with engine.begin() as conn:
            photos_exists = sa.inspect(conn).has_table("photos")
            triggers = conn.execute(
                sa.text("SELECT count(*) FROM information_schema.triggers")
                if engine.dialect.name != "sqlite"
                else sa.text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")
            ).scalar_one()
        assert not photos_exists
        assert triggers == 0
    finally:
        engine.dispose()
