"""The pages: queues (blocked first), a queue's jobs, a job, the nodes' running
attempts, the schedules; and the live feed that refreshes them."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from queuetopia_py import defaults
from queuetopia_py._errors import JobNotFoundError
from queuetopia_py._job import STORED_STATES, Job, JobState
from queuetopia_py._store.board import SECTIONS, Cursor, Section
from queuetopia_py.web._context import Dashboard, dashboard_of, render
from queuetopia_py.web._live import digest

#: Queues a page of the queues page shows; jobs a page of a queue's jobs.
QUEUES_PER_PAGE = 50
JOBS_PER_PAGE = 50
#: Scopes the queues page names (with their blocked queues); the others are counted.
SCOPES_SHOWN = 50
#: The states whose jobs a bulk action takes, with the verbs it may apply to them.
BULK_VERBS: dict[str, tuple[str, ...]] = {
    JobState.PENDING: ("abort", "cancel"),
    JobState.GIVEN_UP: ("retry",),
    JobState.ABORTED: ("retry",),
    JobState.CANCELLED: ("retry",),
}


def _text(request: Request, name: str, *, required: bool = False) -> str | None:
    """A query parameter: a name of at most the longest a name can be."""
    value = request.query_params.get(name)
    if value is None or value == "":
        if required:
            raise HTTPException(400, f"the {name} is missing")
        return None
    if len(value) > defaults.MAX_NAME_LENGTH:
        raise HTTPException(400, f"the {name} is too long")
    return value


def encode_cursor(cursor: Cursor | None) -> str | None:
    """A queues page's cursor as a URL-safe token."""
    if cursor is None:
        return None
    since = None if cursor.blocked_since is None else cursor.blocked_since.isoformat()
    raw = json.dumps([cursor.section.value, cursor.queue, since]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str | None) -> Cursor | None:
    """The cursor a token stands for; 400 for a token not made by `encode_cursor`."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        section, queue, since = json.loads(raw)
        return Cursor(
            Section(section),
            None if queue is None else str(queue),
            None if since is None else datetime.fromisoformat(since),
        )
    except (binascii.Error, ValueError, TypeError) as exc:
        raise HTTPException(400, "the page cursor is not valid") from exc


def _scope_choice(d: Dashboard, asked: str | None) -> tuple[list[str], str | None]:
    scopes = d.scopes.known_scopes()
    return scopes, asked if asked is not None else (scopes[0] if scopes else None)


async def home(request: Request) -> Response:
    """The queues page."""
    return RedirectResponse(request.url_for("queues"), status_code=303)


async def queues(request: Request) -> Response:
    """A scope's queues: blocked first, then running, suspended and waiting ones."""
    d = dashboard_of(request)
    name = _text(request, "name")
    start = decode_cursor(request.query_params.get("cursor"))

    def read() -> dict[str, Any]:
        scopes, scope = _scope_choice(d, _text(request, "scope"))
        found: dict[str, Any] = {"scopes": scopes, "scope": scope}
        found["blocked_by_scope"] = d.scopes.blocked_by_scope(scopes[:SCOPES_SHOWN])
        if scope is not None:
            board = d.scopes.board(scope)
            found["seen"] = digest(board.fingerprint())  # before what the page shows
            found["page"] = board.queues(QUEUES_PER_PAGE, name=name, start=start)
            found["counts"] = board.counts()
            found["minutes"] = d.minutes(scope)
        return found

    found = await run_in_threadpool(read)
    page = found.get("page")
    groups = [
        (section, [status for _, status in rows])
        for section, rows in itertools.groupby(page.queues if page else [], key=lambda r: r[0])
    ]
    return render(
        request,
        "queues.html",
        groups=groups,
        scopes_shown=SCOPES_SHOWN,
        name=name,
        sections=SECTIONS,
        next_cursor=encode_cursor(page.next) if page else None,
        now=page.at if page else None,
        **found,
    )


async def queue(request: Request) -> Response:
    """One queue: its status and its jobs of one state, in queue order."""
    d = dashboard_of(request)
    scope = _text(request, "scope", required=True)
    name = _text(request, "queue", required=True)
    assert scope is not None and name is not None
    state = request.query_params.get("state") or JobState.PENDING
    if state not in STORED_STATES:
        raise HTTPException(400, f"no such state: {state!r}")
    after = _job_id(request.query_params.get("after"))

    def read() -> dict[str, Any]:
        board = d.scopes.board(scope)
        seen = digest(board.fingerprint())  # before what the page shows
        jobs = d.scopes.scope(scope).list_jobs(
            name, state=state, limit=JOBS_PER_PAGE + 1, after=after
        )
        counts = {s: board.count_jobs(name, s) for s in BULK_VERBS}
        status = board.queue(name)
        return {"status": status, "jobs": jobs, "counts": counts, "seen": seen}

    found = await run_in_threadpool(read)
    jobs: list[Job] = found["jobs"]
    status = found["status"]
    return render(
        request,
        "queue.html",
        scope=scope,
        queue=name,
        state=state,
        states=STORED_STATES,
        bulk_verbs=BULK_VERBS,
        section=status[0] if status else None,
        status=status[1] if status else None,
        jobs=jobs[:JOBS_PER_PAGE],
        next_after=jobs[JOBS_PER_PAGE - 1].id if len(jobs) > JOBS_PER_PAGE else None,
        counts=found["counts"],
        seen=found["seen"],
    )


def _job_id(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 19:
        raise HTTPException(400, "a job id is a positive integer")
    return int(text)


async def job(request: Request) -> Response:
    """Every field of one job, with the actions its state allows."""
    d = dashboard_of(request)
    job_id = int(request.path_params["job_id"])

    def read() -> tuple[Job, Any, str]:
        instance = d.scopes.instance_of(job_id, None)
        board = d.scopes.board(instance.scope)
        seen = digest(board.fingerprint())  # before the job
        found = d.scopes.job(job_id, instance.scope)
        status = board.queue(found.queue)
        return found, status, seen

    try:
        found, status, seen = await run_in_threadpool(read)
    except JobNotFoundError as exc:
        raise HTTPException(404, f"no job {job_id}") from exc
    attempt = None if status is None else status[1].running
    running = attempt is not None and attempt.job.id == found.id
    return render(request, "job.html", job=found, running=running, now=datetime.now(UTC), seen=seen)


async def nodes(request: Request) -> Response:
    """The attempts running now on each node, with their progress."""
    d = dashboard_of(request)

    def read() -> tuple[dict[str, list[Any]], datetime | None]:
        running: dict[str, list[Any]] = {}
        at = None
        for scope in d.scopes.known_scopes():
            status = d.scopes.scope(scope).status(1)
            at = status.at
            for node, attempts in status.nodes.items():
                running.setdefault(node, []).extend(attempts)
        return dict(sorted(running.items())), at

    running, at = await run_in_threadpool(read)
    return render(request, "nodes.html", nodes=running, now=at)


async def schedules(request: Request) -> Response:
    """Every scope's periodic jobs: next and last fire times, the last job created."""
    d = dashboard_of(request)
    found = await run_in_threadpool(d.scopes.schedules, None)
    return render(request, "schedules.html", schedules=found)


async def live(request: Request) -> Response:
    """Server-sent events: `change` whenever the scope's queues change."""
    d = dashboard_of(request)
    scope = _text(request, "scope")
    if scope is None:
        scopes = await run_in_threadpool(d.scopes.known_scopes)
        scope = scopes[0] if scopes else ""
    return StreamingResponse(
        d.live.events(scope, request.query_params.get("seen")),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )
