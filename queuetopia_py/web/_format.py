"""How the pages show values: text with its control and direction-changing characters
made visible, JSON laid out, instants and durations for people. HTML escaping is
Jinja2's autoescape, on for every template."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from queuetopia_py._job import error_line

# C0 controls but tab and newline, DEL, C1 controls, and the characters that reorder
# text (bidirectional overrides and isolates, marks): shown as escapes, never obeyed.
HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any) -> str:
    """`value` as text, its invisible and reordering characters written as escapes."""
    return HIDDEN.sub(_escape, "" if value is None else str(value))


def first_line(error: str | None) -> str:
    """The line that sums an error up (for a traceback, the exception's), made visible."""
    return visible(error_line(error)) if error else ""


def pretty_json(value: Any) -> str:
    """`value` as indented JSON (non-ASCII kept, invisible characters escaped)."""
    return visible(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def instant(value: datetime | None) -> str:
    """An instant in UTC to the second: "2026-12-06 14:03:05 UTC"."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def relative(value: datetime | None, now: datetime) -> str:
    """How long before or after `now` an instant is: "3 min ago", "in 12 s"."""
    if value is None:
        return ""
    delta = value - now
    text = duration(abs(delta))
    return f"in {text}" if delta > timedelta(0) else f"{text} ago"


def duration(value: timedelta | None) -> str:
    """A duration, in the largest unit that keeps it readable: "850 ms", "12 s", "3 min",
    "2 h 5 min", "3 d 4 h"."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def percent(fraction: float | None) -> str:
    """A progress fraction as a percentage: "42%"."""
    return "" if fraction is None else f"{fraction * 100:.0f}%"


FILTERS = {
    "visible": visible,
    "first_line": first_line,
    "pretty_json": pretty_json,
    "instant": instant,
    "duration": duration,
    "percent": percent,
}
