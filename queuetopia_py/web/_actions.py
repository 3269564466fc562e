"""The actions: retry, abort or cancel a job; suspend or resume a queue or a scope; the
same for every job a filter matches, after a confirmation that shows how many. Each is
a form POST checked for its CSRF token, refused in read-only mode, recorded on the job
with the signed-in user as `by`, and answered by a redirect to the page it came from."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL, FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from queuetopia_py import defaults
from queuetopia_py._errors import JobNotFoundError, JobStateError
from queuetopia_py._queuetopia import Queuetopia
from queuetopia_py.web._context import Dashboard, dashboard_of, render
from queuetopia_py.web._pages import BULK_VERBS
from queuetopia_py.web._security import CSRF_FIELD

#: A bulk action takes at most this many jobs (run it again for the rest).
BULK_LIMIT = 10_000
_BULK_BATCH = 200


async def _form(request: Request) -> tuple[Dashboard, FormData, str]:
    """The dashboard, the action's form and who sends it: refused (403) in read-only
    mode, or without the user's CSRF token."""
    d = dashboard_of(request)
    if d.read_only:
        raise HTTPException(403, "refused: this dashboard is read-only")
    form = await request.form(max_files=0, max_fields=20)
    user = request.scope.get("state", {}).get("user", "")
    token = form.get(CSRF_FIELD)
    d.csrf.check(request, user, token if isinstance(token, str) else None)
    return d, form, d.user(request)


def _field(form: FormData, name: str, *, required: bool = False) -> str | None:
    value = form.get(name)
    if not isinstance(value, str) or value == "":
        if required:
            raise HTTPException(400, f"the {name} is missing")
        return None
    if len(value) > defaults.MAX_NAME_LENGTH:
        raise HTTPException(400, f"the {name} is too long")
    return value


def _back_path(request: Request, form: FormData) -> str:
    """The page the form came from: a path of this site only (else the queues page)."""
    back = form.get("back")
    if not isinstance(back, str) or not back.startswith("/") or back.startswith(("//", "/\\")):
        return str(request.url_for("queues").path)
    return back


def _back(request: Request, form: FormData, **notice: Any) -> Response:
    """Redirect (303) to the page the form came from, with the action's notice."""
    url = URL(_back_path(request, form)).include_query_params(**notice)
    return RedirectResponse(str(url), status_code=303)


def _refused(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", status_code=409, reason=str(exc), code=409)


async def job_action(request: Request) -> Response:
    """Retry, abort or cancel one job."""
    d, form, user = await _form(request)
    verb = request.path_params["verb"]
    job_id = int(request.path_params["job_id"])
    reason = form.get("reason")
    reason = reason if isinstance(reason, str) and reason.strip() else None

    def act() -> None:
        instance = d.scopes.instance_of(job_id, None)
        _act(instance, verb, job_id, user, reason)

    try:
        await run_in_threadpool(act)
    except JobNotFoundError as exc:
        raise HTTPException(404, f"no job {job_id}") from exc
    except JobStateError as exc:
        return _refused(request, exc)
    return _back(request, form, notice=verb, job=job_id)


def _act(instance: Queuetopia, verb: str, job_id: int, by: str, reason: str | None) -> None:
    if verb == "retry":
        instance.retry_job(job_id, by=by, reason=reason)
    elif verb == "abort":
        instance.abort_job(job_id, by=by, reason=reason)
    elif verb == "cancel":
        instance.cancel_job(job_id, by=by, reason=reason)
    else:  # the route admits no other verb
        raise HTTPException(404)


async def suspension(request: Request) -> Response:
    """Suspend or resume a queue, or a whole scope (no queue given)."""
    d, form, user = await _form(request)
    verb = request.path_params["verb"]
    if verb not in ("suspend", "resume"):
        raise HTTPException(404)
    scope = _field(form, "scope", required=True)
    queue = _field(form, "queue")
    assert scope is not None
    instance = d.scopes.scope(scope)
    if verb == "suspend":
        await run_in_threadpool(lambda: instance.suspend(queue, by=user))
    else:
        await run_in_threadpool(lambda: instance.resume(queue))
    return _back(request, form, notice=verb)


async def bulk(request: Request) -> Response:
    """A verb over every job of a state (of a queue, or of the whole scope): without
    `confirm`, a page saying how many jobs it would take; with it, done to the jobs
    that matched then (ids up to `up_to`), at most `BULK_LIMIT` of them."""
    d, form, user = await _form(request)
    scope = _field(form, "scope", required=True)
    queue = _field(form, "queue")
    state = _field(form, "state", required=True)
    verb = _field(form, "verb", required=True)
    assert scope is not None and state is not None and verb is not None
    if verb not in BULK_VERBS.get(state, ()):
        raise HTTPException(400, f"no bulk {verb} of {state} jobs")
    instance = d.scopes.scope(scope)
    if form.get("confirm") != "yes":
        # Jobs created from now on have higher ids: the confirmation does not take them.
        board = d.scopes.board(scope)
        up_to = await run_in_threadpool(board.newest_id)
        count = await run_in_threadpool(board.count_jobs, queue, state)
        return render(
            request,
            "confirm.html",
            scope=scope,
            queue=queue,
            state=state,
            verb=verb,
            count=count,
            limit=BULK_LIMIT,
            up_to=up_to,
            back_to=_back_path(request, form),
        )
    up_to_text = form.get("up_to")
    if not isinstance(up_to_text, str) or not up_to_text.isdigit():
        raise HTTPException(400, "the up_to job id is missing")
    up_to = int(up_to_text)

    def run() -> tuple[int, int]:
        done = skipped = 0
        after: int | None = None
        while done + skipped < BULK_LIMIT:
            batch = instance.list_jobs(queue, state=state, limit=_BULK_BATCH, after=after)
            if not batch:
                break
            for job in batch:
                if job.id > up_to or done + skipped >= BULK_LIMIT:
                    continue
                try:
                    _act(instance, verb, job.id, user, "bulk action from the dashboard")
                    done += 1
                except JobStateError:
                    skipped += 1
            after = batch[-1].id
        return done, skipped

    done, skipped = await run_in_threadpool(run)
    return _back(request, form, notice=f"bulk-{verb}", count=done, skipped=skipped)
