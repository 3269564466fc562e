"""Pure decisions about time: retry delays, lock lifetimes, due-ness. No I/O here."""

from __future__ import annotations

from datetime import datetime, timedelta

from queuetopia_py import defaults

# 2**attempts overflows timedelta long before this; the cap applies well before anyway.
_MAX_EXPONENT = 40


def default_backoff(attempts_before: int, max_backoff: timedelta) -> timedelta:
    """Queuetopia's retry delay: `min((2**attempts + 1) s, max_backoff)`.

    `attempts_before` counts the attempts made before the one that just failed, so the
    delays run 2 s, 3 s, 5 s, 9 s, 17 s ... up to `max_backoff`.

    >>> default_backoff(0, timedelta(hours=24))
    datetime.timedelta(seconds=2)
    """
    exponent = min(max(attempts_before, 0), _MAX_EXPONENT)
    return min(timedelta(seconds=2**exponent + 1), max_backoff)


def lock_lifetime(timeout: timedelta, lease: timedelta = defaults.LOCK_LEASE) -> timedelta:
    """How long a queue lock lives from its claim or renewal: the job's timeout plus a
    safety margin, or the lease when that is shorter (the lock is then renewed while the
    attempt runs, see `needs_renewal`).

    >>> lock_lifetime(timedelta(seconds=5))
    datetime.timedelta(seconds=6)
    >>> lock_lifetime(timedelta(hours=1))
    datetime.timedelta(seconds=60)
    """
    return min(timeout + defaults.LOCK_MARGIN, lease)


def needs_renewal(timeout: timedelta, lease: timedelta = defaults.LOCK_LEASE) -> bool:
    """Whether an attempt with this timeout may outlive its lock unless it is renewed."""
    return timeout + defaults.LOCK_MARGIN > lease


def next_attempt_at(
    attempted_at: datetime, attempts: int, max_attempts: int, backoff: timedelta
) -> datetime | None:
    """When a job that just failed runs again, or `None` when it is given up.

    `attempts` counts the attempts made including the one that failed.
    """
    if attempts >= max_attempts:
        return None
    return attempted_at + backoff


def is_due(next_attempt: datetime | None, now: datetime) -> bool:
    """Whether a pending job may start at `now` (database time)."""
    return next_attempt is not None and next_attempt <= now
