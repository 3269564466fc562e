"""What every page and action works with: the tables, the templates, the CSRF tokens,
the live feed, and whether actions are allowed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from queuetopia_py import __version__
from queuetopia_py._scopes import Scopes
from queuetopia_py._store.board import Minute
from queuetopia_py.web._format import FILTERS, HIDDEN, relative
from queuetopia_py.web._live import Live
from queuetopia_py.web._security import CSRF_FIELD, Csrf

_HERE = Path(__file__).parent
#: Seconds the hour's chart of a scope is reused before it is read again.
CHART_TTL = 10.0


def _finalize(value: Any) -> Any:
    """Every value a template prints: text HTML-escaped, and its invisible characters as
    character references, so that the page's source holds none of them raw (attribute
    values keep the exact text, for the forms that send it back). Text meant to be read
    goes through the `visible` filter first, which shows them."""
    if isinstance(value, markupsafe.Markup) or not isinstance(value, str):
        return value
    escaped = str(markupsafe.escape(value))
    return markupsafe.Markup(HIDDEN.sub(lambda m: f"&#{ord(m.group())};", escaped))


def templates() -> Jinja2Templates:
    """The page templates, every value HTML-escaped unless marked safe."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters.update(FILTERS)
    env.globals["relative"] = relative
    return Jinja2Templates(env=env)


@dataclass
class Dashboard:
    """One dashboard app's state (`app.state.dashboard`)."""

    scopes: Scopes
    templates: Jinja2Templates
    csrf: Csrf
    live: Live
    read_only: bool
    operator: str
    _charts: dict[str, tuple[float, list[Minute]]] = field(default_factory=dict)

    def minutes(self, scope: str) -> list[Minute]:
        """The hour's chart of `scope`, read at most every `CHART_TTL` seconds (a
        minute's counts can wait that long; every viewer's refresh need not read them)."""
        cached = self._charts.get(scope)
        now = time.monotonic()
        if cached is None or cached[0] <= now:
            cached = (now + CHART_TTL, self.scopes.board(scope).minutes())
            self._charts[scope] = cached
        return cached[1]

    def user(self, request: Request) -> str:
        """Who makes `request`, as recorded on what they do."""
        user: str = request.scope.get("state", {}).get("user", "")
        return user or self.operator

    def close(self) -> None:
        """Stop the live feeds and release the database connections."""
        self.live.close()
        self.scopes.close()


def dashboard_of(request: Request) -> Dashboard:
    """The dashboard serving `request`."""
    found: Dashboard = request.app.state.dashboard
    return found


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """Render `template` with `context` and what every page shows."""
    d = dashboard_of(request)
    user = d.user(request)
    return d.templates.TemplateResponse(
        request,
        template,
        {
            "user": user,
            "read_only": d.read_only,
            "csrf_field": CSRF_FIELD,
            "csrf_token": d.csrf.token(request.scope.get("state", {}).get("user", "")),
            "back": back_of(request),
            "version": __version__,
            "notice": notice_of(request),
            **context,
        },
        status_code=status_code,
    )


#: What an action that went through says on the page it comes back to (by code: the
#: text is never taken from the URL).
NOTICES = {
    "retry": "Job {job} will be retried now.",
    "abort": "Job {job} was aborted: its queue moves on.",
    "cancel": "Job {job} was cancelled.",
    "suspend": "Suspended: nothing new starts there until it is resumed.",
    "resume": "Resumed.",
    "bulk-retry": "{count} jobs will be retried now ({skipped} skipped: their state had changed).",
    "bulk-abort": "{count} jobs were aborted ({skipped} skipped: their state had changed).",
    "bulk-cancel": "{count} jobs were cancelled ({skipped} skipped: running, or ended).",
}


def notice_of(request: Request) -> str | None:
    """The notice the URL asks for, from `NOTICES`, with its numbers."""
    text = NOTICES.get(request.query_params.get("notice", ""))
    if text is None:
        return None
    numbers = {
        name: int(value) if (value := request.query_params.get(name, "0")).isdigit() else 0
        for name in ("job", "count", "skipped")
    }
    return text.format(**numbers)


def back_of(request: Request) -> str:
    """The path and query of `request`, for an action to come back to (without the
    notice of the previous action)."""
    query = request.url.remove_query_params(["notice", "job", "count", "skipped"]).query
    return request.url.path + (f"?{query}" if query else "")
