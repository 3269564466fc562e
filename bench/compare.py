"""Comparative benchmark: queuetopia_py against pgqueuer 1.6 and procrastinate 3.10
(Python) and pg-boss 12.38 and graphile-worker 0.18 (Node.js), each keeping every queue
strictly in order, on the same PostgreSQL server.

    python compare.py [--shapes 1x200,100x30,1000x3,10000x1] [--runs 3]
                      [--impls queuetopia,pgqueuer,procrastinate,pgboss,graphile]
                      [--backends postgresql,sqlite,mariadb]
                      [--only throughput,enqueue,latency,history] [--json out.json]
                      [--concurrency 10] [--qt-poll-interval 60] [--timeout 120] [--quick]

Run it from bench/ (it imports benchdb.py, status.py, ours.py and peers.py beside it).
Every measured run is a fresh process (`python ours.py ...` / `python peers.py ...` /
`node node/pgboss.mjs ...` / `node node/graphile.mjs ...`) on a fresh database
(benchdb.fresh_database, dropped afterwards); the worker measures itself and reports JSON
on stdout. Runs alternate between implementations (run 1: queuetopia_py, pgqueuer,
procrastinate, pg-boss, graphile-worker; run 2: the same; ...) and the table shows
medians. The peers run on PostgreSQL only; queuetopia_py also on the other --backends
(extra rows, no ratio: throughput on --backend-shapes, default 1x200,100x30; enqueue;
history if listed in --history-backends, default postgresql only). A default invocation
takes about 35 minutes on 2 cores, most of it 10000x1 and the peers' 1x200.

The Node.js peers (bench/node/: pgboss.mjs, graphile.mjs, common.mjs, and package.json
and package-lock.json pinning pg-boss 12.38.1, graphile-worker 0.18.0, pg 8.23.1 and
Node.js 22.23.3 itself, npm's `node` package: both peers need Node >= 22.12) run on
that pinned Node, bench/node/node_modules/node/bin/node. When bench/node/node_modules is
missing, compare.py installs it first with `npm ci --prefix bench/node` (npm on the PATH;
any Node >= 18 runs npm). Their untimed set-up (schema install, pre-enqueue) runs in a
process of its own (`node node/<peer>.mjs install|prepare ...`); the Python peers' runs
in compare.py's process.

Measurements (--only):

- throughput: Q queues x N jobs a queue (--shapes) are enqueued in bulk, interleaved
  (job 0 of every queue, then job 1, ...), untimed; then, by default, the database's
  statistics are gathered (PostgreSQL: VACUUM ANALYZE, as autovacuum would; --no-analyze
  skips it). One worker process with a no-op job then runs them all; it times from its
  start until every job is performed and recorded as done, and checks each queue ran in
  enqueue order (a violation fails the harness). queuetopia_py: one node with
  `max_concurrency` = --concurrency; pgqueuer: one entrypoint per queue with
  concurrency_limit=1 (its ordered mode), plus one reference row of its unordered mode
  (one entrypoint, no limit) on --unordered-shape; procrastinate: `lock=<queue>` on every
  job, a worker of --concurrency (--proc-poll-interval: its fetch_job_polling_interval,
  default 5 s, its default). pg-boss: one pg-boss queue of policy `key_strict_fifo` (a
  key's jobs run one at a time in creation order; a key whose head is active, retrying
  or failed is skipped), our queue = the job's `singletonKey`; a worker of
  `localConcurrency` = --concurrency fetch loops, `batchSize` --pgboss-batch-size
  (default 10: up to that many key heads a fetch, completed in one statement),
  `burstWhenBatchFull`, LISTEN/NOTIFY on (`useListenNotify`, queue `notify`), polling
  every --pgboss-poll-interval s (default 0.5, the least pg-boss accepts, for both
  `pollingIntervalSeconds` and `notifyPollingIntervalSeconds`); jobs of one bulk
  `insert()` get ids growing in enqueue order, pg-boss's tie-break for jobs created in
  one statement. graphile-worker: `queueName` = our queue (a named queue runs one job at
  a time, in (priority, run_at) order), `concurrentJobs` = --concurrency, batched fetch
  (`localQueue.size` --graphile-local-queue, default concurrency + 1) and completion
  (`completeJobBatchDelay` --graphile-complete-batch-delay ms, default 0), `pollInterval`
  --graphile-poll-interval s (default 0.5; its own default is 2) beside its LISTEN/NOTIFY
  on new jobs; jobs of one bulk `addJobs()` get `runAt` 1 ms apart in enqueue order (all
  already due): they would share run_at, and graphile-worker breaks no tie. In both,
  completing a job wakes no one: a queue's next job waits for a poll, which bounds one
  busy queue (1x200) to a few jobs a poll interval. A run that outlives --timeout is
  reported as a timeout with the rate it reached, and that cell is not run again.
- enqueue: jobs/s of one job per call (--enqueue-single calls over 100 queues) and in
  bulk (--enqueue-bulk jobs, --enqueue-batch per call).
- latency (PostgreSQL): an idle worker process, then a producer process creating
  --latency-jobs jobs one at a time, --latency-spacing apart, over --latency-queues
  queues; latency = worker's time.time() when the job starts - producer's time.time()
  just before creating it (Node: performance.timeOrigin + performance.now()). p50, p99
  and max. queuetopia_py polls every --qt-poll-interval seconds unless woken (default
  60, the library's default); the peers' workers have their throughput settings.
- history (queuetopia_py): the throughput of --history-shape with --history-rows done
  jobs of the same scope over 1,000 queues (the measured queues included) already in the
  table, against an empty table; filled in bulk (status.py's loader), untimed, each run.

The report starts with the machine and versions; the table has a column for each
implementation in --impls; ratios are ours / theirs (jobs/s: above 1 means queuetopia_py
is faster; latency: below 1 means it is faster). --json writes every
run's raw result too. --quick is a smoke run of every path (about a minute). Worker stderr
goes to a kept directory named in the report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import ours
import peers
import sqlalchemy as sa
from benchdb import ADMIN, fresh_database
from status import analyze
from workerio import READY_LINE, RESULT_PREFIX

from queuetopia_py import migrate

BENCH = Path(__file__).resolve().parent
IMPLS = ("queuetopia", "pgqueuer", "procrastinate", "pgboss", "graphile")
LABEL = {
    "queuetopia": "queuetopia_py",
    "pgqueuer": "pgqueuer",
    "procrastinate": "procrastinate",
    "pgboss": "pg-boss",
    "graphile": "graphile-worker",
}
#: The ratio column of each peer (queuetopia_py / peer).
RATIO = {
    "pgqueuer": "qt/pgq",
    "procrastinate": "qt/proc",
    "pgboss": "qt/pgboss",
    "graphile": "qt/graphile",
}
#: The Node.js peers: their script in bench/node/ and their npm package.
NODE_DIR = BENCH / "node"
NODE_PEERS = {"pgboss": "pgboss.mjs", "graphile": "graphile.mjs"}
NODE_PACKAGES = {"pgboss": "pg-boss", "graphile": "graphile-worker"}
#: The Node.js the peers run on: npm's `node` package, pinned in bench/node/package.json.
NODE = NODE_DIR / "node_modules" / "node" / "bin" / "node"
#: Seconds a Node peer's untimed set-up (schema install, pre-enqueue) may take.
SETUP_TIMEOUT = 600.0
BACKENDS = ("postgresql", "sqlite", "mariadb")
MEASUREMENTS = ("throughput", "enqueue", "latency", "history")
ENQUEUE_QUEUES = 100
HISTORY_QUEUES = 1_000
#: Seconds given to a worker beyond its own timeout before it is killed.
GRACE = 60.0

Shape = tuple[int, int]
#: An empty table cell.
NONE = "-"


def parse_shape(text: str) -> Shape:
    q, _, n = text.lower().partition("x")
    return int(q), int(n)


def shape_label(shape: Shape) -> str:
    return f"{shape[0]}x{shape[1]}"


# -- running workers ----------------------------------------------------------------------


@dataclass
class Runner:
    """Starts worker processes and keeps their stderr under `logs`."""

    logs: Path
    count: int = 0

    def _log(self, name: str) -> Path:
        self.count += 1
        return self.logs / f"{self.count:04d}-{name}.log"

    def command(self, impl: str, role: str, url: str, *options: str) -> list[str]:
        if impl == "queuetopia":
            return [sys.executable, str(BENCH / "ours.py"), role, "--url", url, *options]
        if impl in NODE_PEERS:
            script = str(NODE_DIR / NODE_PEERS[impl])
            return [str(NODE), script, role, "--url", url, *options]
        return [sys.executable, str(BENCH / "peers.py"), impl, role, "--url", url, *options]

    def run(self, cmd: list[str], timeout: float, name: str) -> dict[str, Any]:
        """Run a worker to its end; its result, or {"error": ...}."""
        log = self._log(name)
        with log.open("w") as err:
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=BENCH,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    timeout=timeout + GRACE,
                )
            except subprocess.TimeoutExpired:
                return {"error": f"killed after {timeout + GRACE:.0f} s (log: {log})"}
        return parse_result(proc.stdout, proc.returncode, log)

    def start(self, cmd: list[str], name: str) -> Worker:
        log = self._log(name)
        err = log.open("w")
        proc = subprocess.Popen(
            cmd, cwd=BENCH, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1
        )
        return Worker(proc, log, err)


@dataclass
class Worker:
    """A worker process that says when it is ready (latency measurement)."""

    proc: subprocess.Popen[str]
    log: Path
    err: Any
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    out: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return False
            if line is None:
                return False
            self.out.append(line)
            if line == READY_LINE:
                return True
        return False

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        while (line := self.lines.get()) is not None:
            self.out.append(line)
        self.err.close()
        return parse_result("\n".join(self.out), self.proc.returncode, self.log)


def parse_result(stdout: str, returncode: int, log: Path) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = log.read_text().strip().splitlines()[-3:]
    return {"error": f"exit {returncode}, no result: {' | '.join(tail)} (log: {log})"}


# -- the measurements ---------------------------------------------------------------------


@dataclass
class Record:
    measurement: str
    row: str  # the table row it belongs to (shape, variant, backend)
    impl: str
    run: int
    result: dict[str, Any]


class Harness:
    def __init__(self, args: argparse.Namespace, tmp: Path, logs: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.runner = Runner(logs)
        self.records: list[Record] = []
        self.skipped: set[tuple[str, str, str]] = set()

    def note(self, measurement: str, row: str, impl: str, run: int, result: dict[str, Any]) -> None:
        self.records.append(Record(measurement, row, impl, run, result))
        error = result.get("error")
        if error == "timeout" or (isinstance(error, str) and error.startswith("killed")):
            self.skipped.add((measurement, row, impl))
        shown = [k for k in result if k.endswith(("rate", "_ms", "fill_s"))]
        brief = error or ", ".join(f"{k}={result[k]:,.1f}" for k in shown)
        if error == "timeout":
            brief += f" ({result['partial_rate']:.1f}/s, {result['done']}/{result['jobs']} done)"
        print(f"  run {run} {measurement:<10} {row:<28} {LABEL[impl]:<15} {brief}", flush=True)

    def skip(self, measurement: str, row: str, impl: str) -> bool:
        return (measurement, row, impl) in self.skipped

    @property
    def peer_impls(self) -> list[str]:
        return [i for i in self.args.impls if i != "queuetopia"]

    @property
    def ours(self) -> bool:
        return "queuetopia" in self.args.impls

    def set_up(self, impl: str, url: str, shape: Shape | None = None, mode: str = "ordered") -> str:
        """Install `impl`'s schema in a fresh database and, given a shape, enqueue its Q x N
        jobs, interleaved (untimed). Returns why a Node peer's set-up failed, or ""."""
        if impl in NODE_PEERS:
            role, options = "install", []
            if shape is not None:
                role, options = "prepare", [f"--queues={shape[0]}", f"--per-queue={shape[1]}"]
            cmd = self.runner.command(impl, role, url, *options)
            result = self.runner.run(cmd, SETUP_TIMEOUT, f"{role}-{impl}")
            return f"set-up: {result['error']}" if "error" in result else ""
        if impl == "queuetopia":
            if shape is None:
                migrate(url)
            else:
                ours.prepare(url, *shape)
        elif shape is None:
            peers.install(impl, url)
        else:
            peers.prepare(impl, url, *shape, ordered=mode == "ordered")
        return ""

    def worker_options(self, impl: str) -> list[str]:
        """The settings of `impl`'s worker (throughput and latency workers) but pgqueuer's,
        whose throughput worker takes its mode and batch size and latency worker neither."""
        a = self.args
        if impl == "queuetopia":
            return [f"--poll-interval={a.qt_poll_interval}"]
        if impl == "procrastinate":
            return [f"--poll-interval={a.proc_poll_interval}"]
        if impl == "pgboss":
            return [
                f"--batch-size={a.pgboss_batch_size}",
                f"--poll-interval={a.pgboss_poll_interval}",
            ]
        if impl == "graphile":
            return [
                f"--local-queue-size={a.graphile_local_queue or a.concurrency + 1}",
                f"--complete-batch-delay={a.graphile_complete_batch_delay}",
                f"--poll-interval={a.graphile_poll_interval}",
            ]
        return []

    # throughput

    def throughput(self, run: int) -> None:
        a = self.args
        ordered = a.impls if "postgresql" in a.backends else self.peer_impls
        for shape in a.shapes:
            row = shape_label(shape)
            for impl in ordered:
                self.throughput_cell(run, impl, "postgresql", shape, row, "ordered")
            if "pgqueuer" in a.impls and shape == a.unordered_shape:
                self.unordered_cell(run)
        if "pgqueuer" in a.impls and a.unordered_shape not in a.shapes:
            self.unordered_cell(run)
        if self.ours:
            for shape in a.backend_shapes:
                for backend in (b for b in a.backends if b != "postgresql"):
                    row = f"{shape_label(shape)} {backend}"
                    self.throughput_cell(run, "queuetopia", backend, shape, row, "ordered")

    def unordered_cell(self, run: int) -> None:
        shape = self.args.unordered_shape
        row = f"{shape_label(shape)} unordered"
        self.throughput_cell(run, "pgqueuer", "postgresql", shape, row, "unordered")

    def throughput_cell(
        self, run: int, impl: str, backend: str, shape: Shape, row: str, mode: str
    ) -> None:
        if self.skip("throughput", row, impl):
            return
        a = self.args
        q, n = shape
        with fresh_database(backend, self.tmp) as url:
            if error := self.set_up(impl, url, shape, mode):
                self.note("throughput", row, impl, run, {"error": error})
                return
            if a.analyze:
                analyze(url, backend)
            options = [f"--queues={q}", f"--per-queue={n}", f"--timeout={a.timeout}"]
            options.append(f"--concurrency={a.concurrency}")
            options += self.worker_options(impl)
            if impl == "pgqueuer":
                options += [f"--mode={mode}", f"--batch-size={a.pgq_batch_size}"]
            cmd = self.runner.command(impl, "throughput", url, *options)
            name = f"throughput-{impl}-{backend}-{shape_label(shape)}-{mode}"
            result = self.runner.run(cmd, a.timeout, name)
        self.note("throughput", row, impl, run, result)

    # enqueue

    def enqueue(self, run: int) -> None:
        a = self.args
        cells = [(impl, "postgresql") for impl in a.impls]
        if "postgresql" not in a.backends:
            cells = [c for c in cells if c[0] != "queuetopia"]
        if self.ours:
            cells += [("queuetopia", b) for b in a.backends if b != "postgresql"]
        for impl, backend in cells:
            row = "enqueue" if backend == "postgresql" else f"enqueue {backend}"
            with fresh_database(backend, self.tmp) as url:
                if error := self.set_up(impl, url):
                    self.note("enqueue", row, impl, run, {"error": error})
                    continue
                options = [
                    f"--single={a.enqueue_single}",
                    f"--bulk={a.enqueue_bulk}",
                    f"--batch={a.enqueue_batch}",
                    f"--queues={ENQUEUE_QUEUES}",
                ]
                cmd = self.runner.command(impl, "enqueue", url, *options)
                result = self.runner.run(cmd, a.timeout, f"enqueue-{impl}-{backend}")
            self.note("enqueue", row, impl, run, result)

    # latency

    def latency(self, run: int) -> None:
        a = self.args
        impls = a.impls if "postgresql" in a.backends else self.peer_impls
        for impl in impls:
            with fresh_database("postgresql", self.tmp) as url:
                error = self.set_up(impl, url)
                result = {"error": error} if error else self.latency_run(impl, url)
            self.note("latency", "latency", impl, run, result)

    def latency_run(self, impl: str, url: str) -> dict[str, Any]:
        a = self.args
        common = [f"--jobs={a.latency_jobs}", f"--queues={a.latency_queues}"]
        produce_s = a.latency_jobs * a.latency_spacing
        timeout = produce_s + a.qt_poll_interval + 60
        options = [*common, f"--concurrency={a.concurrency}", f"--timeout={timeout}"]
        options += self.worker_options(impl)
        worker = self.runner.start(
            self.runner.command(impl, "latency-worker", url, *options), f"latency-{impl}"
        )
        if not worker.wait_ready(60):
            return worker.finish(5) | {"error": "worker never got ready"}
        time.sleep(a.latency_settle)
        producer = self.runner.run(
            self.runner.command(
                impl, "latency-producer", url, *common, f"--spacing={a.latency_spacing}"
            ),
            produce_s + 60,
            f"latency-producer-{impl}",
        )
        result = worker.finish(timeout + GRACE)
        if "error" in producer:
            return {"error": f"producer: {producer['error']}"}
        created = producer["created"]
        started = result.pop("started", {})
        latencies = sorted(started[i] - created[i] for i in created if i in started)
        if latencies:
            result.update(
                p50_ms=percentile(latencies, 50) * 1000,
                p99_ms=percentile(latencies, 99) * 1000,
                max_ms=latencies[-1] * 1000,
                measured=len(latencies),
            )
        return result

    # history

    def history(self, run: int) -> None:
        a = self.args
        if not self.ours:
            return
        for backend in a.history_backends:
            for label in ("empty", "history"):
                row = f"history {label} {backend}"
                with fresh_database(backend, self.tmp) as url:
                    migrate(url)
                    fill_s = (
                        ours.fill_history(url, backend, a.history_rows, HISTORY_QUEUES)
                        if label == "history"
                        else 0.0
                    )
                    q, n = a.history_shape
                    ours.enqueue_interleaved(url, q, n)
                    analyze(url, backend)
                    options = [
                        f"--queues={q}",
                        f"--per-queue={n}",
                        f"--timeout={a.timeout}",
                        f"--concurrency={a.concurrency}",
                        f"--poll-interval={a.qt_poll_interval}",
                    ]
                    cmd = self.runner.command("queuetopia", "throughput", url, *options)
                    result = self.runner.run(cmd, a.timeout, f"history-{label}-{backend}")
                    if label == "history":
                        result["fill_s"] = fill_s
                self.note("history", row, "queuetopia", run, result)


def percentile(ordered: list[float], p: float) -> float:
    """The p-th percentile of sorted values (nearest rank)."""
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


# -- the report ---------------------------------------------------------------------------


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if "error" not in r and key in r]
    return statistics.median(values) if values else None


@dataclass
class Cell:
    """A median, or why there is none."""

    value: float | None
    text: str
    failed: bool = False  # an order violation or a crash


def cell(records: list[Record], key: str) -> Cell:
    if not records:
        return Cell(None, NONE)
    results = [r.result for r in records]
    errors = [r["error"] for r in results if "error" in r]
    for error in errors:
        if error.startswith("order violated"):
            return Cell(None, "ORDER VIOLATED", failed=True)
    value = median_of(results, key)
    if value is not None:
        text = fmt(value)
        if errors:
            text += f" ({len(errors)}/{len(results)} runs failed)"
        return Cell(value, text)
    if all(e.startswith("timeout") for e in errors):
        if "partial_rate" not in results[0]:
            return Cell(None, "timeout")
        partial = statistics.median(r.get("partial_rate", 0.0) for r in results)
        done = max(r.get("done", 0) for r in results)
        return Cell(None, f"timeout ({fmt(partial)}/s, {done:,}/{results[0]['jobs']:,} done)")
    return Cell(None, "error", failed=True)


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(ours_cell: Cell, theirs: Cell) -> str:
    if ours_cell.value is None or theirs.value is None or theirs.value == 0:
        return NONE
    value = ours_cell.value / theirs.value
    return fmt(value) if value >= 10 else f"{value:.2f}"


class Report:
    def __init__(self, harness: Harness) -> None:
        self.args = harness.args
        self.records = harness.records
        self.rows: list[dict[str, str]] = []
        self.failed = False

    def select(self, measurement: str, row: str, impl: str) -> list[Record]:
        return [
            r
            for r in self.records
            if r.measurement == measurement and r.row == row and r.impl == impl
        ]

    @property
    def columns(self) -> list[str]:
        """measurement, shape, a column for each implementation run, then the ratio of
        queuetopia_py to each peer run (when queuetopia_py ran)."""
        impls = self.args.impls
        ratios = [RATIO[i] for i in impls if i in RATIO] if "queuetopia" in impls else []
        return ["measurement", "shape", *(LABEL[i] for i in impls), *ratios]

    def add(self, measurement: str, shape: str, cells: dict[str, Cell]) -> None:
        for c in cells.values():
            self.failed |= c.failed
        qt = cells.get("queuetopia", Cell(None, NONE))
        row = {"measurement": measurement, "shape": shape}
        for impl in IMPLS:
            row[LABEL[impl]] = cells.get(impl, Cell(None, NONE)).text
        for impl, column in RATIO.items():
            row[column] = ratio(qt, cells.get(impl, Cell(None, NONE)))
        self.rows.append(row)

    def cells(self, measurement: str, row: str, key: str, impls: Sequence[str]) -> dict[str, Cell]:
        return {i: cell(self.select(measurement, row, i), key) for i in impls}

    def build(self) -> None:
        a = self.args
        if "throughput" in a.only:
            self.build_throughput()
        if "enqueue" in a.only:
            self.build_enqueue()
        if "latency" in a.only:
            shape = (
                f"{a.latency_jobs} jobs, {a.latency_spacing * 1000:g} ms apart, "
                f"{a.latency_queues} queues"
            )
            for key, name in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
                cells = self.cells("latency", "latency", key, IMPLS)
                self.add(f"pickup latency {name}, ms (postgresql)", shape, cells)
        if "history" in a.only and "queuetopia" in a.impls:
            self.build_history()

    def build_throughput(self) -> None:
        a = self.args
        for shape in a.shapes:
            row = shape_label(shape)
            cells = self.cells("throughput", row, "rate", IMPLS)
            self.add("throughput, jobs/s (postgresql)", row, cells)
        if "pgqueuer" in a.impls:
            shape = shape_label(a.unordered_shape)
            cells = self.cells("throughput", f"{shape} unordered", "rate", ["pgqueuer"])
            cells |= self.cells("throughput", shape, "rate", ["queuetopia"])
            self.add("throughput, jobs/s: pgqueuer unordered (reference)", shape, cells)
        for backend in (b for b in a.backends if b != "postgresql"):
            for shape in a.backend_shapes:
                row = f"{shape_label(shape)} {backend}"
                cells = self.cells("throughput", row, "rate", ["queuetopia"])
                self.add(f"throughput, jobs/s ({backend})", shape_label(shape), cells)

    def build_enqueue(self) -> None:
        a = self.args
        single = f"{a.enqueue_single:,} calls"
        bulk = f"{a.enqueue_bulk:,} in {a.enqueue_batch:,}s"
        for backend in ["postgresql", *(b for b in a.backends if b != "postgresql")]:
            impls = IMPLS if backend == "postgresql" else ["queuetopia"]
            row = "enqueue" if backend == "postgresql" else f"enqueue {backend}"
            cells = self.cells("enqueue", row, "single_rate", impls)
            self.add(f"enqueue one a call, jobs/s ({backend})", single, cells)
            cells = self.cells("enqueue", row, "bulk_rate", impls)
            self.add(f"enqueue bulk, jobs/s ({backend})", bulk, cells)

    def build_history(self) -> None:
        a = self.args
        shape = shape_label(a.history_shape)
        rows = f"{a.history_rows:,}"
        for backend in a.history_backends:
            empty = cell(self.select("history", f"history empty {backend}", "queuetopia"), "rate")
            full = cell(self.select("history", f"history history {backend}", "queuetopia"), "rate")
            self.add(f"history: empty table, jobs/s ({backend})", shape, {"queuetopia": empty})
            self.add(f"history: {rows} done jobs, jobs/s ({backend})", shape, {"queuetopia": full})
            text = NONE
            if full.value is not None and empty.value:
                text = f"{full.value / empty.value:.2f}"
            ratio_cell = {"queuetopia": Cell(None, text)}
            self.add(f"history: {rows} done / empty ({backend})", shape, ratio_cell)

    def markdown(self) -> str:
        columns = self.columns
        widths = [max(len(c), *(len(r[c]) for r in self.rows)) for c in columns]
        right = {c: c not in ("measurement", "shape") for c in columns}

        def line(values: list[str]) -> str:
            cells = [
                v.rjust(w) if right[c] else v.ljust(w)
                for v, w, c in zip(values, widths, columns, strict=True)
            ]
            return "| " + " | ".join(cells) + " |"

        marks = [
            "-" * (w + 1) + ":" if right[c] else ":" + "-" * (w + 1)
            for w, c in zip(widths, columns, strict=True)
        ]
        rule = "|" + "|".join(marks) + "|"
        return "\n".join([line(columns), rule, *(line([r[c] for c in columns]) for r in self.rows)])


# -- machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cores": os.cpu_count()}
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                info["cpu"] = text.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    for backend, key in (("postgresql", "postgresql"), ("mariadb", "mariadb")):
        try:
            engine = sa.create_engine(ADMIN[backend])
            with engine.connect() as conn:
                info[key] = str(conn.execute(sa.text("SELECT version()")).scalar_one())
            engine.dispose()
        except Exception as exc:  # reported, not fatal: that backend may be unused
            info[key] = f"unavailable ({type(exc).__name__})"
    info["sqlite"] = sqlite3.sqlite_version
    for package in ("queuetopia_py", "pgqueuer", "procrastinate", "sqlalchemy", "psycopg"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["queuetopia_py source"] = queuetopia_source()
    for package in NODE_PACKAGES.values():
        info[package] = node_package_version(package)
    try:
        info["node"] = read([str(NODE), "--version"]) if NODE.exists() else "not installed"
    except (OSError, subprocess.SubprocessError):
        info["node"] = "not runnable"
    return info


def node_package_version(package: str) -> str:
    """The version of an npm package installed in bench/node/node_modules."""
    try:
        manifest = json.loads((NODE_DIR / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return "not installed"
    return str(manifest.get("version", "unknown"))


def install_node_peers() -> None:
    """Install bench/node's pinned packages (`npm ci`, from its package-lock.json) unless
    they are there: the Node.js peers and the Node.js they run on."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if installed.exists() and NODE.exists():
        return
    cmd = ["npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"]
    print(f"installing the Node.js peers: {' '.join(cmd)}", flush=True)
    try:
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(
            f"could not install the Node.js peers ({exc}); install them with "
            f"`npm ci --prefix {NODE_DIR}` or leave pgboss and graphile out of --impls"
        )


def read(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()


def queuetopia_source() -> str:
    """Where the measured queuetopia_py was imported from, and its commit (read-only git)."""
    import queuetopia_py

    package = Path(queuetopia_py.__file__).resolve().parent
    text = str(package)
    try:
        git = ["git", "-C", str(package)]
        commit = read([*git, "log", "-1", "--format=%h"])
        dirty = read([*git, "status", "--porcelain", "--", "."])
    except (OSError, subprocess.SubprocessError):
        return text
    if commit:
        text += f" @ {commit}" + (" + uncommitted changes" if dirty else "")
    return text


# -- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--shapes", default=None, help="QxN,... (default 1x200,100x30,1000x3,10000x1)")
    add("--runs", type=int, default=None, help="runs of each measurement (default 3)")
    add("--impls", default=",".join(IMPLS))
    add("--backends", default="postgresql,sqlite,mariadb", help="for queuetopia_py")
    add("--only", default=",".join(MEASUREMENTS))
    add("--json", type=Path, help="write the settings, machine, table and raw runs here")
    add(
        "--concurrency",
        type=int,
        default=10,
        help=(
            "queuetopia_py max_concurrency, procrastinate worker concurrency, pg-boss "
            "localConcurrency, graphile-worker concurrentJobs"
        ),
    )
    add(
        "--qt-poll-interval",
        type=float,
        default=None,
        help="queuetopia_py poll_interval (default 60, the library's default; --quick: 2)",
    )
    add("--timeout", type=float, default=None, help="seconds a run may take (default 120)")
    add(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="do not gather statistics after pre-enqueueing (throughput)",
    )
    add(
        "--backend-shapes",
        default=None,
        help="throughput shapes of queuetopia_py on SQLite and MariaDB (default 1x200,100x30)",
    )
    add(
        "--pgq-batch-size",
        type=int,
        default=10,
        help="pgqueuer QueueManager.run batch_size (default 10, its default)",
    )
    add(
        "--proc-poll-interval",
        type=float,
        default=5.0,
        help="procrastinate fetch_job_polling_interval (default 5, its default)",
    )
    add(
        "--pgboss-batch-size",
        type=int,
        default=10,
        help="pg-boss work() batchSize: key heads a fetch (default 10, as pgqueuer's)",
    )
    add(
        "--pgboss-poll-interval",
        type=float,
        default=0.5,
        help="pg-boss pollingIntervalSeconds and notifyPollingIntervalSeconds (default 0.5, "
        "the least it accepts)",
    )
    add(
        "--graphile-local-queue",
        type=int,
        default=0,
        help="graphile-worker localQueue.size (default 0: --concurrency + 1; -1 disables)",
    )
    add(
        "--graphile-complete-batch-delay",
        type=int,
        default=0,
        help="graphile-worker completeJobBatchDelay, ms (default 0; -1 disables)",
    )
    add(
        "--graphile-poll-interval",
        type=float,
        default=0.5,
        help="graphile-worker pollInterval, s (default 0.5, as pg-boss's least; its own 2)",
    )
    add("--unordered-shape", default=None, help="pgqueuer unordered row (default 100x30)")
    add("--enqueue-single", type=int, default=None, help="default 2000")
    add("--enqueue-bulk", type=int, default=None, help="default 50000")
    add("--enqueue-batch", type=int, default=None, help="default 1000")
    add("--latency-jobs", type=int, default=None, help="default 300")
    add("--latency-spacing", type=float, default=0.02)
    add("--latency-queues", type=int, default=10)
    add(
        "--latency-settle",
        type=float,
        default=2.0,
        help="seconds the worker stays idle before the producer starts",
    )
    add("--history-rows", type=int, default=None, help="default 1000000")
    add("--history-shape", default="100x30")
    add(
        "--history-backends",
        default=None,
        help="default postgresql; sqlite,mariadb add ~2 min each to 3 runs (fill ~10 s)",
    )
    add("--quick", action="store_true", help="a ~2 minute smoke run of every path")
    args = parser.parse_args()
    quick = args.quick
    defaults: dict[str, Any] = {
        "shapes": "10x3,100x2" if quick else "1x200,100x30,1000x3,10000x1",
        "backend_shapes": "10x3,100x2" if quick else "1x200,100x30",
        "history_backends": "postgresql,sqlite,mariadb" if quick else "postgresql",
        "runs": 1 if quick else 3,
        "qt_poll_interval": 2.0 if quick else 60.0,
        "timeout": 60.0 if quick else 120.0,
        "unordered_shape": "100x2" if quick else "100x30",
        "enqueue_single": 200 if quick else 2_000,
        "enqueue_bulk": 2_000 if quick else 50_000,
        "enqueue_batch": 500 if quick else 1_000,
        "latency_jobs": 30 if quick else 300,
        "history_rows": 50_000 if quick else 1_000_000,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if quick and args.history_shape == "100x30":
        args.history_shape = "100x2"
    args.shapes = [parse_shape(s) for s in args.shapes.split(",")]
    args.unordered_shape = parse_shape(args.unordered_shape)
    args.history_shape = parse_shape(args.history_shape)
    args.impls = [i for i in IMPLS if i in args.impls.split(",")]
    args.backends = [b for b in BACKENDS if b in args.backends.split(",")]
    args.backend_shapes = [parse_shape(s) for s in args.backend_shapes.split(",")]
    args.history_backends = [b for b in BACKENDS if b in args.history_backends.split(",")]
    args.only = [m for m in MEASUREMENTS if m in args.only.split(",")]
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for key, value in vars(args).items():
        if key == "json":
            continue
        if isinstance(value, tuple):
            value = shape_label(value)
        elif isinstance(value, list) and value and isinstance(value[0], tuple):
            value = [shape_label(v) for v in value]
        out[key] = value
    return out


def main() -> None:
    args = parse_args()
    # A SIGTERM unwinds like Ctrl-C, so the databases are dropped and workers killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if any(i in NODE_PEERS for i in args.impls):
        install_node_peers()
    info = machine()
    title = " vs ".join(LABEL[i] for i in args.impls)
    header = [
        f"# {title} ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- machine: {info.get('cpu')}, {info['cores']} cores; Python {info['python']}",
        f"- PostgreSQL: {info['postgresql']}",
        f"- MariaDB: {info['mariadb']}; SQLite {info['sqlite']}",
        f"- queuetopia_py {info['queuetopia_py']} ({info['queuetopia_py source']}); "
        f"pgqueuer {info['pgqueuer']}; procrastinate {info['procrastinate']}; "
        f"SQLAlchemy {info['sqlalchemy']}; psycopg {info['psycopg']}; "
        f"pg-boss {info['pg-boss']}; graphile-worker {info['graphile-worker']} "
        f"(Node.js {info['node']})",
        f"- median of {args.runs} run(s), implementations alternating, each run a fresh "
        "database and a fresh worker process",
        f"- queuetopia_py: max_concurrency {args.concurrency}, poll_interval "
        f"{args.qt_poll_interval:g} s; pgqueuer: an entrypoint per queue with "
        f"concurrency_limit=1, batch_size {args.pgq_batch_size}; procrastinate: lock=<queue>, "
        f"worker concurrency {args.concurrency}, fetch_job_polling_interval "
        f"{args.proc_poll_interval:g} s; pg-boss: key_strict_fifo, singletonKey=<queue>, "
        f"localConcurrency {args.concurrency}, batchSize {args.pgboss_batch_size}, "
        f"burstWhenBatchFull, LISTEN/NOTIFY, polling interval {args.pgboss_poll_interval:g} s; "
        f"graphile-worker: queueName=<queue>, concurrentJobs {args.concurrency}, localQueue "
        f"size {args.graphile_local_queue or args.concurrency + 1}, completeJobBatchDelay "
        f"{args.graphile_complete_batch_delay:g} ms, pollInterval "
        f"{args.graphile_poll_interval:g} s, LISTEN/NOTIFY",
        f"- per-run timeout {args.timeout:g} s; statistics gathered after the pre-enqueue "
        f"(throughput): {'yes' if args.analyze else 'no'}",
    ]
    print("\n".join(header), flush=True)
    started = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="qt-compare-logs-"))
    print(f"- worker logs (stderr): {logs}", flush=True)
    with tempfile.TemporaryDirectory(prefix="qt-compare-") as tmp:
        harness = Harness(args, Path(tmp), logs)
        try:
            for measurement in args.only:
                print(f"\n## {measurement}", flush=True)
                for run in range(1, args.runs + 1):
                    getattr(harness, measurement)(run)
        except KeyboardInterrupt:
            print("\ninterrupted: reporting the runs done so far", flush=True)
        report = Report(harness)
        report.build()
        print("\n" + "\n".join(header[2:]))
        print(f"- total time {time.monotonic() - started:.0f} s\n")
        print(report.markdown())
        print(
            "\nratios are queuetopia_py / peer (jobs/s: > 1 means queuetopia_py is faster; "
            "latency: < 1 means it is faster). 'timeout (r/s, k/n done)': the run did not "
            "finish within the timeout; r is the rate it reached."
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "settings": settings(args),
                        "table": report.rows,
                        "runs": [r.__dict__ for r in harness.records],
                    },
                    indent=2,
                )
            )
            print(f"wrote {args.json}")
        if report.failed:
            print(f"\nFAILED: an order violation or a crashed worker; logs in {logs}")
            sys.exit(1)


if __name__ == "__main__":
    main()
