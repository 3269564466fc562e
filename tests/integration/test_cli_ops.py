"""The operations commands of `queuetopia` against each database: queues, jobs list/show,
suspend/resume, cancel/abort/retry and cleanup, as text and as JSON."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from queuetopia_py import Job, Performer, Queuetopia, migrate, report_progress
from queuetopia_py._cli import cli
from queuetopia_py.migrations import LATEST

SCOPE = "cli-ops"


class ShopPerformer(Performer):
    """Card charges fail; a "hold" job reports progress and waits until released."""

    release = threading.Event()

    def perform(self, job: Job) -> Any:
        if job.action == "charge_card":
            raise RuntimeError("card declined\nby the bank")
        if job.action == "hold":
            report_progress("copying files", 0.4)
            if not self.release.wait(60):
                raise TimeoutError("never released")
        return {"sent_to": job.params.get("to")}


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.05)


def run(url: str, *args: str, color: bool = False) -> Result:
    """`queuetopia ARGS --repo URL`."""
    return CliRunner().invoke(cli, [*args, "--repo", url], color=color)


def assert_ok(result: Result) -> None:
    """Exit code 0 and nothing on stderr (stored errors, tracebacks included, may be
    printed on stdout)."""
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def assert_fails(result: Result, *fragments: str) -> None:
    """Exit code 1 with a one-line message on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def state_of(client: Queuetopia, job_id: int) -> str | None:
    job = client.get_job(job_id)
    return None if job is None else job.state


@dataclass
class Shop:
    """A scope after a worker ran: `payments` blocked by its failed head (`head`, with
    `behind` waiting after it), `emails` done (`sent`), `reports` suspended (`report`)."""

    url: str
    client: Queuetopia
    head: Job
    behind: Job
    sent: Job
    report: Job


@pytest.fixture
def client(url: str) -> Iterator[Queuetopia]:
    """A Queuetopia of SCOPE (never started), to create and read jobs."""
    instance = Queuetopia(repo=url, scope=SCOPE)
    yield instance
    instance.stop()


@pytest.fixture
def shop(url: str, client: Queuetopia) -> Shop:
    head = client.create_job(
        "payments", "charge_card", {"amount": 12}, max_attempts=1, on_failure="block"
    )
    behind = client.create_job("payments", "charge_card", {"amount": 3})
    sent = client.create_job("emails", "send_mail", {"to": "a@b.c"})
    client.suspend("reports", by="alice", reason="nightly freeze")
    report = client.create_job("reports", "build_report", {"day": "monday"})
    worker = Queuetopia(repo=url, scope=SCOPE, performer=ShopPerformer, poll_interval=0.2)
    worker.start()
    try:
        wait_until(
            lambda: state_of(client, head.id) == "blocked" and state_of(client, sent.id) == "done",
            "the head of payments is blocked and the mail is sent",
        )
    finally:
        worker.stop(timeout=30)
    return Shop(url, client, head, behind, sent, report)


def line_of(output: str, word: str) -> str:
    """The one line of `output` holding `word` as a column (colors and all)."""
    found = [line for line in output.splitlines() if f" {word} " in f" {click.unstyle(line)} "]
    assert len(found) == 1, output
    return found[0]


# -- queues --------------------------------------------------------------------------------


def test_queues_marks_the_blocked_queue_and_sums_up(shop: Shop) -> None:
    result = run(shop.url, "queues")
    assert_ok(result)
    payments = line_of(result.stdout, "payments")
    assert payments.startswith("!")
    assert "blocked" in payments.split()
    assert str(shop.head.id) in payments.split()
    assert "RuntimeError: card declined" in payments
    reports = line_of(result.stdout, "reports")
    assert not reports.startswith("!")
    assert "suspended" in reports.split()
    assert "emails" not in result.stdout  # nothing pending or failed there
    assert "2 queues, 1 blocked, 1 suspended" in result.stdout
    assert "no running attempts" in result.stdout
    assert "\x1b[" not in result.stdout  # not a terminal: plain text


def test_queues_colors_the_blocked_queue_on_a_terminal(shop: Shop) -> None:
    result = run(shop.url, "queues", color=True)
    assert_ok(result)
    red = re.compile(r"\x1b\[(?:\d+;)*31(?:;\d+)*m")  # an SGR sequence holding 31: red
    assert red.search(line_of(result.stdout, "payments"))
    assert not red.search(line_of(result.stdout, "reports"))


def test_queues_json_has_every_field(shop: Shop) -> None:
    result = run(shop.url, "queues", "--json")
    assert_ok(result)
    document = json.loads(result.stdout)
    assert document["summary"] == {"queues": 2, "blocked": 1, "suspended": 1}
    queues = {q["queue"]: q for q in document["queues"]}
    assert set(queues) == {"payments", "reports"}
    payments = queues["payments"]
    assert payments["scope"] == SCOPE
    assert payments["state"] == "blocked"
    assert payments["blocked"] is True
    assert (payments["pending"], payments["failed"]) == (2, 0)
    assert payments["head_job_id"] == shop.head.id
    assert payments["attempts"] == 1
    assert payments["max_attempts"] == 1
    assert "card declined" in payments["last_error"]
    assert payments["locked_by"] is None
    assert payments["head"]["state"] == "blocked"
    assert payments["head"]["timeout"] == 60.0  # timedeltas as seconds
    datetime.fromisoformat(payments["head"]["inserted_at"])  # datetimes as ISO-8601
    datetime.fromisoformat(payments["failing_since"])
    reports = queues["reports"]
    assert reports["state"] == "suspended"
    assert reports["suspended"]["suspended_by"] == "alice"
    assert reports["suspended"]["reason"] == "nightly freeze"
    assert document["running"] == []
    datetime.fromisoformat(document["at"])


def test_queues_shows_every_scope_or_the_one_asked_for(shop: Shop, url: str) -> None:
    other = Queuetopia(repo=url, scope="cli-ops-other")
    try:
        other.create_job("invoices", "make_invoice", {})
    finally:
        other.stop()
    everything = run(url, "queues")
    assert_ok(everything)
    assert "invoices" in everything.stdout and "payments" in everything.stdout
    assert "3 queues, 1 blocked, 1 suspended" in everything.stdout
    only = run(url, "queues", "--scope", "cli-ops-other")
    assert_ok(only)
    assert "invoices" in only.stdout and "payments" not in only.stdout
    assert "1 queue, 0 blocked, 0 suspended" in only.stdout


def test_queues_lists_running_attempts_and_a_running_job_cannot_be_cancelled(
    url: str, client: Queuetopia
) -> None:
    ShopPerformer.release.clear()
    job = client.create_job("exports", "hold", {})
    worker = Queuetopia(repo=url, scope=SCOPE, performer=ShopPerformer, poll_interval=0.2)
    worker.start()
    try:
        wait_until(
            lambda: (
                (current := client.get_job(job.id)) is not None and current.progress is not None
            ),
            "the attempt reports progress",
        )
        result = run(url, "queues")
        assert_ok(result)
        queues, running = result.stdout.split("running attempts:")
        exports = line_of(queues, "exports")
        assert "running" in exports.split()
        assert worker.node in exports  # the lock holder
        assert worker.node in running
        assert str(job.id) in running.split()
        assert "40% copying files" in running

        document = json.loads(run(url, "queues", "--json").stdout)
        (attempt,) = document["running"]
        assert (attempt["node"], attempt["job_id"]) == (worker.node, job.id)
        assert attempt["progress"]["fraction"] == 0.4

        assert_fails(run(url, "cancel", str(job.id)), f"job {job.id}", "abort")
        assert state_of(client, job.id) == "pending"
    finally:
        ShopPerformer.release.set()
        worker.stop(timeout=30)
    assert state_of(client, job.id) == "done"


# -- jobs list / show ----------------------------------------------------------------------


def ids_listed(output: str) -> list[int]:
    """The job ids of a `jobs list` table (its first column)."""
    lines = output.splitlines()
    assert lines[0].split()[0] == "ID", output
    return [int(line.split()[0]) for line in lines[1:-1]]


def test_jobs_list_filters_and_paginates(url: str, client: Queuetopia) -> None:
    bulk = [client.create_job("bulk", "a" if i % 2 else "b", {"i": i}) for i in range(5)]
    client.create_job("other", "a", {})

    page_two = run(url, "jobs", "list", "--scope", SCOPE, "--queue", "bulk", "--page-size", "2",
                   "--page", "2")  # fmt: skip
    assert_ok(page_two)
    assert ids_listed(page_two.stdout) == [bulk[2].id, bulk[3].id]
    assert page_two.stdout.splitlines()[-1] == "page 2 of 3 (5 jobs)"

    by_action = run(url, "jobs", "list", "--scope", SCOPE, "--queue", "bulk", "--action", "b")
    assert_ok(by_action)
    assert ids_listed(by_action.stdout) == [bulk[0].id, bulk[2].id, bulk[4].id]
    assert by_action.stdout.splitlines()[-1] == "page 1 of 1 (3 jobs)"

    client.cancel_job(bulk[1].id)
    # One scope in the tables: --scope may be left out.
    cancelled = run(url, "jobs", "list", "--state", "cancelled")
    assert_ok(cancelled)
    assert ids_listed(cancelled.stdout) == [bulk[1].id]
    assert "cancelled" in cancelled.stdout.splitlines()[1].split()

    document = json.loads(
        run(url, "jobs", "list", "--state", "pending", "--page-size", "4", "--json").stdout
    )
    assert (document["scope"], document["total"], document["total_pages"]) == (SCOPE, 5, 2)
    assert [job["id"] for job in document["jobs"]] == [bulk[0].id, bulk[2].id, bulk[3].id,
                                                       bulk[4].id]  # fmt: skip
    assert document["jobs"][0]["params"] == {"i": 0}

    empty = run(url, "jobs", "list", "--state", "done")
    assert_ok(empty)
    assert empty.stdout.splitlines() == ["no jobs", "page 1 of 1 (0 jobs)"]


def test_jobs_list_asks_for_a_scope_when_there_are_several(url: str, client: Queuetopia) -> None:
    client.create_job("bulk", "a", {})
    other = Queuetopia(repo=url, scope="cli-ops-other")
    try:
        other.create_job("bulk", "a", {})
    finally:
        other.stop()
    result = run(url, "jobs", "list")
    assert result.exit_code == 2, result.output
    assert "--scope is required" in result.stderr
    assert SCOPE in result.stderr and "cli-ops-other" in result.stderr


def test_jobs_show_prints_params_the_whole_error_and_interventions(shop: Shop) -> None:
    url, head = shop.url, shop.head
    shown = run(url, "jobs", "show", str(head.id))
    assert_ok(shown)
    assert shown.stdout.startswith(f"job {head.id}\n")
    assert '"amount": 12' in shown.stdout
    error = shown.stdout.split("\nerror:\n")[1]
    assert "Traceback (most recent call last)" in error
    assert "RuntimeError: card declined" in error and "by the bank" in error
    assert "state:           blocked" in shown.stdout
    assert shown.stdout.rstrip().endswith("interventions:\n  -")

    assert_ok(run(url, "abort", str(head.id), "--by", "carol", "--reason", "card expired"))
    shown = run(url, "jobs", "show", str(head.id), "--scope", SCOPE)
    assert_ok(shown)
    interventions = shown.stdout.split("\ninterventions:\n")[1].splitlines()
    assert interventions[0].split() == ["AT", "ACTION", "BY", "REASON"]
    assert interventions[1].split()[2:] == ["abort", "carol", "card", "expired"]

    document = json.loads(run(url, "jobs", "show", str(head.id), "--json").stdout)
    assert document["id"] == head.id
    assert document["state"] == "aborted"
    assert document["params"] == {"amount": 12}
    assert "by the bank" in document["error"]
    (intervention,) = document["interventions"]
    assert intervention["action"] == "abort"
    assert intervention["by"] == "carol"
    assert intervention["reason"] == "card expired"
    datetime.fromisoformat(intervention["at"])


def test_jobs_show_of_a_done_job_prints_its_result(shop: Shop) -> None:
    shown = run(shop.url, "jobs", "show", str(shop.sent.id))
    assert_ok(shown)
    assert "state:           done" in shown.stdout
    assert '"sent_to": "a@b.c"' in shown.stdout.split("\nresult:\n")[1]


def test_jobs_show_of_an_unknown_id_fails_clearly(shop: Shop) -> None:
    assert_fails(run(shop.url, "jobs", "show", "999999"), "job 999999 not found")
    assert_fails(
        run(shop.url, "jobs", "show", str(shop.head.id), "--scope", "elsewhere"),
        f"job {shop.head.id} not found",
        "elsewhere",
    )


# -- suspend / resume ----------------------------------------------------------------------


def test_suspend_and_resume_a_queue_and_the_whole_scope(url: str, client: Queuetopia) -> None:
    client.create_job("emails", "send_mail", {})
    suspended = run(url, "suspend", "emails", "--scope", SCOPE, "--by", "bob", "--reason", "spam")
    assert_ok(suspended)
    assert "queue emails of scope cli-ops suspended" in suspended.stdout
    (suspension,) = client.suspensions()
    assert (suspension.queue, suspension.suspended_by, suspension.reason) == (
        "emails",
        "bob",
        "spam",
    )

    whole = run(url, "suspend", "--scope", SCOPE, "--json")
    assert_ok(whole)
    document = json.loads(whole.stdout)
    assert (document["scope"], document["queue"]) == (SCOPE, None)
    datetime.fromisoformat(document["suspended_at"])
    assert {s.queue for s in client.suspensions()} == {"emails", None}

    resumed = run(url, "resume", "emails", "--scope", SCOPE)
    assert_ok(resumed)
    assert "queue emails of scope cli-ops resumed" in resumed.stdout
    assert "the whole scope cli-ops is still suspended" in resumed.stdout
    assert [s.queue for s in client.suspensions()] == [None]

    again = run(url, "resume", "emails", "--scope", SCOPE, "--json")
    assert_ok(again)
    assert json.loads(again.stdout)["resumed"] is False

    assert_ok(run(url, "resume", "--scope", SCOPE))
    assert client.suspensions() == []


# -- cancel / abort / retry ----------------------------------------------------------------


def test_cancel_abort_and_retry_change_the_state_and_record_who_and_why(shop: Shop) -> None:
    url, client = shop.url, shop.client
    cancelled = run(url, "cancel", str(shop.behind.id), "--by", "bob", "--reason", "duplicate")
    assert_ok(cancelled)
    assert f"job {shop.behind.id}" in cancelled.stdout
    assert "state cancelled" in cancelled.stdout
    job = client.get_job(shop.behind.id)
    assert job is not None and job.state == "cancelled"
    assert [(i.action, i.by, i.reason) for i in job.interventions] == [
        ("cancel", "bob", "duplicate")
    ]

    aborted = run(url, "abort", str(shop.head.id), "--scope", SCOPE, "--reason", "card expired")
    assert_ok(aborted)
    assert "state aborted" in aborted.stdout
    assert state_of(client, shop.head.id) == "aborted"

    retried = run(url, "retry", str(shop.head.id), "--by", "carol", "--json")
    assert_ok(retried)
    document = json.loads(retried.stdout)
    assert document["id"] == shop.head.id
    assert document["state"] == "pending"
    assert [i["action"] for i in document["interventions"]] == ["abort", "retry"]
    job = client.get_job(shop.head.id)
    assert job is not None and job.state == "pending"
    abort, retry = job.interventions
    assert (abort.action, abort.reason) == ("abort", "card expired")
    assert abort.by  # user@host by default
    assert (retry.action, retry.by) == ("retry", "carol")


def test_actions_on_an_unknown_job_fail_clearly(url: str, client: Queuetopia) -> None:
    client.create_job("emails", "send_mail", {})
    for action in ("cancel", "abort", "retry"):
        assert_fails(run(url, action, "999999"), "job 999999 not found")
        assert_fails(run(url, action, "999999", "--scope", SCOPE), "job 999999 not found", SCOPE)


def test_actions_that_do_not_apply_to_the_state_say_why(shop: Shop) -> None:
    for action in ("cancel", "abort", "retry"):
        assert_fails(run(shop.url, action, str(shop.sent.id)), f"job {shop.sent.id}")
    assert state_of(shop.client, shop.sent.id) == "done"


# -- cleanup, environment, missing tables --------------------------------------------------


def test_cleanup_deletes_completed_jobs_and_says_how_many(shop: Shop) -> None:
    kept = run(shop.url, "cleanup", "--scope", SCOPE, "--json")
    assert_ok(kept)
    assert json.loads(kept.stdout) == {
        "scope": SCOPE,
        "deleted": 0,
        "older_than": 604800.0,
        "include_ended": False,
    }
    deleted = run(shop.url, "cleanup", "--scope", SCOPE, "--older-than", "0")
    assert_ok(deleted)
    assert deleted.stdout.startswith("deleted 1 job of scope cli-ops")
    assert shop.client.get_job(shop.sent.id) is None
    assert shop.client.get_job(shop.head.id) is not None
    shop.client.cancel_job(shop.behind.id)
    ended = run(shop.url, "cleanup", "--scope", SCOPE, "--older-than", "0", "--include-ended")
    assert_ok(ended)
    assert ended.stdout.startswith("deleted 1 job of scope cli-ops done or ended")
    assert shop.client.get_job(shop.behind.id) is None
    assert shop.client.get_job(shop.head.id) is not None  # pending: never deleted


def test_the_repo_comes_from_queuetopia_repo(shop: Shop) -> None:
    result = CliRunner().invoke(cli, ["jobs", "list"], env={"QUEUETOPIA_REPO": shop.url})
    assert_ok(result)
    assert result.stdout.splitlines()[-1] == "page 1 of 1 (4 jobs)"


def test_a_table_prefix_is_used_and_named_in_errors(shop: Shop) -> None:
    result = run(shop.url, "queues", "--prefix", "other_")
    assert_fails(result, "queuetopia migrate URL --prefix other_")


COMMANDS = [
    ["queues"],
    ["jobs", "list", "--scope", SCOPE],
    ["jobs", "show", "1"],
    ["suspend", "q", "--scope", SCOPE],
    ["resume", "--scope", SCOPE],
    ["cancel", "1"],
    ["abort", "1"],
    ["retry", "1", "--json"],
    ["cleanup", "--scope", SCOPE],
]


def test_every_command_on_an_unmigrated_database_says_to_run_migrate(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    for command in COMMANDS:
        result = run(db_url, *command)
        assert_fails(result, "queuetopia migrate")
        assert result.stdout == ""
    if backend == "sqlite":  # no empty database file was left behind
        assert list(tmp_path.iterdir()) == []


def test_commands_on_tables_of_an_older_schema_version_say_to_run_migrate(db_url: str) -> None:
    migrate(db_url, to=1)
    result = run(db_url, "queues")
    assert_fails(result, f"schema version 1, this version needs {LATEST}", "queuetopia migrate")


# -- scopes --------------------------------------------------------------------------------


def assert_unknown_scope(result: Result, scope: str, *known: str) -> None:
    """A usage error naming the unknown scope, the known ones and --force."""
    assert result.exit_code == 2, result.output
    assert f"unknown scope {scope!r}" in result.stderr
    assert "--force" in result.stderr
    for name in known:
        assert name in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["queues", "--scope", "shpo"],
        ["jobs", "list", "--scope", "shpo"],
        ["jobs", "create", "q", "a", "--scope", "shpo"],
        ["suspend", "payments", "--scope", "shpo"],
        ["resume", "payments", "--scope", "shpo"],
        ["cleanup", "--scope", "shpo"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_a_mistyped_scope_is_refused_with_the_known_ones_unless_forced(
    url: str, client: Queuetopia, command: list[str]
) -> None:
    client.create_job("payments", "charge", {})
    before = Queuetopia(repo=url, scope="shpo")
    try:
        assert_unknown_scope(run(url, *command), "shpo", SCOPE)
        assert before.list_jobs() == [] and before.suspensions() == []
        assert_ok(run(url, *command, "--force"))
    finally:
        before.stop()


def test_suspend_and_resume_need_no_scope_when_the_tables_hold_one(
    url: str, client: Queuetopia
) -> None:
    client.create_job("payments", "charge", {})
    assert_ok(run(url, "suspend", "payments"))
    assert [s.queue for s in client.suspensions()] == ["payments"]
    assert_ok(run(url, "resume", "payments"))
    assert client.suspensions() == []
    other = Queuetopia(repo=url, scope="other")
    try:
        other.create_job("q", "a", {})
        several = run(url, "suspend", "payments")
        assert several.exit_code == 2 and "--scope is required" in several.stderr
    finally:
        other.stop()


def test_a_scope_may_be_named_first_in_empty_tables(url: str) -> None:
    created = run(url, "jobs", "create", "q", "a", "--scope", "first")
    assert_ok(created)
    reader = Queuetopia(repo=url, scope="first")
    try:
        assert len(reader.list_jobs()) == 1
    finally:
        reader.stop()
