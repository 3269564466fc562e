"""A statement the driver refuses on the client side is an error of the call, not a
database outage: it is raised at once, without the retries meant for outages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from queuetopia_py import DatabaseError, DatabaseUnavailableError
from queuetopia_py._store.database import Database, create_engine


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    engine = create_engine(db_url)
    try:
        yield Database(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_statement_with_too_many_parameters_fails_at_once_as_an_error(db: Database) -> None:
    # psycopg refuses to send more than 65,535 parameters; the connection stays sound.
    names = [f"p{i}" for i in range(70_000)]
    statement = sa.text("SELECT " + " + ".join(f":{name}" for name in names))
    runs = 0

    def fn() -> object:
        nonlocal runs
        runs += 1
        with db.transaction() as conn:
            return conn.execute(statement, dict.fromkeys(names, 1)).scalar()

    with pytest.raises(DatabaseError, match="number of parameters") as raised:
        db.retrying(fn)
    assert not isinstance(raised.value, DatabaseUnavailableError)
    assert runs == 1
    with db.transaction() as conn:  # and the database is still there
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
