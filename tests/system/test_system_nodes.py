"""Several real worker processes on one database (each backend): order, exclusivity,
take-over after `kill -9`, and jobs surviving a restart.

Each node is a `node.py` process; every attempt writes "start"/"end" lines to a history
file that `history.check_history` judges independently of the database.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from cluster import Cluster, Node, process_gone
from history import Attempt, attempts_of, check_history

from queuetopia_py import Job
from queuetopia_py._schema import build_tables

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

JOB_TIMEOUT = 2.0  # every job's timeout: its queue's lock lives 3 s


def node_pid(job: Job) -> int:
    """The pid of the node that made the job's last attempt (from `host:pid:random`)."""
    assert job.attempted_by is not None
    return int(job.attempted_by.split(":")[-2])


def assert_log_matches_database(jobs: list[Job], attempts: list[Attempt]) -> None:
    """Each job done, by the node whose attempt succeeded, after as many attempts as logged."""
    logged = Counter(a.job for a in attempts)
    succeeded = {a.job: a.node for a in attempts if a.ok}
    for job in jobs:
        assert job.done, f"job {job.id} of {job.queue} is not done: {job}"
        assert job.attempts == logged[job.id], f"job {job.id}: {job.attempts} attempts recorded"
        assert node_pid(job) == succeeded[job.id], f"job {job.id} recorded by another node"


def test_three_nodes_run_every_queue_in_creation_order_one_attempt_at_a_time(
    cluster: Cluster,
) -> None:
    nodes = cluster.start_nodes(3)
    queues = [f"queue-{i:02d}" for i in range(20)]
    started = time.monotonic()
    expected = cluster.create_jobs(queues, 8, work=0.01)
    cluster.wait_all_done(timeout=60)
    elapsed = time.monotonic() - started

    events = cluster.events()
    assert check_history(events, expected) == []
    attempts = attempts_of(events)
    assert len(attempts) == 20 * 8, "without a crash, each job runs exactly once"
    assert_log_matches_database(cluster.jobs(), attempts)
    per_node = Counter(a.node for a in attempts)
    assert len(per_node) >= 2, f"the work was not shared between nodes: {per_node}"
    assert set(per_node) <= {n.pid for n in nodes}
    print(f"\n160 jobs on 3 nodes in {elapsed:.2f} s; attempts per node: {dict(per_node)}")


@dataclass
class KillReport:
    killed: Node
    killed_at: float
    blocked: Attempt
    take_over: Attempt
    locked_until: float


def lock_expiry(cluster: Cluster, queue: str) -> float:
    """The `locked_until` (database time, as a Unix time) of the queue's lock."""
    queues = build_tables().queues
    with cluster.queue.engine.connect() as conn:
        until = conn.execute(
            sa.select(queues.c.locked_until).where(queues.c.queue == queue)
        ).scalar_one()
    return float(until.timestamp())


def kill_a_node_mid_job(
    cluster: Cluster, executor: str, *, max_concurrency: int = 10, other_queues: int = 4
) -> KillReport:
    """Three nodes; the node running a job that blocks on its first attempt is killed -9.

    Checks the history (the killed attempts ran until the kill) and the database; returns
    what the caller reports and checks further.
    """
    nodes = cluster.start_nodes(3, executor=executor, max_concurrency=max_concurrency)
    queues = [f"other-{i}" for i in range(other_queues)]
    expected = cluster.create_jobs(queues, 5, work=0.05)
    victim = []
    for seq in range(5):
        params = {"seq": seq, "work": 0.05, **({"block_first": 60} if seq == 1 else {})}
        victim.append(cluster.queue.create_job("victim", "system", params, timeout=JOB_TIMEOUT))
    expected["victim"] = [job.id for job in victim]
    blocking = victim[1].id

    def blocked_start() -> Attempt | None:
        return next((a for a in attempts_of(cluster.events()) if a.job == blocking), None)

    blocked = cluster.wait_for(blocked_start, "the blocking job to start", timeout=30)
    locked_until = lock_expiry(cluster, "victim")
    (killed,) = [n for n in nodes if n.pid == blocked.node]
    dead_at = cluster.kill(killed)
    assert dead_at - blocked.start < JOB_TIMEOUT, "killed after the attempt timed out"
    # The attempts the node was running die with it (its worker processes too).
    orphans = [a.pid for a in attempts_of(cluster.events()) if a.node == killed.pid and not a.end]
    cluster.wait_for(
        lambda: all(process_gone(pid) for pid in orphans),
        f"the killed node's attempt processes {orphans} to end",
        timeout=5,
    )
    killed_at = time.time()

    cluster.wait_all_done(timeout=30)
    events = cluster.events()
    assert check_history(events, expected, kills={killed.pid: killed_at}) == []
    attempts = attempts_of(events, kills={killed.pid: killed_at})
    # Nothing of the killed node ran on: no attempt started or ended after its death.
    late = [a for a in attempts if a.node == killed.pid and max(a.start, a.end or 0) > dead_at]
    assert late == [], f"attempts of the killed node ran after its death at {dead_at:.6f}"
    runs = [a for a in attempts if a.job == blocking]
    assert [(a.attempt, a.ok) for a in runs] == [(1, False), (2, True)]
    take_over = runs[1]
    assert take_over.node != killed.pid
    assert take_over.start >= locked_until, "the lock was taken before it expired"

    jobs = cluster.jobs()
    assert all(job.done for job in jobs)
    by_id = {job.id: job for job in jobs}
    assert by_id[blocking].attempts == 2 and node_pid(by_id[blocking]) == take_over.node
    logged = Counter(a.job for a in attempts)
    for job in jobs:
        # A killed node may have claimed a job (counted an attempt) without starting it.
        assert job.attempts >= logged[job.id] >= 1, job
    alive = cluster.alive()
    assert len(alive) == 2 and all(n.pid != killed.pid for n in alive)
    return KillReport(killed, killed_at, blocked, take_over, locked_until)


def print_take_over(executor: str, report: KillReport) -> None:
    print(
        f"\n[{executor}] take-over: {report.take_over.start - report.killed_at:.2f} s after"
        f" the kill, {report.take_over.start - report.blocked.start:.2f} s after the killed"
        f" attempt started, {report.take_over.start - report.locked_until:.3f} s after its"
        " lock expired"
    )


def test_a_queue_whose_node_is_killed_mid_job_is_taken_over_once_its_lock_expires(
    cluster: Cluster,
) -> None:
    report = kill_a_node_mid_job(cluster, "thread")
    assert report.blocked.pid == report.killed.pid
    assert report.take_over.start - report.locked_until < 3.0, "take-over was slow"
    print_take_over("thread", report)


def test_killing_a_node_also_kills_the_worker_process_running_its_attempt(
    cluster: Cluster,
) -> None:
    # At most two attempts a node: this tests the kill, not how fast a 2-core machine
    # starts a dozen interpreters at once.
    report = kill_a_node_mid_job(cluster, "process", max_concurrency=2, other_queues=3)
    child = report.blocked.pid
    assert child != report.killed.pid, "the attempt ran in the node, not a worker process"
    assert process_gone(child)
    assert report.take_over.start - report.locked_until < 5.0, "take-over was slow"
    print_take_over("process", report)


def test_jobs_created_while_no_node_runs_survive_a_graceful_restart(cluster: Cluster) -> None:
    queues = [f"queue-{i}" for i in range(4)]
    expected = cluster.create_jobs(queues, 6, work=0.3)
    assert cluster.events() == []

    first = cluster.start_node(max_concurrency=4)
    cluster.wait_ready([first])

    def mid_way() -> bool:
        # Six jobs done, and an attempt that started less than 0.1 s ago (of its 0.3 s).
        attempts = attempts_of(cluster.events())
        fresh = [a for a in attempts if a.end is None and a.start > time.time() - 0.1]
        return sum(a.ok for a in attempts) >= 6 and bool(fresh)

    cluster.wait_for(mid_way, "six jobs done and one just started", timeout=30)
    signalled_at = time.time()
    assert cluster.terminate(first) == 0, first.describe()

    events = cluster.events()
    (stopped,) = [e for e in events if e["event"] == "stopped"]
    assert stopped["pid"] == first.pid and stopped["finished"] is True
    by_first = attempts_of(events)
    assert all(a.ok for a in by_first), "an attempt was cut short by the graceful stop"
    done = {job.id: job for job in cluster.jobs() if job.done}
    running = [a for a in by_first if a.start < signalled_at < a.stopped]
    assert running, "no attempt was running when the stop was asked"
    for a in running:  # each finished, and its success was recorded
        assert done[a.job].attempts == 1 and node_pid(done[a.job]) == first.pid
    assert len(done) == len(by_first) < 24, "the first node ran everything before its stop"

    second = cluster.start_nodes(1)[0]
    cluster.wait_all_done(timeout=30)
    events = cluster.events()
    assert check_history(events, expected) == []
    attempts = attempts_of(events)
    assert len(attempts) == 24, "a job ran twice or not at all"
    assert_log_matches_database(cluster.jobs(), attempts)
    after = [a for a in attempts if a.job not in done]
    assert after and all(a.node == second.pid and a.start > stopped["t"] for a in after)
    print(f"\nrestart: {len(by_first)} jobs before the stop, {len(after)} after")


def _deadlocks(cluster: Cluster) -> int:
    """Deadlocks the database server has detected so far (in this test's database)."""
    with cluster.queue.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            return int(
                conn.execute(
                    sa.text(
                        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
                    )
                ).scalar_one()
            )
        return int(conn.execute(sa.text("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")).one()[1])


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_four_nodes_share_a_thousand_queues_without_deadlock_or_stall(cluster: Cluster) -> None:
    queues = [f"q{i:04d}" for i in range(1000)]
    created = cluster.queue.create_jobs(
        {"queue": q, "action": "system", "params": {"seq": seq}, "timeout": JOB_TIMEOUT}
        for seq in range(2)
        for q in queues
    )
    expected: dict[str, list[int]] = {q: [] for q in queues}
    for job in created:
        expected[job.queue].append(job.id)
    before = _deadlocks(cluster)
    nodes = cluster.start_nodes(4)
    cluster.wait_all_done(timeout=90)
    events = cluster.events()
    assert check_history(events, expected) == []
    attempts = attempts_of(events)
    assert len(attempts) == len(created), "without a crash, each job runs exactly once"
    assert _deadlocks(cluster) == before, "the nodes' claims and records deadlocked"
    per_node = Counter(a.node for a in attempts)
    assert set(per_node) == {n.pid for n in nodes}, f"a node ran nothing: {per_node}"
    for node in nodes:
        assert cluster.terminate(node) == 0, node.describe()
