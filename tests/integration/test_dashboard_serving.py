"""Serving the dashboard: `queuetopia dashboard` (its refusals, and a real server
process answering signed-in requests) and `create_app` mounted in an application of
one's own, behind its own authentication."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI, Request

from queuetopia_py import Queuetopia
from queuetopia_py._cli import cli
from queuetopia_py.web import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CREDENTIALS = {"QUEUETOPIA_DASHBOARD_USER": "ops", "QUEUETOPIA_DASHBOARD_PASSWORD": "s3cret"}


def dashboard(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["dashboard", *args], env=env or {})
    return result.exit_code, result.output


def test_the_command_refuses_to_start_without_credentials(url: str) -> None:
    code, output = dashboard("--repo", url, env={"QUEUETOPIA_DASHBOARD_USER": "ops"})
    assert code == 2
    assert "QUEUETOPIA_DASHBOARD_PASSWORD" in output
    assert "--no-auth" in output


def test_no_auth_serves_only_a_loopback_address(url: str) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        code, output = dashboard("--repo", url, "--no-auth", "--host", host)
        assert code == 2, host
        assert "loopback" in output


def test_the_command_says_when_the_tables_are_missing(db_url: str) -> None:
    code, output = dashboard("--repo", db_url, env=CREDENTIALS)
    assert code == 1
    assert "queuetopia migrate" in output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(url: str, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "dashboard.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "queuetopia_py", "dashboard", "--repo", url, "--port", str(port)],
        env={**os.environ, **CREDENTIALS},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(base, timeout=1)
                break
            except httpx.TransportError:
                try:  # until it listens, or ends
                    process.wait(0.1)
                except subprocess.TimeoutExpired:
                    continue
                log.flush()
                pytest.fail((tmp_path / "dashboard.log").read_text())
        yield base
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_the_command_serves_signed_in_users_only(
    served: str, make_queue: Callable[..., Queuetopia]
) -> None:
    make_queue(scope="served").create_job("mails", "send", {})
    assert httpx.get(f"{served}/queues").status_code == 401
    page = httpx.get(f"{served}/queues", auth=("ops", "s3cret"))
    assert page.status_code == 200
    assert 'data-queue="mails"' in page.text
    metrics = httpx.get(f"{served}/metrics", auth=("ops", "s3cret"))
    assert 'queuetopia_jobs_pending{scope="served"} 1.0' in metrics.text


def test_mounted_in_an_application_behind_its_own_authentication(
    url: str, make_queue: Callable[..., Queuetopia]
) -> None:
    node = make_queue(scope="mounted")
    job = node.create_job("mails", "send", {})

    def signed_in(request: Request) -> str | None:
        return request.headers.get("x-user")  # the application's own sign-in

    dashboard_app = create_app(url, auth=signed_in)
    app = FastAPI()
    app.mount("/ops/queues", dashboard_app)
    try:
        client = TestClient(app, follow_redirects=False)
        assert client.get("/ops/queues/queues").status_code == 401
        page = client.get("/ops/queues/queues", headers={"x-user": "alice"})
        assert page.status_code == 200
        # Links, forms and assets point below the mount.
        assert 'href="http://testserver/ops/queues/static/dashboard.css"' in page.text
        assert (
            f'action="http://testserver/ops/queues/jobs/{job.id}/cancel"'
            in client.get(f"/ops/queues/jobs/{job.id}", headers={"x-user": "alice"}).text
        )
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
        assert token is not None
        done = client.post(
            f"/ops/queues/jobs/{job.id}/cancel",
            data={"csrf_token": token.group(1), "back": "/ops/queues/queues"},
            headers={"x-user": "alice"},
        )
        assert done.status_code == 303
        assert done.headers["location"].startswith("/ops/queues/queues?notice=cancel")
        cancelled = node.get_job(job.id)
        assert cancelled is not None
        assert [(i.action, i.by) for i in cancelled.interventions] == [("cancel", "alice")]
        # Another user's token is refused.
        forged = client.post(
            f"/ops/queues/jobs/{job.id}/retry",
            data={"csrf_token": token.group(1)},
            headers={"x-user": "mallory"},
        )
        assert forged.status_code == 403
    finally:
        dashboard_app.state.dashboard.close()
