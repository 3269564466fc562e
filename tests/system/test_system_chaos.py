"""Chaos, small scale: worker nodes run 12 ordered queues while nodes are killed -9 and
the database server is restarted, on each backend (chaos_driver.py; the long run is
bench/chaos.py).

Three nodes; every queue gets 8 jobs at a time (more as it runs low, while the chaos
lasts), most of them short, some 0.2-1 s so that kills land mid-attempt; every job's
timeout is 2 s, so a dead node's locks expire 3 s after they were taken. Four kills -9
at random moments, each killed node replaced by a fresh one, and, on PostgreSQL and
MariaDB, one restart of the (private) database server mid-run, which stays down 0.5-2 s.
SQLite has no server: its run has the kills only.

Then the history must show no violation (per-queue order, no overlap, every job done),
the database every job done, and every node must still stop cleanly. The take-over time
after each kill is printed. The seed is random and printed; set QUEUETOPIA_CHAOS_SEED to
replay a run's workload and actions.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_driver import ChaosPlan, ChaosReport, ChaosRun
from servers import PrivateDatabase

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

KILLS = 4


def chaos_seed() -> int:
    raw = os.environ.get("QUEUETOPIA_CHAOS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(1_000_000)


@pytest.fixture
def chaos_run(private_server: PrivateDatabase, tmp_path: Path) -> Iterator[ChaosRun]:
    """A chaos run on a fresh database of a private server (or a SQLite file)."""
    seed = chaos_seed()
    print(f"\nchaos seed: {seed} (QUEUETOPIA_CHAOS_SEED={seed} replays it)")
    plan = ChaosPlan(
        seed=seed, nodes=3, queues=12, jobs_per_queue=8, job_timeout=2.0, kills=KILLS, restarts=1
    )
    run = ChaosRun(private_server, plan, tmp_path)
    try:
        yield run
    finally:
        run.close()


@pytest.mark.parametrize("private_server", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_ordered_queues_survive_node_kills_and_a_database_restart(chaos_run: ChaosRun) -> None:
    report: ChaosReport = chaos_run.run()
    print(report.summary())
    for t in report.take_overs:
        print(
            f"  node {t.pid} killed: {t.queue} resumed after {t.seconds} s"
            f" (attempt {t.attempt} of job {t.job})"
        )

    assert report.violations == [], report.summary()
    assert report.lost == [], report.summary()
    assert report.problems == [], report.summary()
    assert len(report.kills) == KILLS
    assert len(report.restarts) == (1 if chaos_run.target.restartable else 0)
    assert any(k.mid_attempt for k in report.kills), "no kill landed mid-attempt"
    # Each queue a killed node was running resumed; when only the lock held it back (not
    # the growing backoff of a job interrupted again and again), within the lock's lifetime
    # (3 s) plus generous room for a loaded machine and the database restart.
    assert all(t.seconds is not None for t in report.take_overs), report.take_overs
    assert max(report.lock_bound_seconds, default=0.0) < 15.0, report.summary()
