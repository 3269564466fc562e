"""A cluster of real worker processes (`node.py`) on one test database, for the system
tests: start, kill and stop nodes, create jobs, and wait on the history and the database
with deadlines. `close()` kills whatever it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from history import read_events

from queuetopia_py import Job, Queuetopia

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "node.py"
SCOPE = "system-tests"
T = TypeVar("T")


def process_gone(pid: int) -> bool:
    """Whether the process has ended (a zombie, waiting to be reaped, counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@dataclass
class Node:
    """One `node.py` process."""

    process: subprocess.Popen[bytes]
    stderr_path: Path
    executor: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        tail = "\n".join(self.stderr().splitlines()[-30:])
        return f"node {self.pid} (exit code {self.process.poll()}), stderr tail:\n{tail}"


@dataclass
class Cluster:
    """Worker processes of one scope on one database, and the history they write."""

    url: str
    tmp_path: Path
    queue: Queuetopia
    history: Path
    nodes: list[Node] = field(default_factory=list)

    # -- nodes -----------------------------------------------------------------------------

    def start_node(
        self, *, executor: str = "thread", max_concurrency: int = 10, extra: tuple[str, ...] = ()
    ) -> Node:
        """Start a node process (see `wait_ready`); `extra`: more arguments of node.py."""
        index = len(self.nodes)
        stderr_path = self.tmp_path / f"node-{index}.stderr"
        command = [
            sys.executable,
            str(NODE_SCRIPT),
            "--repo",
            self.url,
            "--scope",
            SCOPE,
            "--log",
            str(self.history),
            "--poll-interval",
            "0.1",
            "--max-concurrency",
            str(max_concurrency),
            "--executor",
            executor,
            "--exit-with",
            str(os.getpid()),
            *extra,
        ]
        return self.spawn(command, stderr_path, executor)

    def spawn(self, command: list[str], stderr_path: Path, executor: str) -> Node:
        """Start a node process running `command`, its output going to `stderr_path`."""
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=HERE
            )
        node = Node(process, stderr_path, executor)
        self.nodes.append(node)
        return node

    def start_nodes(self, count: int, **options: Any) -> list[Node]:
        """Start `count` nodes and wait until each runs its scheduler."""
        nodes = [self.start_node(**options) for _ in range(count)]
        self.wait_ready(nodes)
        return nodes

    def wait_ready(self, nodes: list[Node], timeout: float = 30.0) -> None:
        pids = {n.pid for n in nodes}
        self.wait_for(
            lambda: pids <= {e["pid"] for e in self.events() if e["event"] == "ready"},
            f"nodes {sorted(pids)} to be ready",
            timeout,
        )

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.process.poll() is None]

    def kill(self, node: Node) -> float:
        """SIGKILL a node; return an instant by which it was surely dead (after reaping)."""
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        return time.time()

    def terminate(self, node: Node, timeout: float = 30.0) -> int:
        """SIGTERM a node (graceful stop) and wait for its exit code."""
        node.process.send_signal(signal.SIGTERM)
        return node.process.wait(timeout=timeout)

    def close(self) -> None:
        """Kill every node still running, and any attempt process they left behind."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.kill()
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=10)
        ours = {n.pid for n in self.nodes}
        for e in self.events():
            if e["event"] == "start" and e["node"] in ours and e["pid"] not in ours:
                _kill_stray_worker(e["pid"])
        self.queue.stop(timeout=10)

    # -- history and database ------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.history)

    def create_jobs(self, queues: list[str], per_queue: int, **params: Any) -> dict[str, list[int]]:
        """Create `per_queue` jobs in each queue, interleaving the queues; return the ids
        of each queue's jobs in creation order. `params` become every job's params."""
        created: dict[str, list[int]] = {q: [] for q in queues}
        for seq in range(per_queue):
            for q in queues:
                job = self.queue.create_job(q, "system", {"seq": seq, **params}, timeout=2)
                created[q].append(job.id)
        return created

    def jobs(self) -> list[Job]:
        return self.queue.list_jobs()

    def wait_all_done(self, timeout: float = 60.0, nodes: list[Node] | None = None) -> None:
        """Wait until no job is pending (every node of `nodes` must stay alive meanwhile)."""
        self.wait_for(
            lambda: not self.queue.list_jobs(available=True, limit=1),
            "every job to be done",
            timeout,
            nodes,
        )

    def wait_for(
        self,
        condition: Callable[[], T],
        what: str,
        timeout: float,
        nodes: list[Node] | None = None,
        every: float = 0.02,
    ) -> T:
        """Poll `condition` until it holds (returning its value), or fail at `timeout`.

        Fails at once if one of `nodes` (default: every node not deliberately stopped)
        exits meanwhile.
        """
        watched = self.alive() if nodes is None else nodes
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            dead = [n for n in watched if n.process.poll() is not None]
            if dead:
                pytest.fail(
                    f"while waiting for {what}: a node exited\n"
                    + "\n".join(n.describe() for n in dead)
                )
            if time.monotonic() > deadline:
                pending = self.queue.list_jobs(available=True)
                pytest.fail(
                    f"timed out after {timeout} s waiting for {what}; {len(pending)} jobs"
                    f" pending, e.g. {pending[:3]}\n" + "\n".join(n.describe() for n in self.nodes)
                )
            time.sleep(every)


def _kill_stray_worker(pid: int) -> None:
    """Kill an attempt's worker process left running, if that pid is still one of ours."""
    if process_gone(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return
    if b"multiprocessing" in cmdline and b"QUEUETOPIA_SYSTEM_HISTORY" in environ:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
