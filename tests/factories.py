"""Build `Job` values for tests that need one without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from queuetopia_py import Job


def make_job(**fields: Any) -> Job:
    """A claimed job (one attempt started now) with `fields` overriding the defaults."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": 1,
        "scope": "tests",
        "queue": "q",
        "action": "a",
        "params": {},
        "timeout": timedelta(seconds=60),
        "max_backoff": timedelta(hours=24),
        "max_attempts": 20,
        "attempts": 1,
        "attempted_at": now,
        "attempted_by": "node",
        "next_attempt_at": now,
        "scheduled_at": now,
        "done_at": None,
        "error": None,
        "inserted_at": now,
    }
    return Job(**{**values, **fields})
