"""SQL injection and code injection, on each database: values holding SQL metacharacters,
placeholders and wildcards, given as scope, queue, action, params, reason and result, go
through every path (create_job, create_jobs, the scheduler's claim and record, operator
actions, listings, the command line) as plain data, and every table survives. A job's
`action` is data too: running the job imports nothing it names."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner
from recording import Recorder, wait_until

from queuetopia_py import Job, Queuetopia
from queuetopia_py._cli import cli

EVIL = "'; DROP TABLE x; --"
# Quotes, comments, statement ends, placeholders of every driver style, LIKE wildcards.
NAMES = [
    EVIL,
    "q' OR '1'='1",
    'a"b`c',
    "back\\slash",
    "/* c */ x -- y",
    "%",
    "_",
    "%(scope)s",
    ":queue",
    "$1",
    "?",
    "%s",
]
PARAMS = {EVIL: [EVIL, "%(queue)s", ":job_id", "\\'"], "nested": {"sql": "'); DELETE FROM x;"}}


class Echo(Recorder):
    """Returns its params as the result."""

    def perform(self, job: Job) -> object:
        super().perform(job)
        return job.params


def tables_and_canary(url: str) -> tuple[list[str], int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            count = conn.execute(sa.text("SELECT count(*) FROM x")).scalar_one()
        return sorted(sa.inspect(engine).get_table_names()), count
    finally:
        engine.dispose()


def test_sql_metacharacters_are_plain_data_and_every_table_survives(
    url: str, make_queue: Callable[..., Queuetopia]
) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE x (id INTEGER)"))
        conn.execute(sa.text("INSERT INTO x (id) VALUES (1)"))
    engine.dispose()
    before = tables_and_canary(url)
    recorder = Echo()
    queue = make_queue(scope=EVIL, performer=recorder, poll_interval=0.2)
    one = [queue.create_job(name, name, PARAMS) for name in NAMES]
    many = queue.create_jobs([{"queue": n, "action": EVIL, "params": {n: n}} for n in NAMES])
    queue.suspend(EVIL, by="o'brien", reason=EVIL)
    assert [s.reason for s in queue.suspensions()] == [EVIL]
    queue.resume(EVIL)
    cancelled = queue.create_job(EVIL, EVIL, {}, scheduled_at=None)
    queue.cancel_job(cancelled.id, by="o'brien", reason=EVIL)
    queue.start()
    wait_until(
        lambda: all(queue.get_job(j.id).done for j in [*one, *many]),  # type: ignore[union-attr]
        30,
        "every job is done",
    )
    for job in one:
        stored = queue.get_job(job.id)
        assert stored is not None and stored.done
        assert (stored.scope, stored.queue, stored.action) == (EVIL, job.queue, job.queue)
        assert stored.params == PARAMS and stored.result == PARAMS
    for job in many:
        stored = queue.get_job(job.id)
        assert stored is not None and stored.params == {job.queue: job.queue}
    # Wildcards match only themselves.
    assert {j.queue for j in queue.list_jobs(queue="%")} == {"%"}
    assert {j.queue for j in queue.list_jobs(queue="_")} == {"_"}
    assert queue.get_job(cancelled.id).interventions[0].reason == EVIL  # type: ignore[union-attr]
    listed = CliRunner().invoke(
        cli, ["jobs", "list", "--scope", EVIL, "--queue", EVIL, "--repo", url, "--json"]
    )
    assert listed.exit_code == 0, listed.output
    assert {j["id"] for j in json.loads(listed.stdout)["jobs"]} == {
        one[0].id,
        many[0].id,
        cancelled.id,
    }
    assert tables_and_canary(url) == before


def test_a_job_action_naming_a_module_imports_nothing(
    make_queue: Callable[..., Queuetopia], tmp_path: Path, monkeypatch: Any
) -> None:
    canary = tmp_path / "canary_imported"
    module = "qt_security_canary"
    (tmp_path / f"{module}.py").write_text(f"open({str(canary)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=0.2)
    actions = [f"{module}:Thing", module, f"{module}.Thing", "os:system"]
    for action in actions:
        queue.create_job("q", action, {"class": f"{module}:Thing"})
    queue.start()
    recorder.wait(lambda r: len(r.finished) == len(actions))
    assert [job.action for job in recorder.finished] == actions
    assert module not in sys.modules
    assert not canary.exists()
