"""The operations API across real processes, on each backend: worker nodes (`ops_node.py
serve`) run the jobs, while operators act from the test process or from a process of
their own (`ops_node.py op`): suspend and resume, abort, retry and cancel jobs another
node is running, wait for results, read the status; and a killed node's final attempt
is moved to its dead-letter queue exactly once.

Every attempt writes "start"/"end" lines to a history file (see history.py), judged
independently of what the database says.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cluster import HERE, Cluster, Node
from history import Attempt, attempts_of, check_history

from queuetopia_py import (
    Job,
    JobAbortedError,
    JobCancelledError,
    JobDeadLetteredError,
    JobGivenUpError,
    JobInProgressError,
    JobNotFoundError,
    JobStateError,
    MoveTo,
    Queuetopia,
    WaitTimeoutError,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

OPS_NODE = HERE / "ops_node.py"
MAIN = "ops-main"  # the scope operators act on
CANARY = "ops-canary"  # a scope nobody suspends, served by the same nodes
POLL = 0.1  # every node's poll interval
OPERATOR = "ops-test"


@dataclass
class OpsCluster(Cluster):
    """`ops_node.py` nodes serving the `MAIN` scope (and others), and gate files that
    let blocked attempts go on."""

    canary: Queuetopia | None = None

    def start_ops_node(
        self,
        scopes: tuple[str, ...] = (MAIN,),
        *,
        name: str | None = None,
        executor: str = "thread",
        max_concurrency: int = 10,
    ) -> Node:
        index = len(self.nodes)
        stderr_path = self.tmp_path / f"ops-node-{index}.stderr"
        command = [sys.executable, str(OPS_NODE), "serve", "--repo", self.url]
        for scope in scopes:
            command += ["--scope", scope]
        command += ["--log", str(self.history), "--poll-interval", str(POLL)]
        command += ["--max-concurrency", str(max_concurrency), "--executor", executor]
        command += ["--exit-with", str(os.getpid())]
        if name is not None:
            command += ["--node-name", name]
        return self.spawn(command, stderr_path, executor)

    def start_ops_nodes(self, count: int, **options: Any) -> list[Node]:
        """Start `count` nodes and wait until each runs its schedulers."""
        nodes = [self.start_ops_node(**options) for _ in range(count)]
        self.wait_ready(nodes)
        return nodes

    def node_name(self, node: Node, scope: str = MAIN) -> str:
        """The node name `node` runs `scope` under (locks, `attempted_by`, status)."""
        (ready,) = [e for e in self.events() if e["event"] == "ready" and e["pid"] == node.pid]
        return str(ready["nodes"][scope])

    def op(self, action: str, *, scope: str = MAIN, **options: str | None) -> Any:
        """Run one operator action in a process of its own; return what it printed."""
        command = [sys.executable, str(OPS_NODE), "op", "--repo", self.url, "--scope", scope]
        command.append(action)
        for key, value in options.items():
            if value is not None:
                command += [f"--{key}", value]
        done = subprocess.run(command, capture_output=True, cwd=HERE, timeout=60, check=False)
        assert done.returncode == 0, f"{action} failed:\n{done.stderr.decode(errors='replace')}"
        return json.loads(done.stdout)

    def gate(self, name: str) -> str:
        """The path of a gate file: an attempt with `wait_file` set to it blocks until
        `release(name)`."""
        return str(self.tmp_path / f"gate-{name}")

    def release(self, name: str) -> None:
        Path(self.gate(name)).touch()

    def attempts(self, scope: str = MAIN) -> list[Attempt]:
        """The attempts of `scope` the history shows, in order of start."""
        return attempts_of(e for e in self.events() if e.get("scope") == scope)

    def scope_events(self, scope: str = MAIN) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("scope") == scope]

    def wait_started(self, job_id: int, attempt: int = 1, timeout: float = 30.0) -> Attempt:
        """Wait until attempt `attempt` of the job has started (performer side)."""

        def started() -> Attempt | None:
            return next(
                (a for a in self.attempts() if a.job == job_id and a.attempt == attempt), None
            )

        found = self.wait_for(started, f"job {job_id} attempt {attempt} to start", timeout)
        assert found is not None
        return found

    def wait_job(
        self, job_id: int, what: str, check: Callable[[Job], bool], timeout: float = 30.0
    ) -> Job:
        """Wait until `check(job)` holds for the stored job; return it."""

        def job() -> Job | None:
            found = self.queue.get_job(job_id)
            return found if found is not None and check(found) else None

        found = self.wait_for(job, f"job {job_id} {what}", timeout)
        assert found is not None
        return found

    def job(self, job_id: int) -> Job:
        found = self.queue.get_job(job_id)
        assert found is not None, f"job {job_id} not found"
        return found

    def close(self) -> None:
        super().close()
        if self.canary is not None:
            self.canary.stop(timeout=10)


@pytest.fixture
def ops(url: str, tmp_path: Path) -> Iterator[OpsCluster]:
    """Nodes of the `ops-main` scope on a fresh database of the current backend."""
    history = tmp_path / "history.jsonl"
    history.touch()
    made = OpsCluster(
        url=url,
        tmp_path=tmp_path,
        queue=Queuetopia(repo=url, scope=MAIN),
        history=history,
        canary=Queuetopia(repo=url, scope=CANARY),
    )
    try:
        yield made
    finally:
        made.close()


def create(ops: OpsCluster, queue: str, seq: int, **options: Any) -> Job:
    """Create a job of `MAIN`: keyword `params` go to the performer, the rest to
    `create_job` (default timeout 30 s)."""
    params = {"seq": seq, **options.pop("params", {})}
    options.setdefault("timeout", 30)
    return ops.queue.create_job(queue, "ops", params, **options)


def interventions(job: Job) -> list[tuple[str, str, str | None]]:
    return [(i.action, i.by, i.reason) for i in job.interventions]


# -- suspend / resume from a third process -------------------------------------------------


def test_suspending_the_scope_from_a_third_process_stops_every_node_until_resumed(
    ops: OpsCluster,
) -> None:
    # One attempt at a time per node and scope: the two blocking heads of the main scope
    # run one on each node, and so do the two blocking canary jobs later.
    nodes = ops.start_ops_nodes(2, scopes=(MAIN, CANARY), max_concurrency=1)
    pids = {n.pid for n in nodes}
    expected: dict[str, list[int]] = {}
    for name in ("a", "b"):
        head = create(ops, name, 0, params={"wait_file": ops.gate(name)})
        expected[name] = [head.id] + [create(ops, name, seq).id for seq in (1, 2)]
    heads = [expected["a"][0], expected["b"][0]]
    running = [ops.wait_started(job_id) for job_id in heads]
    assert {a.node for a in running} == pids, "both nodes should run a head"

    suspension = ops.op("suspend", by=OPERATOR, reason="maintenance")
    assert suspension["scope"] == MAIN and suspension["queue"] is None
    assert (suspension["suspended_by"], suspension["reason"]) == (OPERATOR, "maintenance")
    scope_status = ops.queue.status()
    assert scope_status.suspended is not None
    assert all(q.suspended == scope_status.suspended for q in scope_status.queues)

    # The attempts running at the suspension finish and are recorded.
    for name in ("a", "b"):
        ops.release(name)
    for job_id in heads:
        ops.wait_job(job_id, "to be done", lambda j: j.done)
    expected["c"] = [create(ops, "c", seq).id for seq in range(2)]  # created while suspended

    # Proving that nothing starts: a wait is the only way (8 poll intervals).
    time.sleep(8 * POLL)
    # Both nodes are alive and polling: each starts an attempt of the canary scope now.
    other = ops.canary
    assert other is not None
    canary = [
        other.create_job(f"canary-{i}", "ops", {"wait_file": ops.gate(f"canary-{i}")})
        for i in range(2)
    ]
    ops.wait_for(
        lambda: {a.node for a in ops.attempts(CANARY)} == pids,
        "both nodes to start a canary attempt",
        timeout=30,
    )
    for i in range(2):
        ops.release(f"canary-{i}")
    ops.wait_for(
        lambda: all(j.done for j in other.list_jobs()),
        "the canary jobs to be done",
        timeout=30,
    )
    assert [c.id for c in canary] == [j.id for j in other.list_jobs()]

    # Nothing of the main scope started since the suspension: only the two heads ran.
    assert sorted(a.job for a in ops.attempts()) == sorted(heads)
    assert [j.state for j in ops.queue.list_jobs(available=True)] == ["pending"] * 6

    resume_asked_at = time.time()
    assert ops.op("resume", by=OPERATOR) is True
    ops.wait_all_done(timeout=30)
    assert ops.op("resume", by=OPERATOR) is False
    assert ops.queue.suspensions() == []

    assert check_history(ops.scope_events(), expected) == []
    attempts = ops.attempts()
    assert len(attempts) == 8, "each job ran exactly once"
    assert all(a.start > resume_asked_at for a in attempts if a.job not in heads)
    assert {a.node for a in attempts} <= pids


def test_suspending_one_queue_from_a_third_process_lets_the_other_queues_flow(
    ops: OpsCluster,
) -> None:
    nodes = ops.start_ops_nodes(2, max_concurrency=1)
    suspension = ops.op("suspend", queue="a", by=OPERATOR, reason="smtp down")
    assert (suspension["queue"], suspension["reason"]) == ("a", "smtp down")
    # The suspended queue's jobs are the oldest: a node passes over them.
    expected = {"a": [create(ops, "a", seq).id for seq in range(3)]}
    for name in ("b", "c"):
        head = create(ops, name, 0, params={"wait_file": ops.gate(name)})
        expected[name] = [head.id] + [create(ops, name, seq).id for seq in (1, 2)]
    # One attempt at a time per node: both nodes, each free to take "a", took "b" or "c".
    running = [ops.wait_started(expected[name][0]) for name in ("b", "c")]
    assert {a.node for a in running} == {n.pid for n in nodes}
    for name in ("b", "c"):
        ops.release(name)
    for job_id in expected["b"] + expected["c"]:
        ops.wait_job(job_id, "to be done", lambda j: j.done)

    # Proving that nothing starts in "a": a wait is the only way (5 poll intervals).
    time.sleep(5 * POLL)
    assert [a.queue for a in ops.attempts()].count("a") == 0
    status = ops.queue.status()
    held = status.queue("a")
    assert held is not None and held.pending == 3 and held.head is not None
    assert held.head.id == expected["a"][0]
    assert held.suspended is not None and held.suspended.queue == "a"
    assert status.suspended is None and status.queue("b") is None  # "b" has nothing to show

    assert ops.op("resume", queue="a", by=OPERATOR) is True
    ops.wait_all_done(timeout=30)
    assert check_history(ops.scope_events(), expected) == []
    assert len(ops.attempts()) == 9


# -- abort, retry, cancel of a job another node runs ---------------------------------------


def test_aborting_a_blocking_head_while_another_node_runs_it_moves_its_queue_on(
    ops: OpsCluster,
) -> None:
    (node,) = ops.start_ops_nodes(1)
    name = ops.node_name(node)
    heads: dict[str, Job] = {}
    followers: dict[str, Job] = {}
    for queue, fail in (("fails", "always"), ("succeeds", None)):
        params = {"wait_file": ops.gate(queue), "fail": fail, "result": {"sent": queue}}
        heads[queue] = create(ops, queue, 0, params=params, max_attempts=5)
        followers[queue] = create(ops, queue, 1)
    for queue, head in heads.items():
        ops.wait_started(head.id)
        shown = ops.queue.status().queue(queue)
        assert shown is not None and shown.lock is not None and shown.lock.node == name
        assert shown.running is not None and shown.running.job.id == head.id

        aborted = ops.queue.abort_job(head.id, by=OPERATOR, reason="stuck on smtp")
        assert aborted.state == "aborted" and aborted.next_attempt_at is None
        assert interventions(aborted) == [("abort", OPERATOR, "stuck on smtp")]
        # The running attempt is not interrupted: the node still holds the queue, and the
        # status shows the attempt running although its job no longer heads the queue.
        shown = ops.queue.status().queue(queue)
        assert shown is not None and shown.lock is not None and shown.lock.node == name
        assert shown.running is not None and shown.running.job.id == head.id
        assert shown.running.job.state == "aborted"
        assert shown.head is not None and shown.head.id == followers[queue].id
        with pytest.raises(JobStateError):
            ops.queue.abort_job(head.id)

    for queue in heads:
        ops.release(queue)
    ops.wait_all_done(timeout=30)

    failed = ops.job(heads["fails"].id)
    assert failed.state == "aborted", "a failure after the abort must not retry the job"
    assert failed.attempts == 1 and failed.next_attempt_at is None
    assert failed.error is not None and f"boom: job {failed.id} attempt 1" in failed.error
    assert interventions(failed) == [("abort", OPERATOR, "stuck on smtp")]
    with pytest.raises(JobAbortedError) as info:
        ops.queue.wait_for(failed.id, timeout=1)
    assert info.value.job.id == failed.id

    succeeded = ops.job(heads["succeeds"].id)
    assert succeeded.state == "done", "the attempt's success after the abort counts"
    assert succeeded.result == {"sent": "succeeds"} and succeeded.outcome is None
    assert interventions(succeeded) == [("abort", OPERATOR, "stuck on smtp")]
    assert ops.queue.wait_for(succeeded.id, timeout=1) == {"sent": "succeeds"}

    attempts = ops.attempts()
    for queue, head in heads.items():
        runs = [a for a in attempts if a.queue == queue]
        assert [(a.job, a.attempt) for a in runs] == [(head.id, 1), (followers[queue].id, 1)]
        assert runs[1].start >= runs[0].stopped, "the next job overlapped the aborted head"
        assert ops.job(followers[queue].id).done
    # The failure was recorded once, on the aborted job: nothing is pending, nothing failed
    # but the aborted head.
    assert ops.queue.status().queues == []
    assert [j.id for j in ops.queue.list_jobs(available=False, state="aborted")] == [failed.id]


def test_retrying_a_waiting_head_runs_it_at_once_despite_its_long_backoff(
    ops: OpsCluster,
) -> None:
    ops.start_ops_nodes(2)
    params = {"wait_file": ops.gate("head"), "fail": 1, "backoff": 3600}
    head = create(ops, "r", 0, params=params, max_attempts=5, max_backoff=timedelta(hours=2))
    later = create(ops, "r", 1)
    ops.wait_started(head.id)
    with pytest.raises(JobInProgressError) as info:
        ops.queue.retry_job(head.id, by=OPERATOR)
    assert info.value.job.id == head.id
    ops.release("head")

    waiting = ops.wait_job(head.id, "to wait for its next attempt", lambda j: j.error is not None)
    assert waiting.state == "retrying" and waiting.next_attempt_at is not None
    status = ops.queue.status()
    assert waiting.next_attempt_at - status.at > timedelta(minutes=50)
    shown = status.queue("r")
    assert shown is not None and shown.blocked and shown.pending == 2

    # The operator comes along a little later: meanwhile every node has polled the
    # queue and seen its head waiting (several poll intervals; part of the scenario).
    time.sleep(5 * POLL)
    retried_at = time.time()
    retried = ops.queue.retry_job(head.id, by=OPERATOR, reason="smtp is back")
    assert retried.state == "retrying" and retried.round_start == 0
    assert retried.next_attempt_at is not None and retried.next_attempt_at <= ops.queue.status().at
    assert interventions(retried) == [("retry", OPERATOR, "smtp is back")]

    second = ops.wait_started(head.id, attempt=2, timeout=5)
    assert second.start - retried_at < 5.0
    ops.wait_all_done(timeout=30)
    assert check_history(ops.scope_events(), {"r": [head.id, later.id]}) == []
    done = ops.job(head.id)
    assert (done.state, done.attempts, done.round_start) == ("done", 2, 0)


def test_retrying_a_given_up_job_gives_it_a_new_round_at_its_place_in_its_queue(
    ops: OpsCluster,
) -> None:
    ops.start_ops_nodes(2)
    first = create(ops, "g", 0, params={"fail": 1}, max_attempts=1)
    blocker = create(ops, "g", 1, params={"wait_file": ops.gate("blocker")})
    rest = [create(ops, "g", seq) for seq in (2, 3)]
    ops.wait_started(blocker.id)

    given_up = ops.job(first.id)
    assert given_up.state == "given_up" and given_up.attempts == 1
    assert given_up.error is not None and "boom" in given_up.error
    retried = ops.queue.retry_job(first.id, by=OPERATOR, reason="fixed the template")
    assert (retried.state, retried.outcome) == ("pending", None)
    assert (retried.attempts, retried.round_start, retried.round_attempts) == (1, 1, 0)
    assert interventions(retried) == [("retry", OPERATOR, "fixed the template")]

    ops.release("blocker")
    ops.wait_all_done(timeout=30)
    runs = [a for a in ops.attempts() if a.queue == "g"]
    # The retried job runs again before the later jobs that had not started.
    assert [(a.job, a.attempt, a.ok) for a in runs] == [
        (first.id, 1, False),
        (blocker.id, 1, True),
        (first.id, 2, True),
        (rest[0].id, 1, True),
        (rest[1].id, 1, True),
    ]
    for before, after in itertools.pairwise(runs):
        assert after.start >= before.stopped, f"{after} overlapped {before}"
    done = ops.job(first.id)
    assert (done.state, done.attempts, done.round_start, done.round_attempts) == ("done", 2, 1, 1)
    assert [j.state for j in ops.queue.list_jobs("g")] == ["done"] * 4


def test_cancelling_a_running_job_is_refused_and_a_cancelled_pending_job_never_runs(
    ops: OpsCluster,
) -> None:
    ops.start_ops_nodes(1)
    running = create(ops, "q", 0, params={"wait_file": ops.gate("running")})
    doomed = create(ops, "q", 1)
    last = create(ops, "q", 2)
    ops.wait_started(running.id)

    with pytest.raises(JobInProgressError) as info:
        ops.queue.cancel_job(running.id, by=OPERATOR)
    assert info.value.job.id == running.id
    assert ops.job(running.id).interventions == ()

    cancelled = ops.queue.cancel_job(doomed.id, by=OPERATOR, reason="sent by hand")
    assert cancelled.state == "cancelled" and cancelled.attempts == 0
    assert interventions(cancelled) == [("cancel", OPERATOR, "sent by hand")]
    with pytest.raises(JobStateError):
        ops.queue.cancel_job(doomed.id)

    ops.release("running")
    ops.wait_all_done(timeout=30)
    assert [(a.job, a.ok) for a in ops.attempts()] == [(running.id, True), (last.id, True)]
    assert [j.state for j in ops.queue.list_jobs("q")] == ["done", "cancelled", "done"]
    assert ops.job(doomed.id).attempts == 0


# -- wait_for across processes ---------------------------------------------------------


def test_wait_for_returns_what_another_process_stored_or_raises_how_the_job_ended(
    ops: OpsCluster,
) -> None:
    ops.start_ops_nodes(1)
    value = {"answer": 42, "items": [1, "two", None, True], "nested": {"x": 1.5}}
    returning = create(ops, "values", 0, params={"result": value, "work": 0.1})
    assert ops.queue.wait_for(returning.id, timeout=30) == value

    failing = create(ops, "failing", 0, params={"fail": "always"}, max_attempts=1)
    with pytest.raises(JobGivenUpError) as given_up:
        ops.queue.wait_for(failing.id, timeout=30)
    assert given_up.value.job.id == failing.id and given_up.value.job.state == "given_up"
    assert given_up.value.job.error is not None and "boom" in given_up.value.job.error

    head = create(ops, "held", 0, params={"wait_file": ops.gate("held")})
    behind = create(ops, "held", 1)
    ops.wait_started(head.id)
    began = time.monotonic()
    with pytest.raises(WaitTimeoutError) as timed_out:
        ops.queue.wait_for(behind.id, timeout=0.3)
    elapsed = time.monotonic() - began
    assert isinstance(timed_out.value, TimeoutError)
    assert 0.3 <= elapsed < 5.0, f"wait_for(timeout=0.3) returned after {elapsed:.2f} s"

    with ThreadPoolExecutor(max_workers=2) as pool:
        waiting_behind = pool.submit(ops.queue.wait_for, behind.id, 30)
        waiting_head = pool.submit(ops.queue.wait_for, head.id, 30)
        ops.queue.cancel_job(behind.id, by=OPERATOR)
        with pytest.raises(JobCancelledError) as cancelled:
            waiting_behind.result(timeout=30)
        assert cancelled.value.job.id == behind.id
        ops.queue.abort_job(head.id, by=OPERATOR)  # running on the node
        with pytest.raises(JobAbortedError):
            waiting_head.result(timeout=30)
    ops.release("held")
    ops.wait_job(head.id, "to have its attempt recorded", lambda j: j.done)
    with pytest.raises(JobNotFoundError):
        ops.queue.wait_for(10**9, timeout=1)


# -- kill -9 and a dead-letter queue -----------------------------------------------------


def test_a_killed_nodes_final_attempt_is_moved_to_the_dead_letter_queue_exactly_once(
    ops: OpsCluster,
) -> None:
    nodes = ops.start_ops_nodes(3)
    timeout = 2.0  # the job's: its lock lives 3 s
    params = {"wait_file": ops.gate("never"), "in_queue": "orig"}  # the copy just succeeds
    job = create(
        ops, "orig", 0, params=params, timeout=timeout, max_attempts=1, on_failure=MoveTo("dead")
    )
    started = ops.wait_started(job.id)
    (victim,) = [n for n in nodes if n.pid == started.node]
    victim_name = ops.node_name(victim)
    dead_at = ops.kill(victim)
    assert dead_at - started.start < timeout, "killed after the attempt timed out"
    survivors = {ops.node_name(n) for n in nodes if n is not victim}

    moved = ops.wait_job(job.id, "to be dead-lettered", lambda j: j.outcome is not None)
    copies = ops.queue.list_jobs("dead")
    assert len(copies) == 1
    copy = ops.wait_job(copies[0].id, "(the copy) to be done", lambda j: j.done)
    ops.wait_all_done(timeout=30, nodes=[n for n in nodes if n is not victim])

    assert moved.state == "dead_lettered" and moved.attempts == 1
    assert moved.attempted_by == victim_name
    assert moved.error is not None and "interrupted" in moved.error
    ((action, by, reason),) = interventions(ops.job(job.id))
    assert action == "dead_letter" and by in survivors, "not moved by a surviving node"
    assert reason is not None and f"job {copy.id}" in reason

    assert copy.params == job.params and copy.attempts == 1 and copy.result is None
    ((action, by, reason),) = interventions(copy)
    assert action == "moved_from" and by in survivors
    assert reason is not None and f"job {job.id}" in reason
    with pytest.raises(JobDeadLetteredError):
        ops.queue.wait_for(job.id, timeout=1)

    # Exactly once: one copy, run once; the killed attempt is the original's only one.
    assert [j.id for j in ops.queue.list_jobs("dead")] == [copy.id]
    runs = [(a.queue, a.job, a.ok) for a in ops.attempts()]
    assert runs == [("orig", job.id, False), ("dead", copy.id, True)]
    assert ops.queue.status().queues == []  # nothing pending in either queue
    assert [j.id for j in ops.queue.list_jobs(state="dead_lettered")] == [job.id]


# -- status from a third process -----------------------------------------------------------


def test_status_from_a_third_process_shows_running_attempts_with_progress_and_blocked_queues(
    ops: OpsCluster,
) -> None:
    # The attempt runs in a worker process of the node: its progress crosses a pipe.
    ops.start_ops_nodes(1, name="node-A", executor="process")
    params = {"progress": ["step 1", 0.5], "wait_file": ops.gate("work")}
    work = create(ops, "work", 0, params=params)
    failing = create(ops, "bad", 0, params={"fail": "always", "backoff": 3600}, max_attempts=3)
    create(ops, "bad", 1)
    stuck = create(ops, "stuck", 0, params={"fail": "always"}, max_attempts=1, on_failure="block")

    ops.wait_job(work.id, "to report progress", lambda j: j.progress is not None)
    ops.wait_job(failing.id, "to fail", lambda j: j.state == "retrying")
    ops.wait_job(stuck.id, "to be blocked", lambda j: j.state == "blocked")

    status = ops.op("status")
    assert status["scope"] == MAIN and status["suspended"] is None
    queues = {q["queue"]: q for q in status["queues"]}
    # The blocked queues first (the longest failing first), then the others by name.
    assert sorted(list(queues)[:2]) == ["bad", "stuck"] and list(queues)[2:] == ["work"]

    assert list(status["nodes"]) == ["node-A"]
    (running,) = status["nodes"]["node-A"]
    assert (running["node"], running["queue"], running["job"]["id"]) == ("node-A", "work", work.id)
    progress = running["job"]["progress"]
    assert (progress["message"], progress["fraction"]) == ("step 1", 0.5)
    shown = queues["work"]
    assert (shown["lock"]["node"], shown["lock"]["job_id"]) == ("node-A", work.id)
    assert shown["running"]["job"]["id"] == work.id
    assert shown["blocked"] is False and shown["pending"] == 1

    shown = queues["bad"]
    assert shown["blocked"] is True and shown["running"] is None and shown["lock"] is None
    assert (shown["pending"], shown["failed"]) == (2, 0)
    head = shown["head"]
    assert (head["id"], head["state"], head["attempts"]) == (failing.id, "retrying", 1)
    assert f"boom: job {failing.id} attempt 1" in head["error"]
    assert head["failing_since"] is not None and head["attempted_by"] == "node-A"

    shown = queues["stuck"]
    head = shown["head"]
    assert shown["blocked"] is True
    assert (head["id"], head["state"], head["attempts"]) == (stuck.id, "blocked", 1)
    assert head["next_attempt_at"] is None and "boom" in head["error"]

    ops.release("work")
    ops.wait_job(work.id, "to be done", lambda j: j.done)
    (reported,) = [e for e in ops.scope_events() if e["event"] == "progress"]
    assert reported["reported"] is True
    after = ops.queue.status()
    assert after.nodes == {} and after.queue("work") is None
    assert {q.queue for q in after.blocked} == {"bad", "stuck"}
