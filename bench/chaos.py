"""The long chaos run: worker nodes run many ordered queues for minutes while nodes are
killed -9 (each replaced) and the database server is stopped or crashed and started
again; then the history of every attempt is checked (per-queue order, no overlap, every
job done) and the database asked for lost jobs.

    /tmp/venv/bin/python bench/chaos.py --backend all --minutes 5 --json chaos.json

Each backend runs on a private, throw-away server (tests/system/servers.py: PostgreSQL
and MariaDB started from their binaries on a free port, never the shared servers) or a
SQLite file (no server: kills only). The workload and the chaos are those of
tests/system/test_system_chaos.py (tests/system/chaos_driver.py), longer: chaos actions
every 0.5-2 s for `--minutes`, each a database restart with probability
`--restart-share` (half of them crashes, `--crash-share`) and a node kill otherwise.

Printed per backend: jobs, attempts, kills, restarts, violations (must be 0), lost jobs
(must be 0), take-over time after a kill (p50, max: from the kill to the next attempt in
each queue the killed node was running; in parentheses, only where the lock alone held
the queue back, as a job interrupted again and again waits its growing backoff), wall
time. Exits 1 if a run found a
violation, a lost job or a problem, or could not go on (its work directory, with the
history and the nodes' output, is kept then and named).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "system"))

from chaos_driver import ChaosError, ChaosPlan, ChaosRun
from servers import ServerUnavailable, open_server

BACKENDS = ("postgresql", "mariadb", "sqlite")


def run_backend(backend: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One backend's long run; its report as a dict (with "error" if it could not go on)."""
    plan = ChaosPlan(
        seed=seed,
        nodes=args.nodes,
        queues=args.queues,
        jobs_per_queue=args.jobs_per_queue,
        duration=args.minutes * 60,
        restart_share=args.restart_share,
        crash_share=args.crash_share,
        pause=(args.min_pause, args.max_pause),
        downtime=(0.5, args.max_downtime),
        job_timeout=args.job_timeout,
        max_concurrency=args.max_concurrency,
        drain_timeout=300.0,
    )
    work_dir = Path(tempfile.mkdtemp(prefix=f"qt-chaos-{backend}-"))
    print(f"\n== {backend}: seed {seed}, {args.minutes} min, work dir {work_dir}", flush=True)
    started = time.monotonic()
    try:
        server = open_server(backend)
    except ServerUnavailable as exc:
        print(f"{backend}: private server unavailable: {exc}", flush=True)
        return {"backend": backend, "seed": seed, "error": f"server unavailable: {exc}"}
    run: ChaosRun | None = None
    try:
        run = ChaosRun(server, plan, work_dir, log=lambda line: print(line, flush=True))
        report = run.run()
    except ChaosError as exc:
        print(f"{backend}: the run could not go on (work dir kept: {work_dir}):\n{exc}")
        result = run.report.as_dict() if run is not None else {"backend": backend}
        return {**result, "error": str(exc), "wall_seconds": time.monotonic() - started}
    finally:
        if run is not None:
            run.close()
        server.close()
    print(report.summary(), flush=True)
    if report.sound and not args.keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        print(f"work dir kept: {work_dir}")
    return report.as_dict()


def _p50_max(report: dict[str, Any], prefix: str) -> str:
    p50, worst = report.get(f"{prefix}_p50"), report.get(f"{prefix}_max")
    return "-" if p50 is None or worst is None else f"{p50:.2f}/{worst:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--minutes", type=float, default=5.0, help="of chaos, per backend")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--queues", type=int, default=16)
    parser.add_argument("--jobs-per-queue", type=int, default=8, help="per round of jobs")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--json", type=Path, default=None, help="write the reports here")
    parser.add_argument("--restart-share", type=float, default=0.15)
    parser.add_argument("--crash-share", type=float, default=0.5)
    parser.add_argument("--min-pause", type=float, default=0.5)
    parser.add_argument("--max-pause", type=float, default=2.0)
    parser.add_argument("--max-downtime", type=float, default=3.0)
    parser.add_argument("--job-timeout", type=float, default=2.0)
    parser.add_argument("--max-concurrency", type=int, default=6, help="per node")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    reports = [run_backend(backend, args, seed) for backend in backends]

    print(
        "\nbackend     jobs  attempts  kills  restarts  violations  lost"
        "  take-over p50/max (lock-bound)  wall"
    )
    for r in reports:
        if "jobs" not in r:
            print(f"{r['backend']:<10}  {r.get('error', '')[:80]}")
            continue
        take_over = f"{_p50_max(r, 'take_over')} ({_p50_max(r, 'lock_bound_take_over')})"
        print(
            f"{r['backend']:<10} {r['jobs']:>5} {r['attempts']:>9} {r['kills']:>6}"
            f" {r['restarts']:>9} {len(r['violations']):>11} {len(r['lost']):>5}"
            f"  {take_over:<30} {r['wall_seconds']:>4.0f} s" + ("  ERROR" if r.get("error") else "")
        )
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    failed = [
        r
        for r in reports
        if r.get("error") or r.get("violations") or r.get("lost") or r.get("problems")
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
