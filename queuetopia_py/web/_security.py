"""Who may see and act: authentication of every request, CSRF tokens on every action,
and the headers that keep the pages from being framed or running foreign scripts."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Decides who makes a request: returns the user's name (recorded as `by` on what they
#: do), or None to refuse it (401); it may also raise an `HTTPException` of its own (a
#: redirect to a sign-in page, say). May be a coroutine function.
Authenticator = Callable[[Request], "str | Awaitable[str | None] | None"]

#: The form field (or header, for scripts) that carries the CSRF token.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

#: No script, style, frame or form target from elsewhere; the pages use none inline.
_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def basic_auth(user: str, password: str, *, realm: str = "queuetopia") -> Authenticator:
    """An `Authenticator` that accepts HTTP Basic credentials `user`:`password` (compared
    in constant time) and challenges every other request."""
    if not user or not password:
        raise ValueError("basic_auth: the user and the password must not be empty")
    if ":" in user:
        raise ValueError("basic_auth: the user must not contain ':'")
    expected = hashlib.sha256(f"{user}:{password}".encode()).digest()
    challenge = {"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'}

    def authenticate(request: Request) -> str | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(encoded.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                given = ""
            digest = hashlib.sha256(given.encode()).digest()
            if hmac.compare_digest(digest, expected):
                return user
        raise HTTPException(401, "sign in to see the dashboard", headers=challenge)

    return authenticate


class Guard:
    """ASGI middleware: every request is authenticated (the user's name goes into
    `scope["state"]["user"]`) and every response carries the security headers."""

    def __init__(self, app: ASGIApp, authenticate: Authenticator | None) -> None:
        self.app = app
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in _HEADERS if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            user = await self._user(Request(scope))
        except HTTPException as exc:
            response: Any = PlainTextResponse(
                exc.detail, status_code=exc.status_code, headers=exc.headers
            )
            await response(scope, receive, secured)
            return
        if user is None:
            refused = PlainTextResponse("sign in to see the dashboard", status_code=401)
            await refused(scope, receive, secured)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, secured)

    async def _user(self, request: Request) -> str | None:
        if self.authenticate is None:
            return ""  # anonymous, as the dashboard was told (auth=None)
        found = self.authenticate(request)
        if inspect.isawaitable(found):
            found = await found
        if found is not None and not isinstance(found, str):
            raise TypeError(f"the authenticator returned {found!r}: a user name or None")
        return found


class Csrf:
    """Tokens bound to the signed-in user, signed with a secret (random per process
    unless given: give the same one to every process behind one address)."""

    def __init__(self, secret: str | bytes | None) -> None:
        if secret is None:
            self._key = secrets.token_bytes(32)
        else:
            self._key = secret.encode() if isinstance(secret, str) else secret
            if len(self._key) < 16:
                raise ValueError("csrf_secret: at least 16 bytes")

    def token(self, user: str) -> str:
        """The token that `user`'s forms carry."""
        return hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()

    def check(self, request: Request, user: str, given: str | None) -> None:
        """Refuse (403) an action without `user`'s token, or sent from another site."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPException(403, "refused: the action was sent from another site")
        given = given or request.headers.get(CSRF_HEADER)
        if not given or not hmac.compare_digest(given, self.token(user)):
            raise HTTPException(
                403, "refused: the form's CSRF token is missing or wrong (reload the page)"
            )
