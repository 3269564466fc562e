"""The dashboard's pieces without a database: text made visible, HTTP Basic parsing,
CSRF tokens, the queues page's cursors."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("starlette")

from starlette.exceptions import HTTPException
from starlette.requests import Request

from queuetopia_py._store.board import Cursor, Section
from queuetopia_py.web import basic_auth
from queuetopia_py.web._format import duration, first_line, pretty_json, visible
from queuetopia_py.web._pages import decode_cursor, encode_cursor
from queuetopia_py.web._security import Csrf


def request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


def basic(text: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(text).decode()}


def test_invisible_and_reordering_characters_are_shown_as_escapes() -> None:
    assert visible("a\x1b[31mb\x00c\x7f\u202ed\u2066e\ufeff") == (
        "a\\x1b[31mb\\x00c\\x7f\\u202ed\\u2066e\\ufeff"
    )
    assert visible("tab\tand\nnewline, é, 日本") == "tab\tand\nnewline, é, 日本"
    assert visible(None) == ""
    assert first_line("Traceback (most recent call last):\n  ...\nValueError: \x1b") == (
        "ValueError: \\x1b"
    )
    assert pretty_json({"k": "\u202e"}) == '{\n  "k": "\\u202e"\n}'


def test_durations_read_in_the_largest_fitting_unit() -> None:
    cases = {0.25: "250 ms", 12: "12 s", 180: "3 min", 7500: "2 h 5 min", 3 * 86400: "3 d"}
    for seconds, text in cases.items():
        assert duration(timedelta(seconds=seconds)) == text


def test_basic_auth_accepts_only_its_credentials() -> None:
    check = basic_auth("ops", "pa:ss wörd")
    assert check(request(basic("ops:pa:ss wörd".encode()))) == "ops"
    for headers in (
        {},
        basic(b"ops:wrong"),
        basic(b"ops"),
        basic(b"\xff\xfe:x"),
        {"Authorization": "Basic not base64!"},
        {"Authorization": "Bearer abc"},
    ):
        with pytest.raises(HTTPException) as refused:
            check(request(headers))
        assert refused.value.status_code == 401
        assert refused.value.headers is not None
        assert refused.value.headers["WWW-Authenticate"].startswith('Basic realm="queuetopia"')
    with pytest.raises(ValueError, match="':'"):
        basic_auth("a:b", "c")
    with pytest.raises(ValueError, match="empty"):
        basic_auth("ops", "")


def test_csrf_tokens_are_bound_to_the_user_and_the_secret() -> None:
    csrf = Csrf("a secret of sixteen bytes or more")
    assert csrf.token("alice") == Csrf("a secret of sixteen bytes or more").token("alice")
    assert csrf.token("alice") != csrf.token("bob")
    assert csrf.token("alice") != Csrf(None).token("alice")
    csrf.check(request({}), "alice", csrf.token("alice"))
    for user, token in (("bob", csrf.token("alice")), ("alice", None), ("alice", "")):
        with pytest.raises(HTTPException):
            csrf.check(request({}), user, token)
    with pytest.raises(ValueError, match="16 bytes"):
        Csrf("short")


def test_cursors_round_trip_and_forged_ones_are_refused() -> None:
    since = datetime(2026, 12, 6, 14, 0, 1, 123456, tzinfo=UTC)
    for cursor in (
        Cursor(Section.BLOCKED, "q<1>", since),
        Cursor(Section.WAITING, "名前"),
        Cursor(Section.RUNNING),
    ):
        assert decode_cursor(encode_cursor(cursor)) == cursor
    assert decode_cursor(None) is None
    for forged in ("x", "e30", base64.urlsafe_b64encode(b'["nope", null, null]').decode()):
        with pytest.raises(HTTPException) as refused:
            decode_cursor(forged)
        assert refused.value.status_code == 400
