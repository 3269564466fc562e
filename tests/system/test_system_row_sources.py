"""Row-sourced queues under node kills: an application process inserts rows into its own
table (row_app.py) while three worker nodes run the queues its rows make and are killed
-9 one after the other (each replaced). Every row must be processed once its job has
succeeded, each album's rows in insertion order, never two of one album at once."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import defaultdict

import pytest
import sqlalchemy as sa
from cluster import HERE, SCOPE, Cluster
from history import check_history
from node import PHOTOS, RowQueue

from queuetopia_py import install_source

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

ROWS = 240
ALBUMS = 6
KILLS = 3
NODE_ARGS = ("--row-source", "--work", "0.02")


def test_rows_inserted_while_nodes_are_killed_run_in_order_once_each(
    cluster: Cluster, url: str
) -> None:
    seed = int(os.environ.get("QUEUETOPIA_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nseed: {seed} (QUEUETOPIA_CHAOS_SEED={seed} replays it)")
    rng = random.Random(seed)
    engine = sa.create_engine(url)
    PHOTOS.create(engine)
    engine.dispose()
    install_source(url, RowQueue(repo=url, scope=SCOPE))
    nodes = [cluster.start_node(extra=NODE_ARGS) for _ in range(3)]
    cluster.wait_ready(nodes)

    inserted = cluster.tmp_path / "inserted.txt"
    app = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "row_app.py"),
            "--repo",
            url,
            "--rows",
            str(ROWS),
            "--albums",
            str(ALBUMS),
            "--out",
            str(inserted),
            "--seed",
            str(seed),
        ],
        cwd=HERE,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kills: dict[int, float] = {}
    try:
        for _ in range(KILLS):
            # Chaos timing, not synchronisation: a kill at a random moment of the run.
            time.sleep(rng.uniform(0.5, 1.5))
            victim = rng.choice(cluster.alive())
            kills[victim.pid] = cluster.kill(victim)
            cluster.wait_ready([cluster.start_node(extra=NODE_ARGS)])
        _, app_errors = app.communicate(timeout=120)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0, app_errors.decode(errors="replace")
    cluster.wait_all_done(timeout=120)

    order: dict[str, list[int]] = defaultdict(list)
    for line in inserted.read_text().splitlines():
        row, album = line.split()
        order[f"photos:{album}"].append(int(row))
    jobs = cluster.jobs()
    job_of = {job.params["id"]: job.id for job in jobs}
    assert len(jobs) == len(job_of) == ROWS, "a row has no job, or more than one"
    expected = {queue: [job_of[row] for row in rows] for queue, rows in order.items()}
    assert check_history(cluster.events(), expected, kills) == []
    assert all(job.done for job in jobs)
