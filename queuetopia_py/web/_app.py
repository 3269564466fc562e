"""The dashboard's ASGI app: its routes, its security, its lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.engine import URL, Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from queuetopia_py import defaults
from queuetopia_py._queuetopia import default_operator
from queuetopia_py._scopes import Scopes
from queuetopia_py.web import _actions, _pages
from queuetopia_py.web._context import Dashboard, dashboard_of, render, templates
from queuetopia_py.web._live import Live
from queuetopia_py.web._security import Authenticator, Csrf, Guard

_STATIC = Path(__file__).parent / "static"


async def _metrics(request: Request) -> Response:
    """The Prometheus metrics (`queuetopia_py.contrib.prometheus`), text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from queuetopia_py.contrib.prometheus import QueuetopiaMetrics

    d = dashboard_of(request)
    registry = request.app.state.registry
    if registry is None:
        registry = CollectorRegistry()
        request.app.state.metrics = QueuetopiaMetrics(
            d.scopes.engine, prefix=d.scopes.prefix, registry=registry
        )
        request.app.state.registry = registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (401, 404, 405) and request.url.path.endswith("/metrics"):
        return Response(exc.detail, status_code=exc.status_code, headers=exc.headers)
    return render(
        request, "error.html", status_code=exc.status_code, reason=exc.detail, code=exc.status_code
    )


def create_app(
    repo: str | URL | Engine,
    *,
    auth: Authenticator | None,
    read_only: bool = False,
    table_prefix: str = defaults.TABLE_PREFIX,
    csrf_secret: str | bytes | None = None,
    poll_interval: float = 2.0,
) -> Starlette:
    """The dashboard of the queuetopia tables at `repo`, as an ASGI app to serve
    (`queuetopia dashboard`) or to mount in an application of your own:

        app.mount("/queues", create_app(engine, auth=basic_auth("ops", password)))

    `auth` decides who may see and act (an `Authenticator`: `basic_auth(...)`, or a
    callable of your own taking the request and returning the user's name, recorded as
    `by` on each action); `auth=None` lets anyone in, for a dashboard only reachable
    from this machine. `read_only` hides the actions and refuses them. `csrf_secret`
    signs the forms' tokens (default: random per process; give the same one to every
    process serving one address). Pages refresh themselves when the queues change,
    looked at every `poll_interval` seconds (on PostgreSQL, at once on new work too).

    The app holds a connection pool: `app.state.dashboard.close()` releases it (served
    on its own, the app does it on shutdown).
    """
    if poll_interval <= 0:
        raise ValueError(f"poll_interval: must be positive (got {poll_interval})")
    scopes = Scopes(repo if isinstance(repo, Engine) else str(repo), table_prefix)
    dashboard = Dashboard(
        scopes=scopes,
        templates=templates(),
        csrf=Csrf(csrf_secret),
        live=Live(scopes, poll_interval),
        read_only=read_only,
        operator=default_operator(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        dashboard.close()

    routes = [
        Route("/", _pages.home, name="home"),
        Route("/queues", _pages.queues, name="queues"),
        Route("/queue", _pages.queue, name="queue"),
        Route("/jobs/{job_id:int}", _pages.job, name="job"),
        Route("/nodes", _pages.nodes, name="nodes"),
        Route("/schedules", _pages.schedules, name="schedules"),
        Route("/live", _pages.live, name="live"),
        Route("/metrics", _metrics, name="metrics"),
        Route(
            "/jobs/{job_id:int}/{verb:str}",
            _actions.job_action,
            methods=["POST"],
            name="job_action",
        ),
        Route("/scopes/{verb:str}", _actions.suspension, methods=["POST"], name="suspension"),
        Route("/bulk", _actions.bulk, methods=["POST"], name="bulk"),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, authenticate=auth)],
        exception_handlers={HTTPException: _error},
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    app.state.registry = None
    return app
