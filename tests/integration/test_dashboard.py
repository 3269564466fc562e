"""The dashboard's routes on each database: what each page shows, what each action does
and records, and what is refused (anonymous requests, actions without the CSRF token,
from another site, or in read-only mode); hostile names and params shown, never run."""

from __future__ import annotations

import html
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from recording import Recorder

from queuetopia_py import Job, Performer, Queuetopia, Schedule
from queuetopia_py.testing import drain

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from queuetopia_py.web import basic_auth, create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SCOPE = "dash"
HOSTILE = "<script>alert(1)</script>\x1b[31m\u202egnp.exe"


def fail_bad(job: Job) -> None:
    if job.action == "fail":
        raise RuntimeError(f"SMTP 554 {HOSTILE}")


class Failing(Performer):
    def perform(self, job: Job) -> None:
        fail_bad(job)


@pytest.fixture
def node(make_queue: Callable[..., Queuetopia]) -> Queuetopia:
    return make_queue(scope=SCOPE, performer=Failing(), max_backoff=3600)


@pytest.fixture
def make_client(url: str) -> Iterator[Callable[..., TestClient]]:
    apps: list[Any] = []

    def make(*, read_only: bool = False, signed_in: bool = True) -> TestClient:
        app = create_app(url, auth=basic_auth("ops", "s3cret"), read_only=read_only)
        apps.append(app)
        client = TestClient(app, follow_redirects=False)
        if signed_in:
            client.auth = ("ops", "s3cret")
        return client

    yield make
    for app in apps:
        app.state.dashboard.close()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert found, "the page has no action form"
    return found.group(1)


def blocked_queue(node: Queuetopia) -> Job:
    """A queue whose head failed once (retrying, its backoff an hour away)."""
    head = node.create_job("mails_bad", "fail", {"to": "a@b.c"})
    node.create_job("mails_bad", "send", {})
    drain(node)
    return head


def test_nothing_anonymous_sees_or_acts(
    node: Queuetopia, make_client: Callable[..., TestClient]
) -> None:
    head = blocked_queue(node)
    anonymous = make_client(signed_in=False)
    for path in (
        "/queues",
        f"/jobs/{head.id}",
        "/nodes",
        "/schedules",
        "/metrics",
        "/live",
        "/static/htmx.min.js",
    ):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Basic ")
        assert "SMTP" not in response.text
    assert anonymous.post(f"/jobs/{head.id}/retry").status_code == 401
    wrong = make_client(signed_in=False)
    wrong.auth = ("ops", "guess")
    assert wrong.get("/queues").status_code == 401
    assert node.get_job(head.id).interventions == ()  # type: ignore[union-attr]


def test_the_queues_page_shows_blocked_queues_first_with_their_failing_head(
    node: Queuetopia, client: TestClient
) -> None:
    node.create_job("a_waiting", "send", {})  # sorts before mails_bad by name
    head = blocked_queue(node)
    node.create_job("a_waiting", "send", {})
    page = client.get("/queues", params={"scope": SCOPE})
    assert page.status_code == 200
    text = page.text
    blocked = text.index('class="section blocked"')
    assert blocked < text.index('class="section waiting"')
    row = text[blocked : text.index('class="section waiting"')]
    assert "mails_bad" in row
    assert f"#{head.id}" in row
    assert "RuntimeError: SMTP 554" in row  # the first line of the last error
    assert "1/20" in row  # attempts of this round
    assert f'aria-label="Retry job {head.id}"' in row
    assert "(1 blocked) Queues" in text  # the title says it
    assert "security-policy" not in text  # headers, not markup
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_retry_from_the_page_is_recorded_with_the_signed_in_user(
    node: Queuetopia, client: TestClient
) -> None:
    head = blocked_queue(node)
    page = client.get("/queues", params={"scope": SCOPE})
    back = f"/queues?scope={SCOPE}"
    response = client.post(
        f"/jobs/{head.id}/retry", data={"csrf_token": csrf_of(page.text), "back": back}
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"{back}&notice=retry&job={head.id}"
    retried = node.get_job(head.id)
    assert retried is not None
    assert [(i.action, i.by) for i in retried.interventions] == [("retry", "ops")]
    assert f"Job {head.id} will be retried now." in client.get(response.headers["location"]).text


def test_abort_and_cancel_from_the_job_page(node: Queuetopia, client: TestClient) -> None:
    head = blocked_queue(node)
    follower = node.list_jobs("mails_bad", state="pending")[1]
    page = client.get(f"/jobs/{follower.id}")
    assert f'aria-label="Cancel job {follower.id}"' in page.text
    token = csrf_of(page.text)
    assert client.post(f"/jobs/{follower.id}/cancel", data={"csrf_token": token}).status_code == 303
    assert client.post(f"/jobs/{head.id}/abort", data={"csrf_token": token}).status_code == 303
    assert node.get_job(follower.id).state == "cancelled"  # type: ignore[union-attr]
    assert node.get_job(head.id).state == "aborted"  # type: ignore[union-attr]
    # An action the job's state refuses says why, and changes nothing.
    refused = client.post(f"/jobs/{follower.id}/cancel", data={"csrf_token": token})
    assert refused.status_code == 409
    assert "cancelled already" in refused.text


def test_actions_need_the_users_csrf_token(node: Queuetopia, client: TestClient) -> None:
    head = blocked_queue(node)
    token = csrf_of(client.get(f"/jobs/{head.id}").text)
    for data in ({}, {"csrf_token": "0" * 64}, {"csrf_token": token[:-1]}):
        refused = client.post(f"/jobs/{head.id}/retry", data=data)
        assert refused.status_code == 403
        assert "CSRF" in refused.text
    cross = client.post(
        f"/jobs/{head.id}/retry",
        data={"csrf_token": token},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert cross.status_code == 403
    refused_suspend = client.post("/scopes/suspend", data={"scope": SCOPE})
    assert refused_suspend.status_code == 403
    assert node.get_job(head.id).interventions == ()  # type: ignore[union-attr]
    assert node.suspensions() == []


def test_read_only_shows_no_action_and_refuses_them(
    node: Queuetopia, make_client: Callable[..., TestClient]
) -> None:
    head = blocked_queue(node)
    client = make_client(read_only=True)
    page = client.get("/queues", params={"scope": SCOPE})
    assert "SMTP 554" in page.text
    assert "<button" not in page.text.split("<main", 1)[1].split("</main>")[0].replace(
        '<button type="submit" class="button">Filter</button>', ""
    )
    job_page = client.get(f"/jobs/{head.id}").text
    refused = client.post(f"/jobs/{head.id}/retry", data={"csrf_token": csrf_of_any(job_page)})
    assert refused.status_code == 403
    assert "read-only" in refused.text
    assert node.get_job(head.id).interventions == ()  # type: ignore[union-attr]


def csrf_of_any(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    return found.group(1) if found else ""


def test_suspend_and_resume_a_queue_and_the_scope(node: Queuetopia, client: TestClient) -> None:
    node.create_job("reports", "send", {})
    token = csrf_of(client.get("/queues", params={"scope": SCOPE}).text)
    form = {"csrf_token": token, "scope": SCOPE, "queue": "reports"}
    assert client.post("/scopes/suspend", data=form).status_code == 303
    [suspension] = node.suspensions()
    assert (suspension.queue, suspension.suspended_by) == ("reports", "ops")
    page = client.get("/queues", params={"scope": SCOPE}).text
    assert 'class="section suspended"' in page
    assert 'aria-label="Resume queue reports"' in page
    assert client.post("/scopes/resume", data=form).status_code == 303
    assert node.suspensions() == []
    whole = {"csrf_token": token, "scope": SCOPE}
    assert client.post("/scopes/suspend", data=whole).status_code == 303
    assert [s.queue for s in node.suspensions()] == [None]
    assert "The whole scope is suspended" in client.get("/queues", params={"scope": SCOPE}).text
    assert client.post("/scopes/resume", data=whole).status_code == 303
    assert node.suspensions() == []


def test_a_bulk_retry_shows_its_count_then_takes_the_jobs_that_matched(
    node: Queuetopia, client: TestClient
) -> None:
    given_up = [node.create_job("imports", "fail", {"n": i}, max_attempts=1) for i in range(3)]
    drain(node)
    assert all(node.get_job(j.id).state == "given_up" for j in given_up)  # type: ignore[union-attr]
    page = client.get("/queue", params={"scope": SCOPE, "queue": "imports", "state": "given_up"})
    assert "given up (3)" in page.text
    token = csrf_of(page.text)
    form = {
        "csrf_token": token,
        "scope": SCOPE,
        "queue": "imports",
        "state": "given_up",
        "verb": "retry",
    }
    confirm = client.post("/bulk", data=form)
    assert confirm.status_code == 200
    assert "Retry 3 given-up jobs?" in confirm.text
    up_to = re.search(r'name="up_to" value="(\d+)"', confirm.text)
    assert up_to is not None
    # A job given up after the confirmation is left alone.
    late = node.create_job("imports", "fail", {"n": 3}, max_attempts=1)
    drain(node)
    assert node.get_job(late.id).state == "given_up"  # type: ignore[union-attr]
    done = client.post("/bulk", data={**form, "confirm": "yes", "up_to": up_to.group(1)})
    assert done.status_code == 303
    assert "notice=bulk-retry" in done.headers["location"]
    assert "count=3" in done.headers["location"]
    for job in given_up:
        again = node.get_job(job.id)
        assert again is not None and again.pending
        assert [(i.action, i.by) for i in again.interventions] == [("retry", "ops")]
    assert node.get_job(late.id).state == "given_up"  # type: ignore[union-attr]
    # A verb the state does not take is refused.
    wrong = client.post("/bulk", data={**form, "verb": "cancel"})
    assert wrong.status_code == 400


def test_hostile_names_params_and_errors_are_shown_escaped(
    make_queue: Callable[..., Queuetopia], client: TestClient
) -> None:
    hostile = make_queue(scope=HOSTILE, performer=Failing(), max_backoff=3600)
    job = hostile.create_job(HOSTILE, "fail", {HOSTILE: [HOSTILE, {"x": HOSTILE}]})
    drain(hostile)
    pages = [
        client.get("/queues", params={"scope": HOSTILE}),
        client.get("/queue", params={"scope": HOSTILE, "queue": HOSTILE}),
        client.get(f"/jobs/{job.id}"),
        client.get("/nodes"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "\x1b" not in page.text
        assert "\u202e" not in page.text
    job_page = pages[2].text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31m\\u202egnp.exe" in job_page
    assert "RuntimeError: SMTP 554 &lt;script&gt;" in job_page  # the whole error, escaped


def test_queues_are_paged_by_key_in_the_pages_order(node: Queuetopia, client: TestClient) -> None:
    head = blocked_queue(node)
    node.create_jobs([{"queue": f"q{i:03}", "action": "send", "params": {}} for i in range(120)])
    seen: list[str] = []
    params: dict[str, str] = {"scope": SCOPE}
    pages = 0
    while True:
        page = client.get("/queues", params=params).text
        seen += re.findall(r'<tr class="queue \w+" data-queue="([^"]+)"', page)
        pages += 1
        cursor = re.search(r'cursor=([\w-]+)" rel="next"', page)
        if cursor is None:
            break
        params = {"scope": SCOPE, "cursor": cursor.group(1)}
    assert pages == 3
    assert seen == ["mails_bad"] + [f"q{i:03}" for i in range(120)]
    assert head.queue == "mails_bad"
    filtered = client.get("/queues", params={"scope": SCOPE, "name": "q11"}).text
    assert re.findall(r'data-queue="([^"]+)"', filtered) == [f"q11{i}" for i in range(10)]
    assert (
        client.get("/queues", params={"scope": SCOPE, "cursor": "not-a-cursor"}).status_code == 400
    )


def test_the_queue_page_lists_its_jobs_in_order_by_state(
    node: Queuetopia, client: TestClient
) -> None:
    jobs = [node.create_job("ordered", "send", {"n": i}) for i in range(3)]
    page = client.get("/queue", params={"scope": SCOPE, "queue": "ordered"}).text
    assert re.findall(r'<tr data-job="(\d+)"', page) == [str(j.id) for j in jobs]
    drain(node)
    done = client.get("/queue", params={"scope": SCOPE, "queue": "ordered", "state": "done"}).text
    assert re.findall(r'<tr data-job="(\d+)"', done) == [str(j.id) for j in jobs]
    assert (
        client.get("/queue", params={"scope": SCOPE, "queue": "ordered", "state": "x"}).status_code
        == 400
    )
    assert client.get("/queue", params={"scope": SCOPE}).status_code == 400


def test_the_job_page_shows_every_field(node: Queuetopia, client: TestClient) -> None:
    job = node.create_job("shown", "send", {"to": "a@b.c", "n": [1, 2]}, unique_key="k-1")
    page = html.unescape(client.get(f"/jobs/{job.id}").text)
    assert '"to": "a@b.c"' in page
    assert "k-1" in page
    drain(node)
    assert "Result" in client.get(f"/jobs/{job.id}").text
    assert client.get("/jobs/999999999").status_code == 404


def test_metrics_are_served(node: Queuetopia, client: TestClient) -> None:
    blocked_queue(node)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert f'queuetopia_queues_blocked{{scope="{SCOPE}"}} 1.0' in metrics.text
    assert f'queuetopia_jobs_pending{{scope="{SCOPE}"}} 2.0' in metrics.text


def test_the_chart_counts_the_jobs_that_ended_this_hour(
    node: Queuetopia, client: TestClient
) -> None:
    for i in range(4):
        node.create_job(f"c{i}", "send", {})
    node.create_job("c9", "fail", {}, max_attempts=1)
    drain(node)
    page = client.get("/queues", params={"scope": SCOPE}).text
    assert 'Last hour: <span class="done-key">4 done</span>' in page
    assert "1 failed" in page


def test_sections_come_in_order_with_their_counts(
    make_queue: Callable[..., Queuetopia], client: TestClient
) -> None:
    release = threading.Event()

    def behaviour(job: Job) -> None:
        if job.action == "hold":
            release.wait(30)
        fail_bad(job)

    recorder = Recorder(behaviour)
    node = make_queue(scope=SCOPE, performer=recorder, poll_interval=0.1, max_backoff=3600)
    node.create_job("z_running", "hold", {})
    node.create_job("m_blocked", "fail", {})
    node.create_job("b_waiting", "send", {}, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    node.create_job("c_suspended", "send", {}, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    node.suspend("c_suspended", by="setup")
    try:
        node.start()
        recorder.wait(lambda r: len(r.failed) == 1 and len(r.started) == 2)
        page = client.get("/queues", params={"scope": SCOPE}).text
        order = re.findall(r'<tr class="queue (\w+)" data-queue="([^"]+)"', page)
        assert order == [
            ("blocked", "m_blocked"),
            ("running", "z_running"),
            ("suspended", "c_suspended"),
            ("waiting", "b_waiting"),
        ]
        counts = dict(
            (label, int(n))
            for n, label in re.findall(r"<strong>(\d+)</strong> (\w+ ?\w*)</li>", page)
        )
        assert counts == {"blocked": 1, "running": 1, "suspended": 1, "waiting": 1, "in all": 4}
        # The running attempt shows on the nodes page too.
        assert "z_running" in client.get("/nodes").text
    finally:
        release.set()


def test_home_leads_to_the_queues_and_schedules_are_listed(
    make_queue: Callable[..., Queuetopia], client: TestClient
) -> None:
    home = client.get("/")
    assert home.status_code == 303
    assert home.headers["location"].endswith("/queues")
    assert "No schedule" in client.get("/schedules").text
    node = make_queue(
        scope=SCOPE,
        performer=Failing(),
        schedules=[Schedule("nightly", cron="0 2 * * *", queue="reports", action="export")],
    )
    node.start()
    node.stop()
    page = client.get("/schedules").text
    assert "nightly" in page
    assert "cron 0 2 * * * UTC" in page


def test_a_bulk_retry_of_the_whole_scope_and_a_foreign_back_link(
    node: Queuetopia, client: TestClient
) -> None:
    jobs = [node.create_job(f"imports_{i}", "fail", {}, max_attempts=1) for i in range(2)]
    drain(node)
    page = client.get("/queues", params={"scope": SCOPE}).text
    assert "Retry all given-up jobs of the scope…" in page
    form = {
        "csrf_token": csrf_of(page),
        "scope": SCOPE,
        "state": "given_up",
        "verb": "retry",
        "back": "//evil.example/phish",
    }
    confirm = client.post("/bulk", data=form)
    assert "Retry 2 given-up jobs?" in confirm.text
    assert "evil.example" not in confirm.text  # the way back stays on this site
    up_to = re.search(r'name="up_to" value="(\d+)"', confirm.text)
    assert up_to is not None
    done = client.post("/bulk", data={**form, "confirm": "yes", "up_to": up_to.group(1)})
    assert done.headers["location"].startswith("/queues?")
    for job in jobs:
        again = node.get_job(job.id)
        assert again is not None and again.pending
