"""The FastAPI recipe of docs/asyncio.md, as written: its lifespan starts the scheduler on
the server's loop and stops it, an endpoint awaits `acreate_job`, an `async def perform`
runs the job; driven through httpx's ASGI transport, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
import uuid
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from asgi_lifespan import LifespanManager

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncio.md"


def recipe() -> str:
    """The program of the recipe's section."""
    text = DOC.read_text()
    section = text[text.index("## A FastAPI service") :]
    (program,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return program


def load(path: Path) -> ModuleType:
    name = f"recipe_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_the_fastapi_recipe_runs_a_signups_welcome_mail(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app.py").write_text(recipe())
    monkeypatch.setenv("QUEUETOPIA_REPO", db_url)
    app_module = load(tmp_path / "app.py")
    mail_queue = app_module.mail_queue
    loops: list[asyncio.AbstractEventLoop] = []
    sent = app_module.send_welcome_mail

    async def send_and_note_the_loop(address: str) -> None:
        loops.append(asyncio.get_running_loop())
        await sent(address)

    monkeypatch.setattr(app_module, "send_welcome_mail", send_and_note_the_loop)

    async def main() -> None:
        async with LifespanManager(app_module.app) as manager:
            assert mail_queue.running
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                created = await client.post("/signups", json={"email": "toto@mail.com"})
                assert created.status_code == 202, created.text
                job_id = created.json()["job_id"]
                result = await mail_queue.await_for(job_id, timeout=30)
                assert result == {"sent_to": "toto@mail.com"}
                shown = await client.get(f"/jobs/{job_id}")
                assert shown.json() == {"state": "done", "result": result}
                assert (await client.get("/jobs/999999")).status_code == 404
        # The performer ran on the server's loop (the application's).
        assert loops == [asyncio.get_running_loop()]
        assert not mail_queue.running  # the lifespan's end stopped the scheduler

    asyncio.run(main())
