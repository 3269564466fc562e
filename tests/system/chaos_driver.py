"""The chaos workload: worker nodes (node.py) run many ordered queues while nodes are
killed -9 (each replaced by a fresh one) and the database server is restarted or crashed;
then the history is checked (history.check_history) and the database asked whether every
job is done. Used small by test_system_chaos.py and long by bench/chaos.py.

Jobs come in rounds: each queue gets `jobs_per_queue` jobs at once, and another round
whenever few jobs are left, for as long as the chaos lasts; then the queues drain. Each
job sleeps a short while, some (`long_share`) longer, so that kills land mid-attempt: a
kill picks a node running an attempt with time left, when there is one.

Every random choice comes from seeded `random.Random`s, one each for the jobs, the chaos
actions (which, when, how long down) and the victims: the timing of the processes does
not repeat, but the workload and the sequence of actions do.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from cluster import SCOPE, Cluster, Node
from history import Attempt, attempts_of, check_history
from servers import PrivateDatabase, PrivateServer

from queuetopia_py import Queuetopia, migrate
from queuetopia_py._errors import DatabaseError

T = TypeVar("T")
Target = PrivateServer | PrivateDatabase


class ChaosError(AssertionError):
    """The run could not go on (a node exited by itself, a wait timed out, ...); the
    message carries the evidence."""


@dataclass(frozen=True)
class ChaosPlan:
    """What a chaos run does.

    With `duration` None, the chaos is `kills` node kills and `restarts` database restarts
    (skipped when the database has no server), in a seeded random order; with a
    `duration`, actions follow each other for that many seconds, each a restart with
    probability `restart_share` (when there is a server) and a kill otherwise.
    """

    seed: int
    nodes: int = 3
    queues: int = 12
    jobs_per_queue: int = 8
    kills: int = 4
    restarts: int = 1
    duration: float | None = None
    restart_share: float = 0.15
    #: Share of the restarts done as a crash (SIGKILL of the server) rather than a stop.
    crash_share: float = 0.0
    #: Seconds between two chaos actions (uniform).
    pause: tuple[float, float] = (0.4, 1.2)
    #: Seconds the server stays down during a restart (uniform).
    downtime: tuple[float, float] = (0.5, 2.0)
    job_timeout: float = 2.0
    short_work: tuple[float, float] = (0.01, 0.08)
    long_work: tuple[float, float] = (0.2, 1.0)
    long_share: float = 0.3
    max_concurrency: int = 6
    #: Seconds the queues have to drain once the chaos is over.
    drain_timeout: float = 90.0
    #: Seconds a fresh node has to get ready.
    ready_timeout: float = 60.0


@dataclass(frozen=True)
class Kill:
    """A node killed -9: `at` is an instant by which it was dead (reaped); `queues` are
    those it was running an attempt of, and `mid_attempt` whether it was."""

    pid: int
    at: float
    queues: tuple[str, ...]

    @property
    def mid_attempt(self) -> bool:
        return bool(self.queues)


@dataclass(frozen=True)
class Restart:
    """The database server stopped (`kind` "stop") or crashed at `down`, back at `back`."""

    kind: Literal["stop", "crash"]
    down: float
    back: float


@dataclass(frozen=True)
class TakeOver:
    """After a kill, the next attempt in a queue the killed node was running: `seconds`
    from the kill to its start (None: there was none), the `job` and the number of that
    `attempt`. `lock_bound`: only the lock held the queue back, the interrupted attempt's
    backoff being within the lock's lifetime (a job interrupted again and again waits
    its growing backoff instead, as designed)."""

    pid: int
    queue: str
    seconds: float | None
    job: int | None = None
    attempt: int | None = None
    lock_bound: bool = True


@dataclass
class ChaosReport:
    """What a chaos run did and found."""

    backend: str
    seed: int
    plan: ChaosPlan
    jobs: int = 0
    attempts: int = 0
    kills: list[Kill] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    take_overs: list[TakeOver] = field(default_factory=list)
    #: Jobs run again after an attempt that succeeded on a node that was not killed: the
    #: success went unrecorded around a database outage (allowed: at least once).
    reruns_after_outage: int = 0
    #: Things gone wrong besides the history: a node that did not stop cleanly, ...
    problems: list[str] = field(default_factory=list)
    #: ERROR/CRITICAL log lines of the nodes, by message (numbers masked), with counts.
    node_errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    chaos_seconds: float = 0.0
    drain_seconds: float = 0.0
    work_dir: str = ""

    @property
    def take_over_seconds(self) -> list[float]:
        return sorted(t.seconds for t in self.take_overs if t.seconds is not None)

    @property
    def lock_bound_seconds(self) -> list[float]:
        """Take-over times where only the lock held the queue back."""
        return sorted(t.seconds for t in self.take_overs if t.seconds is not None and t.lock_bound)

    @property
    def sound(self) -> bool:
        """No violation, no lost job, no problem."""
        return not (self.violations or self.lost or self.problems)

    def summary(self) -> str:
        """The figures, a few lines to print."""
        times, bound = self.take_over_seconds, self.lock_bound_seconds
        kinds = Counter(r.kind for r in self.restarts)
        mid = sum(k.mid_attempt for k in self.kills)
        lines = [
            f"chaos [{self.backend}] seed={self.seed}: {self.jobs} jobs, {self.attempts}"
            f" attempts, {len(self.kills)} kills ({mid} mid-attempt), {len(self.restarts)}"
            f" database restarts ({kinds['stop']} stop/start, {kinds['crash']} crash),"
            f" {len(self.violations)} violations, {len(self.lost)} lost jobs,"
            f" {self.reruns_after_outage} successes run again after a database outage",
            f"  take-over after a kill: p50/max {_p50_max(times)} over {len(times)} queues;"
            f" {_p50_max(bound)} over the {len(bound)} where only the"
            f" {self.plan.job_timeout + 1:g} s lock held it back",
            f"  wall {self.wall:.1f} s (chaos {self.chaos_seconds:.1f} s, drain"
            f" {self.drain_seconds:.1f} s)",
        ]
        slowest = sorted(
            (t for t in self.take_overs if t.seconds is not None), key=lambda t: -(t.seconds or 0)
        )
        for t in slowest[:3]:
            lines.append(
                f"  slow take-over: {t.queue} resumed {t.seconds:.2f} s after node {t.pid}"
                f" was killed, with attempt {t.attempt} of job {t.job}"
            )
        for r in self.restarts:
            lines.append(f"  database {r.kind}: down {r.back - r.down:.2f} s")
        for message, count in sorted(self.node_errors.items(), key=lambda i: -i[1])[:8]:
            lines.append(f"  node log x{count}: {message}")
        lines += [f"  VIOLATION: {v}" for v in self.violations[:20]]
        if self.lost:
            lines.append(f"  LOST jobs: {self.lost[:20]}")
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        times, bound = self.take_over_seconds, self.lock_bound_seconds
        return {
            "backend": self.backend,
            "seed": self.seed,
            "plan": asdict(self.plan),
            "jobs": self.jobs,
            "attempts": self.attempts,
            "kills": len(self.kills),
            "kills_mid_attempt": sum(k.mid_attempt for k in self.kills),
            "restarts": len(self.restarts),
            "restart_kinds": dict(Counter(r.kind for r in self.restarts)),
            "downtime_seconds": [round(r.back - r.down, 3) for r in self.restarts],
            "violations": self.violations,
            "lost": self.lost,
            "reruns_after_outage": self.reruns_after_outage,
            "take_over_p50": statistics.median(times) if times else None,
            "take_over_max": max(times) if times else None,
            "take_over_seconds": [round(t, 3) for t in times],
            "lock_bound_take_over_p50": statistics.median(bound) if bound else None,
            "lock_bound_take_over_max": max(bound) if bound else None,
            "take_overs": [asdict(t) for t in self.take_overs],
            "kill_log": [asdict(k) for k in self.kills],
            "problems": self.problems,
            "node_errors": self.node_errors,
            "wall_seconds": round(self.wall, 3),
            "chaos_seconds": round(self.chaos_seconds, 3),
            "drain_seconds": round(self.drain_seconds, 3),
            "work_dir": self.work_dir,
        }


class ChaosRun:
    """One chaos run on one database (see the module docstring).

    `target` is the private server (or a database on it) whose `url` the nodes use; its
    stop, start and crash are the database restarts. `work_dir` receives the history and
    the nodes' output. `log` gets a line for each action.
    """

    def __init__(
        self,
        target: Target,
        plan: ChaosPlan,
        work_dir: Path,
        log: Callable[[str], None] = print,
    ) -> None:
        self.target = target
        self.plan = plan
        self.jobs_rng = random.Random(f"{plan.seed}:jobs")
        self.chaos_rng = random.Random(f"{plan.seed}:chaos")
        self.victim_rng = random.Random(f"{plan.seed}:victims")
        self.log = log
        self.work_dir = work_dir
        history = work_dir / "history.jsonl"
        history.touch()
        migrate(target.url)
        self.cluster = Cluster(
            url=target.url,
            tmp_path=work_dir,
            queue=Queuetopia(repo=target.url, scope=SCOPE),
            history=history,
        )
        self.report = ChaosReport(
            backend=target.backend, seed=plan.seed, plan=plan, work_dir=str(work_dir)
        )
        self.expected: dict[str, list[int]] = {f"queue-{i:02d}": [] for i in range(plan.queues)}
        self.work: dict[int, float] = {}  # job id -> its seconds of work
        self.killed: set[int] = set()
        self.stopped: set[int] = set()
        self.started = 0.0
        self._events: list[dict[str, Any]] = []
        self._read_up_to = 0

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> ChaosReport:
        """Run the workload and the chaos, drain, check; return the report (also on
        `self.report`). Raises `ChaosError` when the run cannot go on."""
        plan = self.plan
        self.started = time.monotonic()
        self.add_round()
        nodes = [self.start_node() for _ in range(plan.nodes)]
        self.wait_ready(nodes)
        chaos_began = time.monotonic()
        for action in self.actions():
            self.pause(self.chaos_rng.uniform(*plan.pause))
            if action == "kill":
                self.kill_one()
            else:
                self.restart_database()
        self.report.chaos_seconds = time.monotonic() - chaos_began
        drain_began = time.monotonic()
        try:
            self.drain()
        except ChaosError as exc:  # judge what did run all the same
            self.report.problems.append(str(exc))
        self.report.drain_seconds = time.monotonic() - drain_began
        self.stop_nodes()
        self.report.wall = time.monotonic() - self.started
        self.check()
        return self.report

    def close(self) -> None:
        """Kill whatever the run started."""
        self.cluster.close()

    def actions(self) -> Iterator[str]:
        """The chaos actions, "kill" or "restart", in order."""
        plan = self.plan
        restartable = self.target.restartable
        if plan.duration is None:
            actions = ["kill"] * plan.kills + ["restart"] * (plan.restarts if restartable else 0)
            self.chaos_rng.shuffle(actions)
            yield from actions
            return
        end = time.monotonic() + plan.duration
        while time.monotonic() < end:
            restart = restartable and self.chaos_rng.random() < plan.restart_share
            yield "restart" if restart else "kill"

    # -- jobs ----------------------------------------------------------------------------

    def add_round(self) -> None:
        """Give every queue `jobs_per_queue` more jobs (one transaction)."""
        plan = self.plan
        items = []
        for _ in range(plan.jobs_per_queue):
            for queue, ids in self.expected.items():
                long = self.jobs_rng.random() < plan.long_share
                work = round(
                    self.jobs_rng.uniform(*(plan.long_work if long else plan.short_work)), 3
                )
                items.append(
                    {
                        "queue": queue,
                        "action": "chaos",
                        "params": {"seq": len(ids), "work": work},
                        "timeout": plan.job_timeout,
                    }
                )
        created = self.cluster.queue.create_jobs(items)
        for job in created:
            self.expected[job.queue].append(job.id)
            self.work[job.id] = float(job.params["work"])
        self.report.jobs = len(self.work)

    def pending(self, limit: int | None = None) -> int | None:
        """How many jobs are pending (at most `limit`), or None if the database did not
        answer."""
        try:
            return len(self.cluster.queue.list_jobs(available=True, limit=limit))
        except DatabaseError:
            return None

    def refill(self) -> None:
        """Another round of jobs when fewer than two a queue are left."""
        low = 2 * self.plan.queues
        left = self.pending(limit=low)
        if left is not None and left < low:
            self.add_round()

    # -- nodes ---------------------------------------------------------------------------

    def start_node(self) -> Node:
        return self.cluster.start_node(max_concurrency=self.plan.max_concurrency)

    def events(self) -> list[dict[str, Any]]:
        """The history so far, read on from where the last call stopped."""
        with self.cluster.history.open("rb") as f:
            f.seek(self._read_up_to)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._read_up_to += len(complete)
        self._events += [json.loads(line) for line in complete.split(b"\n") if line.strip()]
        return self._events

    def wait_ready(self, nodes: list[Node]) -> None:
        pids = {n.pid for n in nodes}
        self.wait(
            lambda: pids <= {e["pid"] for e in self.events() if e["event"] == "ready"},
            f"nodes {sorted(pids)} to be ready",
            self.plan.ready_timeout,
        )

    def alive(self) -> list[Node]:
        return [n for n in self.cluster.nodes if n.pid not in self.killed | self.stopped]

    def check_nodes(self) -> None:
        """Raise `ChaosError` if a node exited without being killed or stopped."""
        dead = [n for n in self.alive() if n.process.poll() is not None]
        if dead:
            raise ChaosError(
                f"[{self.target.backend} seed {self.plan.seed}] a node exited by itself\n"
                + "\n".join(n.describe() for n in dead)
            )

    def running_attempts(self) -> list[Attempt]:
        """Attempts without an end, of nodes not killed."""
        ours = {n.pid for n in self.alive()}
        return [a for a in attempts_of(self.events()) if a.end is None and a.node in ours]

    def kill_one(self) -> None:
        """Kill -9 a node running an attempt with time left (any node, if none comes
        within a few seconds), and start a fresh one in its place."""
        nodes = {n.pid: n for n in self.alive()}

        def victim() -> Node | None:
            now = time.time()
            busy = [
                a
                for a in self.running_attempts()
                if a.start + self.work.get(a.job, 0.0) - now > 0.05
            ]
            if not busy:
                return None
            return nodes.get(self.victim_rng.choice(busy).node)

        chosen = self.wait(victim, "a node running an attempt", 5.0, fail=False)
        if chosen is None:
            chosen = self.victim_rng.choice(list(nodes.values()))
        dead_at = self.cluster.kill(chosen)
        self.killed.add(chosen.pid)
        attempts = attempts_of(self.events())
        running = sorted({a.queue for a in attempts if a.node == chosen.pid and a.end is None})
        self.report.kills.append(Kill(chosen.pid, dead_at, tuple(running)))
        self.log(
            f"  {self.elapsed():6.1f} s  kill -9 node {chosen.pid}"
            f" ({'running ' + ', '.join(running) if running else 'idle'})"
        )
        self.wait_ready([self.start_node()])

    def stop_nodes(self) -> None:
        """Stop the remaining nodes gracefully; each must exit 0."""
        for node in self.alive():
            node.process.terminate()
        for node in self.alive():
            try:
                code = node.process.wait(timeout=60)
            except Exception:
                code = None
            self.stopped.add(node.pid)
            if code != 0:
                self.report.problems.append(
                    f"node {node.pid} did not stop cleanly (exit code {code}):\n{node.describe()}"
                )

    # -- the database ----------------------------------------------------------------------

    def restart_database(self) -> None:
        """Stop or crash the server, leave it down a while (nodes must survive that),
        start it again."""
        kind: Literal["stop", "crash"] = (
            "crash" if self.chaos_rng.random() < self.plan.crash_share else "stop"
        )
        downtime = self.chaos_rng.uniform(*self.plan.downtime)
        down = time.time()
        if kind == "crash":
            self.target.crash()
        else:
            self.target.stop()
        self.pause(downtime)
        self.target.start()
        back = time.time()
        # Our own client's pooled connections died with the server.
        self.cluster.queue.engine.dispose()
        self.report.restarts.append(Restart(kind, down, back))
        self.log(f"  {self.elapsed():6.1f} s  database {kind}, down {back - down:.2f} s")

    # -- waiting -------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def pause(self, seconds: float) -> None:
        """Let the workload run for `seconds`, watching the nodes and keeping the queues
        fed (while the database is up)."""
        end = time.monotonic() + seconds
        next_refill = 0.0
        while True:
            self.check_nodes()
            now = time.monotonic()
            if now >= end:
                return
            if now >= next_refill and self.target_up():
                self.refill()
                next_refill = now + 0.5
            time.sleep(min(0.05, end - now))

    def target_up(self) -> bool:
        return self.target.running

    def wait(
        self, condition: Callable[[], T], what: str, timeout: float, *, fail: bool = True
    ) -> T:
        """Poll `condition` until it holds (returning its value), watching the nodes;
        at `timeout`, raise `ChaosError` (or return the last value, with `fail` False)."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            self.check_nodes()
            if time.monotonic() > deadline:
                if not fail:
                    return value
                raise ChaosError(
                    f"[{self.target.backend} seed {self.plan.seed}] timed out after {timeout} s"
                    f" waiting for {what}\n" + self.evidence()
                )
            time.sleep(0.02)

    def drain(self) -> None:
        """Wait until no job is pending (every node alive meanwhile)."""
        self.wait(
            lambda: self.pending(limit=1) == 0, "every job to be done", self.plan.drain_timeout
        )

    def evidence(self) -> str:
        """Pending jobs, the queues' locks and the nodes' output: what a stuck run shows."""
        parts = []
        try:
            pending = self.cluster.queue.list_jobs(available=True, limit=10)
            parts.append(f"{len(pending)} jobs pending, e.g. {pending[:3]}")
        except DatabaseError as exc:
            parts.append(f"pending jobs unknown: {exc}")
        parts += [n.describe() for n in self.cluster.nodes if n.pid not in self.killed]
        return "\n".join(parts)

    # -- checking ------------------------------------------------------------------------

    def check(self) -> None:
        """Judge the history and the database; fill in the report."""
        report = self.report
        kills = {k.pid: k.at for k in report.kills}
        outages = [(r.down, r.back) for r in report.restarts]
        events = self.cluster.events()
        attempts = attempts_of(events, kills)
        report.attempts = len(attempts)
        report.violations = check_history(events, self.expected, kills, outages)
        done = {job.id for job in self.cluster.queue.list_jobs(state="done")}
        report.lost = sorted(set(self.work) - done)
        report.take_overs = take_overs(report.kills, attempts, self.plan.job_timeout + 1)
        report.reruns_after_outage = reruns_after_success(attempts, kills)
        report.node_errors = node_errors(self.cluster.nodes)


def take_overs(kills: list[Kill], attempts: list[Attempt], lock_lifetime: float) -> list[TakeOver]:
    """For each kill and each queue the killed node was running: the time from the kill
    to the next attempt's start in that queue."""
    result = []
    for kill in kills:
        for queue in kill.queues:
            later = [a for a in attempts if a.queue == queue and a.start >= kill.at]
            if not later:
                result.append(TakeOver(kill.pid, queue, None))
                continue
            first = min(later, key=lambda a: a.start)
            # The design's backoff after the interrupted attempt (the one before `first`).
            backoff = 2 ** max(first.attempt - 2, 0) + 1
            result.append(
                TakeOver(
                    kill.pid,
                    queue,
                    first.start - kill.at,
                    job=first.job,
                    attempt=first.attempt,
                    lock_bound=backoff <= lock_lifetime,
                )
            )
    return result


def _p50_max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}/{max(values):.2f} s"


def reruns_after_success(attempts: list[Attempt], kills: dict[int, float]) -> int:
    """How many jobs ran again after an attempt that succeeded on a node not killed."""
    by_job: dict[int, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_job[a.job].append(a)
    return sum(
        any(a.ok and a.node not in kills and any(b.start >= a.stopped for b in runs) for a in runs)
        for runs in by_job.values()
    )


_LOG_LINE = re.compile(r" node \d+ (ERROR|CRITICAL) (\S+): (.*)")


def node_errors(nodes: list[Node]) -> dict[str, int]:
    """The nodes' ERROR and CRITICAL log lines, counted by message (numbers masked)."""
    counts: Counter[str] = Counter()
    for node in nodes:
        for line in node.stderr().splitlines():
            match = _LOG_LINE.search(line)
            if match:
                level, logger, message = match.groups()
                masked = re.sub(r"\d+(\.\d+)?", "N", message)[:160]
                counts[f"{level} {logger}: {masked}"] += 1
    return dict(counts)
