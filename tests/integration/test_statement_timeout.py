"""The `statement_timeout` option of the engines queuetopia makes from a URL: a statement
that runs longer fails as `DatabaseUnavailableError`; the URL's own settings and a given
`Engine`'s are kept; migrations are never cut short. (A server gone silent:
test_silent_database.py.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from recording import wait_until

from queuetopia_py import DatabaseUnavailableError, Queuetopia, migrate
from queuetopia_py.migrations import LATEST

SHORT = 1  # seconds


@pytest.fixture
def bounded(url: str) -> Iterator[Queuetopia]:
    queue = Queuetopia(repo=url, scope="bounded", statement_timeout=SHORT)
    yield queue
    queue.stop()


def _server_statement_timeout(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SHOW statement_timeout")).scalar())


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_a_statement_longer_than_the_timeout_fails_as_unavailable(bounded: Queuetopia) -> None:
    db = bounded._db
    sleep = "SELECT pg_sleep(3)" if db.dialect == "postgresql" else "SELECT SLEEP(3)"
    with pytest.raises(DatabaseUnavailableError), db.transaction() as conn:
        conn.execute(sa.text(sleep))
    with db.transaction() as conn:  # and the next call gets an answer
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_server_bounds_statements_by_default(url: str) -> None:
    queue = Queuetopia(repo=url)
    assert _server_statement_timeout(queue.engine) == "30s"
    queue.stop()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_urls_own_statement_timeout_wins(url: str) -> None:
    queue = Queuetopia(repo=f"{url}?options=-c%20statement_timeout%3D5000", statement_timeout=1)
    assert _server_statement_timeout(queue.engine) == "5s"
    queue.stop()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_given_engine_keeps_its_own_settings(url: str) -> None:
    engine = sa.create_engine(url)
    queue = Queuetopia(repo=engine, statement_timeout=SHORT)
    assert _server_statement_timeout(queue.engine) == "0"
    queue.stop()
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_migrating_through_a_bounded_engine_waits_as_long_as_it_takes(db_url: str) -> None:
    """Two migrations wait, one on a table another session locks, the other on the
    first; each waits longer than the engine's statement timeout, and both complete."""
    queue = Queuetopia(repo=db_url, statement_timeout=SHORT)
    migrate(queue.engine, to=1)
    results: list[object] = []

    def run() -> None:
        try:
            results.append(migrate(queue.engine))
        except Exception as exc:
            results.append(exc)

    admin = sa.create_engine(db_url)
    with admin.connect() as locker, admin.connect() as observer:
        locker.execute(sa.text("LOCK TABLE queuetopia_jobs IN ACCESS EXCLUSIVE MODE"))
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        waited = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND clock_timestamp() - query_start > :waited"
        )

        def both_waited_long_or_one_failed() -> bool:
            count = observer.execute(waited, {"waited": f"{3 * SHORT} seconds"}).scalar()
            observer.rollback()  # the next read sees pg_stat_activity anew
            return count == 2 or len(results) > 0

        wait_until(both_waited_long_or_one_failed, 60, "both migrations waiting for a lock")
        locker.rollback()  # releases the table
        for thread in threads:
            thread.join()
    admin.dispose()
    queue.stop()
    assert results == [LATEST, LATEST]
