"""The dashboard (the `web` extra): an ASGI app showing the queues, blocked ones first,
with the actions that unblock them.

    from queuetopia_py.web import basic_auth, create_app
    app = create_app("postgresql+psycopg://app@db/app", auth=basic_auth("ops", password))

Serve it with `queuetopia dashboard` or any ASGI server, or mount it in your own
Starlette or FastAPI application. See docs/dashboard.md.
"""

from queuetopia_py.web._app import create_app
from queuetopia_py.web._security import Authenticator, basic_auth

__all__ = ["Authenticator", "basic_auth", "create_app"]
