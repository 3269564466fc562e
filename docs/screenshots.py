"""Take the dashboard's screenshots in docs/images/ (headless Chromium, Playwright).

    python docs/screenshots.py [--chromium /usr/bin/chromium]

Seeds a SQLite file with a node running a few queues (one blocked by a failing mail
server, one reporting progress, one suspended, some waiting, a schedule), serves the
dashboard in this process, and captures each page.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from queuetopia_py import Job, Performer, Queuetopia, Schedule, migrate, report_progress
from queuetopia_py.web import basic_auth, create_app

IMAGES = Path(__file__).parent / "images"
release = threading.Event()


class Mails(Performer):
    def perform(self, job: Job) -> object:
        if job.queue == "mails_eu":
            raise ConnectionError("SMTP 421: mail.example.com is not answering")
        if job.action == "export":
            report_progress("exported 3,120 of 7,800 rows", 0.4)
            release.wait(120)
        return {"sent": True}

    def backoff(self, job: Job) -> timedelta:
        return timedelta(minutes=5)


def seed(url: str) -> Queuetopia:
    migrate(url)
    node = Queuetopia(
        repo=url,
        scope="shop",
        performer=Mails(),
        poll_interval=0.2,
        node="web-1",
        schedules=[Schedule("nightly_report", cron="0 2 * * *", queue="reports", action="export")],
    )
    later = datetime.now(UTC) + timedelta(hours=2)
    for i in range(12):
        node.create_job(f"mails_us_{i:02}", "send_mail", {"to": f"user{i}@example.com"})
    node.create_job("mails_eu", "send_mail", {"to": "anna@example.eu", "template": "welcome"})
    node.create_job("mails_eu", "send_mail", {"to": "jan@example.eu", "template": "receipt"})
    node.create_job("exports", "export", {"table": "orders", "format": "csv"})
    node.create_job("invoices", "render_invoice", {"order": 1042}, scheduled_at=later)
    node.create_job("refunds", "refund", {"order": 977, "amount": "12.50"}, scheduled_at=later)
    node.suspend("refunds", by="alice", reason="payment provider maintenance")
    for i in range(3):
        node.create_job("imports", "import_row", {"row": i}, max_attempts=1, scheduled_at=later)
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    IMAGES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/shop.db"
        node = seed(url)
        node.start()
        app = create_app(url, auth=basic_auth("alice", "secret"))
        server = uvicorn.Server(uvicorn.Config(app, port=8766, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                context = browser.new_context(
                    http_credentials={"username": "alice", "password": "secret"},
                    viewport={"width": 1280, "height": 860},
                    base_url="http://127.0.0.1:8766",
                )
                page = context.new_page()
                page.goto("/queues?scope=shop")
                page.locator("tbody.blocked").wait_for()
                page.locator("tbody.running").wait_for()
                page.screenshot(path=IMAGES / "dashboard-queues.png", full_page=True)
                head = node.list_jobs("mails_eu", limit=1)[0]
                page.goto(f"/jobs/{head.id}")
                page.screenshot(path=IMAGES / "dashboard-job.png", full_page=True)
                page.goto("/queue?scope=shop&queue=mails_eu")
                page.screenshot(path=IMAGES / "dashboard-queue.png", full_page=True)
                page.goto("/nodes")
                page.screenshot(path=IMAGES / "dashboard-nodes.png", full_page=True)
                page.goto("/schedules")
                page.screenshot(path=IMAGES / "dashboard-schedules.png", full_page=True)
                page.goto("/queue?scope=shop&queue=mails_eu")
                page.get_by_role("button", name="Abort all pending jobs…").click()
                page.screenshot(path=IMAGES / "dashboard-confirm.png", full_page=True)
                browser.close()
        finally:
            release.set()
            server.should_exit = True
            thread.join(10)
            node.stop(10)
            app.state.dashboard.close()
    for image in sorted(IMAGES.glob("dashboard-*.png")):
        print(image)


if __name__ == "__main__":
    main()
