"""A connection lost under the scheduler's statements (server restart, killed backend) is
replaced and the statement retried: the claim, the record and the lock pass all go on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from queuetopia_py import Queuetopia
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Claim


def _kill_pinned_connection(queue: Queuetopia) -> None:
    """Terminate, from another connection, the server session of this thread's pinned
    connection."""
    pinned = queue._db._local.connection
    if queue._db.dialect == "postgresql":
        pid = pinned.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        pinned.rollback()
        with queue.engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            admin.commit()
    else:
        pid = pinned.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
        pinned.rollback()
        with queue.engine.connect() as admin:
            admin.exec_driver_sql(f"KILL {int(pid)}")


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_the_hot_path_survives_its_connection_being_killed(make_queue: Callable) -> None:
    queue = make_queue()
    first = queue.create_job("q", "a", {}, max_backoff=0)
    second = queue.create_job("q", "a", {}, max_backoff=0)
    store = ClaimStore(queue._db, queue.scope, "node")
    with queue._db.pinned():
        _kill_pinned_connection(queue)
        claim = store.claim("q")
        assert isinstance(claim, Claim) and claim.job.id == first.id
        _kill_pinned_connection(queue)
        done, following = store.records.record_success_and_claim(claim, {"ok": True})
        assert done is not None and isinstance(following, Claim)
        assert following.job.id == second.id
        _kill_pinned_connection(queue)
        assert store.records.record_success(following) is not None
    assert [(j.done, j.attempts) for j in queue.list_jobs()] == [(True, 1), (True, 1)]
    assert store.locks.locks_held() == []
