"""A database outage under running nodes: the private server of the test is stopped for
30 seconds while worker processes run ordered queues, then started again.

The nodes keep running through it and log it, `create_job` fails at once with a clear
error, and once the database is back every job is done: in order, one attempt at a time,
and none run twice (the jobs' locks, 60 s, outlive the outage). SQLite has no server to
stop: it is not part of this test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import SCOPE, Cluster
from history import check_history
from servers import PrivateDatabase

from queuetopia_py import DatabaseUnavailableError, Queuetopia, migrate

OUTAGE = 30.0
QUEUES = [f"outage-{i}" for i in range(6)]
PER_QUEUE = 10


@pytest.fixture
def outage_cluster(private_server: PrivateDatabase, tmp_path: Path) -> Iterator[Cluster]:
    migrate(private_server.url)
    history = tmp_path / "history.jsonl"
    history.touch()
    queue = Queuetopia(repo=private_server.url, scope=SCOPE)
    made = Cluster(url=private_server.url, tmp_path=tmp_path, queue=queue, history=history)
    try:
        yield made
    finally:
        if not private_server.running:
            private_server.start()
        made.close()


def test_nodes_ride_through_a_30_second_outage_and_lose_or_repeat_nothing(
    private_server: PrivateDatabase, outage_cluster: Cluster
) -> None:
    cluster = outage_cluster
    nodes = cluster.start_nodes(2)
    created: dict[str, list[int]] = {q: [] for q in QUEUES}
    for seq in range(PER_QUEUE):
        for i, q in enumerate(QUEUES):
            # The default timeout (60 s): each lock outlives the outage.
            work = 0.1 + 0.1 * ((seq + i) % 4)
            created[q].append(cluster.queue.create_job(q, "system", {"seq": seq, "work": work}).id)
    cluster.wait_for(
        lambda: sum(e["event"] == "end" for e in cluster.events()) >= 2 * len(QUEUES),
        "a few jobs done before the outage",
        60,
    )

    private_server.stop()
    down = time.monotonic()
    before = {e["job"] for e in cluster.events() if e["event"] == "end"}
    with pytest.raises(DatabaseUnavailableError, match=r"^database unreachable: "):
        cluster.queue.create_job("outage-new", "system", {"seq": 0})
    # The nodes keep running for the whole outage (wait_for fails if one exits).
    cluster.wait_for(
        lambda: time.monotonic() - down >= OUTAGE, "the outage to last", OUTAGE + 30, nodes
    )
    private_server.start()
    cluster.wait_all_done(timeout=180, nodes=nodes)

    events = cluster.events()
    assert check_history(events, created) == []
    starts = [e for e in events if e["event"] == "start"]
    ran = [e["job"] for e in starts]
    assert sorted(ran) == sorted(j for jobs in created.values() for j in jobs), (
        "every job ran exactly once"
    )
    assert len(before) < len(ran), "the outage began before the last jobs ran"
    # (A claim committed just as the server went down, its answer lost, counts one more
    # attempt, never run, in `attempts`: the history above is the measure of runs.)
    for job in cluster.jobs():
        assert job.done, job
    for node in nodes:
        log = node.stderr()
        assert "database unreachable" in log or "transient database error" in log, log
        assert "succeeded after" in log or "polling again after" in log, log  # and its end
        # One outage, a bounded number of warnings: no line per retry.
        assert log.count("\n") < 60, log
        assert "Traceback" not in log, log
