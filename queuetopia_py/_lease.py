"""Keeping the queue locks of long attempts alive while they run.

A queue lock lives `lock_lifetime(timeout, lease)` from its claim: the job's timeout plus
a margin, or the lease when that is shorter. An attempt that may outlive such a lock has
it renewed here, every third of the lease, while it runs. Should its node die, the queue
is taken over one lease after the last renewal rather than one timeout after the claim;
while the node lives, nobody else takes the queue.

One keeper thread per scheduler renews every kept lock; it starts with the first long
attempt and ends when it has had nothing to keep for a while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from queuetopia_py import defaults
from queuetopia_py._backoff import lock_lifetime, needs_renewal
from queuetopia_py._store.locks import Claim, LockStore

logger = logging.getLogger("queuetopia_py.lease")

# After a failed renewal (database unreachable), try again after a quarter of the period,
# at most this long.
_RETRY = 1.0


@dataclass
class _Kept:
    claim: Claim
    # Monotonic times: when to renew next, and by when the lock surely still holds.
    renew_at: float
    holds_until: float
    failing: bool = False


class LeaseKeeper:
    """Renews the locks of running attempts that may outlive them (see the module)."""

    def __init__(self, locks: LockStore) -> None:
        self.locks = locks
        self.lease = locks.where.lease
        self.period = self.lease.total_seconds() / 3
        self._kept: dict[str, _Kept] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def keep(self, claim: Claim) -> Iterator[Callable[[], bool] | None]:
        """Renew `claim`'s lock while the block runs, if its attempt may outlive it.

        Gives the block a function telling whether the lock may be about to expire for
        want of renewals (the database was unreachable for most of a lease): an attempt
        that can be stopped should then be, before another node takes the queue over.
        Gives None when the lock outlives the attempt's deadline anyway.
        """
        if not needs_renewal(claim.job.timeout, self.lease):
            yield None
            return
        lifetime = lock_lifetime(claim.job.timeout, self.lease).total_seconds()
        kept = _Kept(claim, claim.started + self.period, claim.started + lifetime)
        margin = min(defaults.LOCK_MARGIN.total_seconds(), self.period * 3 / 4)
        with self._changed:
            self._kept[claim.token] = kept
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="queuetopia-lease", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()
        try:
            yield lambda: time.monotonic() >= kept.holds_until - margin
        finally:
            with self._changed:
                self._kept.pop(claim.token, None)

    @property
    def kept(self) -> int:
        """How many locks are being kept now."""
        with self._changed:
            return len(self._kept)

    def _loop(self) -> None:
        idle_since: float | None = None
        while True:
            with self._changed:
                now = time.monotonic()
                if not self._kept:
                    if idle_since is not None and now - idle_since >= 3 * self.period:
                        self._thread = None
                        return
                    idle_since = idle_since or now
                    self._changed.wait(self.period)
                    continue
                idle_since = None
                due = [k for k in self._kept.values() if k.renew_at <= now]
                if not due:
                    self._changed.wait(min(k.renew_at for k in self._kept.values()) - now)
                    continue
            for kept in due:
                self._renew(kept)

    def _renew(self, kept: _Kept) -> None:
        claim = kept.claim
        log = {"scope": claim.job.scope, "queue": claim.job.queue, "job_id": claim.job.id}
        started = time.monotonic()
        try:
            held = self.locks.renew(claim, retry=False)
        except Exception as exc:
            kept.renew_at = time.monotonic() + min(_RETRY, self.period / 4)
            if not kept.failing:
                kept.failing = True
                logger.warning(
                    "could not renew the lock of a running attempt (it holds for %.1f s "
                    "more); retrying: %s",
                    kept.holds_until - time.monotonic(),
                    exc,
                    extra=log,
                )
            return
        if not held:
            with self._changed:
                # Only this attempt's entry: each claim (a lock passed on included) has a
                # token of its own.
                running = self._kept.get(claim.token) is kept
                if running:
                    del self._kept[claim.token]
            if running:  # (else the attempt ended, and its record released the lock)
                logger.error(
                    "the lock of a running attempt was lost: another node may run its queue",
                    extra=log,
                )
            return
        if kept.failing:
            kept.failing = False
            logger.warning("renewed the lock of a running attempt again", extra=log)
        lifetime = lock_lifetime(claim.job.timeout, self.lease).total_seconds()
        kept.renew_at = started + self.period
        kept.holds_until = started + lifetime
