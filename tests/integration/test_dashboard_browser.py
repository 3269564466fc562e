"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by
Playwright), served by uvicorn beside a running node, on each database: a blocked
queue's error, Retry and the queue flowing again, suspend and resume, a bulk action,
the live update, sign-in and CSRF.

Without a Chromium these tests are skipped, unless QUEUETOPIA_REQUIRE_BROWSER is set
(bash .ci/run sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from recording import Recorder

from queuetopia_py import Job, Queuetopia
from queuetopia_py.web import basic_auth, create_app

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

SCOPE = "mails"
USER, PASSWORD = "ops", "s3cret"
#: Where a page is expected to change, at most this long (a live update included).
WAIT_MS = 15_000


def chromium_path() -> str:
    found = os.environ.get("QUEUETOPIA_CHROMIUM") or next(
        filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser"))), None
    )
    if found is None:
        message = "no Chromium to drive (apt-get install chromium, or set QUEUETOPIA_CHROMIUM)"
        if os.environ.get("QUEUETOPIA_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"{message}: required by QUEUETOPIA_REQUIRE_BROWSER", pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


class Served:
    """The dashboard served by uvicorn on a free port of this machine."""

    def __init__(self, url: str) -> None:
        self.app = create_app(url, auth=basic_auth(USER, PASSWORD), poll_interval=0.3)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = threading.Event()
        while not self.server.started:
            if deadline.wait(0.02) or not self.thread.is_alive():
                break
        assert self.server.started, "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.dashboard.close()


@pytest.fixture
def served(url: str) -> Iterator[Served]:
    serving = Served(url)
    yield serving
    serving.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    context = browser.new_context(
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": 1280, "height": 900},
        base_url=served.base,
    )
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    yield opened
    context.close()


class Switch:
    """A performer's failure, on until turned off."""

    def __init__(self) -> None:
        self.broken = threading.Event()
        self.broken.set()

    def __call__(self, job: Job) -> None:
        if job.action == "send_mail" and self.broken.is_set():
            raise ConnectionError("SMTP 421: mail.example.com is not answering")


class Patient(Recorder):
    """Retries a failed job an hour later: only the page's Retry runs it sooner."""

    def backoff(self, job: Job) -> timedelta:
        return timedelta(hours=1)


@pytest.fixture
def node(make_queue: Callable[..., Queuetopia]) -> tuple[Queuetopia, Recorder, Switch]:
    switch = Switch()
    recorder = Patient(switch)
    made = make_queue(scope=SCOPE, performer=recorder, poll_interval=0.2, max_backoff=3600)
    return made, recorder, switch


def test_a_blocked_queue_is_unblocked_from_the_page(
    node: tuple[Queuetopia, Recorder, Switch], page: Any, tmp_path: Path
) -> None:
    queue, recorder, switch = node
    head = queue.create_job("mails_eu", "send_mail", {"to": "a@example.com"})
    behind = queue.create_job("mails_eu", "send_report", {"to": "b@example.com"})
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 1)
    settled(queue, "mails_eu")
    page.goto(f"/queues?scope={SCOPE}")
    blocked = page.locator("tbody.blocked tr.queue")
    expect(blocked).to_have_count(1)
    expect(blocked).to_contain_text("mails_eu")
    expect(blocked).to_contain_text("ConnectionError: SMTP 421: mail.example.com is not answering")
    switch.broken.clear()
    page.get_by_role("button", name=f"Retry job {head.id}").click()
    expect(page.get_by_role("status").filter(has_text="will be retried now")).to_be_visible()
    # The head runs, then the job behind it: the page shows the queue gone, unreloaded.
    recorder.wait(lambda r: [j.id for j in r.finished][-1:] == [behind.id])
    expect(page.locator("tbody.blocked")).to_have_count(0)
    expect(page.locator("tr.queue", has_text="mails_eu")).to_have_count(0)
    page.goto(f"/jobs/{head.id}")
    expect(page.locator("h1")).to_contain_text("done")
    expect(page.locator("table.interventions")).to_contain_text(USER)


def test_suspend_and_resume_a_queue_from_the_page(
    node: tuple[Queuetopia, Recorder, Switch], page: Any
) -> None:
    queue, recorder, switch = node
    switch.broken.clear()
    queue.create_job("reports", "slow_report", {})
    queue.suspend("reports", by="setup")
    queue.start()
    page.goto(f"/queues?scope={SCOPE}")
    row = page.locator("tbody.suspended tr.queue", has_text="reports")
    expect(row).to_have_count(1)
    row.get_by_role("button", name="Resume queue reports").click()
    expect(page.get_by_role("status").filter(has_text="Resumed.")).to_be_visible()
    recorder.wait(lambda r: any(j.queue == "reports" for j in r.finished))
    assert queue.suspensions() == []
    queue.create_job("reports", "later", {}, scheduled_at=_in_an_hour())
    page.goto(f"/queue?scope={SCOPE}&queue=reports")
    page.get_by_role("button", name="Suspend queue reports").click()
    expect(page.get_by_role("status").filter(has_text="Suspended")).to_be_visible()
    [suspension] = queue.suspensions()
    assert (suspension.queue, suspension.suspended_by) == ("reports", USER)


def settled(queue: Queuetopia, name: str) -> None:
    """Wait until no node holds queue `name`'s lock: the page read next is not about
    to change (a live refresh would replace the button a test is about to click)."""
    pause = threading.Event()
    for _ in range(200):
        status = queue.status().queue(name)
        if status is None or status.lock is None:
            return
        pause.wait(0.05)
    pytest.fail(f"queue {name} stayed locked")


def _in_an_hour() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def test_a_bulk_retry_after_its_confirmation(
    node: tuple[Queuetopia, Recorder, Switch], page: Any
) -> None:
    queue, recorder, switch = node
    jobs = [queue.create_job("imports", "send_mail", {"n": i}, max_attempts=1) for i in range(3)]
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 3)
    settled(queue, "imports")
    page.goto(f"/queue?scope={SCOPE}&queue=imports&state=given_up")
    expect(page.locator("tr[data-job]")).to_have_count(3)
    switch.broken.clear()
    page.get_by_role("button", name="Retry all given-up jobs…").click()
    expect(page.locator("h1")).to_have_text("Retry 3 given-up jobs?")
    page.get_by_role("button", name="Yes, retry 3 jobs").click()
    expect(page.get_by_role("status").filter(has_text="3 jobs will be retried")).to_be_visible()
    for job in jobs:
        queue.wait_for(job.id, timeout=WAIT_MS / 1000)  # done, its success recorded
        done = queue.get_job(job.id)
        assert done is not None and done.done
        assert [(i.action, i.by) for i in done.interventions] == [("retry", USER)]


def test_the_page_updates_live(node: tuple[Queuetopia, Recorder, Switch], page: Any) -> None:
    queue, _, _ = node
    queue.create_job("first", "later", {}, scheduled_at=_in_an_hour())
    page.goto(f"/queues?scope={SCOPE}")
    expect(page.locator("#live-state")).to_have_text("live")
    page.evaluate("window.loadedOnce = true")
    queue.create_job("second", "later", {}, scheduled_at=_in_an_hour())
    expect(page.locator("tr.queue", has_text="second")).to_have_count(1)
    assert page.evaluate("window.loadedOnce") is True  # updated in place, not reloaded


def test_signing_in_is_required(
    node: tuple[Queuetopia, Recorder, Switch], browser: Any, served: Served
) -> None:
    queue, _, _ = node
    queue.create_job("secret_queue", "later", {}, scheduled_at=_in_an_hour())
    for credentials in (None, {"username": USER, "password": "guess"}):
        context = browser.new_context(http_credentials=credentials, base_url=served.base)
        try:
            shown = context.new_page().goto("/queues")
        except playwright_api.Error as exc:  # Chromium gave up on the credentials
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
        else:
            assert shown is not None and shown.status == 401
            assert "secret_queue" not in shown.text()
        answer = context.request.get(f"/queues?scope={SCOPE}")
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Basic")
        assert "secret_queue" not in answer.text()
        context.close()


def test_an_action_with_a_forged_csrf_token_is_refused(
    node: tuple[Queuetopia, Recorder, Switch], page: Any
) -> None:
    queue, recorder, _ = node
    head = queue.create_job("mails_eu", "send_mail", {})
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 1)
    settled(queue, "mails_eu")
    page.goto(f"/jobs/{head.id}")
    page.evaluate(
        "document.querySelectorAll('input[name=csrf_token]').forEach(i => i.value = 'forged')"
    )
    page.get_by_role("button", name=f"Retry job {head.id}").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRF token")
    job = queue.get_job(head.id)
    assert job is not None and job.interventions == ()
