"""Periodic jobs under node kills: three worker processes fire one schedule (a job every
0.5 s) while they are killed -9 one after the other (each replaced). Every fire time
from the first to the last must have exactly one job, each run once it succeeded."""

from __future__ import annotations

import itertools
import os
import random
import time
from datetime import timedelta

import pytest
from cluster import Cluster
from history import check_history

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

KILLS = 3
NODE_ARGS = ("--beat",)


def test_each_fire_time_has_one_job_while_nodes_are_killed(cluster: Cluster) -> None:
    seed = int(os.environ.get("QUEUETOPIA_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nseed: {seed} (QUEUETOPIA_CHAOS_SEED={seed} replays it)")
    rng = random.Random(seed)
    nodes = [cluster.start_node(extra=NODE_ARGS) for _ in range(3)]
    cluster.wait_ready(nodes)
    kills: dict[int, float] = {}
    for _ in range(KILLS):
        # Chaos timing, not synchronisation: a kill at a random moment of the run.
        time.sleep(rng.uniform(0.5, 1.5))
        victim = rng.choice(cluster.alive())
        kills[victim.pid] = cluster.kill(victim)
        cluster.wait_ready([cluster.start_node(extra=NODE_ARGS)])
    time.sleep(1.0)  # a few fire times with every node alive
    for node in cluster.alive():
        assert cluster.terminate(node) == 0, node.describe()
    # Nodes without the schedule run what the firing ones left pending.
    drainers = [cluster.start_node() for _ in range(2)]
    cluster.wait_ready(drainers)
    cluster.wait_all_done(timeout=60, nodes=drainers)

    jobs = [j for j in cluster.jobs() if j.queue == "beats"]
    times = sorted(j.scheduled_at for j in jobs)
    assert len(times) >= 8
    assert len(set(times)) == len(times), "a fire time has two jobs"
    gaps = {later - earlier for earlier, later in itertools.pairwise(times)}
    assert gaps == {timedelta(seconds=0.5)}, f"a fire time is missing: gaps {sorted(gaps)}"
    assert all(j.inserted_at >= j.scheduled_at for j in jobs), "a fire time fired early"
    expected = {"beats": [j.id for j in sorted(jobs, key=lambda j: (j.scheduled_at, j.id))]}
    assert check_history(cluster.events(), expected, kills) == []
