"""Instant pickup on PostgreSQL: one LISTEN connection per database and process.

Every running scheduler of this process on the same tables subscribes with its scope;
each announcement (`store.announcements`) is handed to the schedulers of its scope but
the instance that made it, which has woken its own scheduler already. Wake-ups coalesce
in the scheduler. When the connection is lost, the listener logs it once, reconnects
with a bounded backoff, and tells every subscriber to poll once it is back (it may have
missed announcements); meanwhile the schedulers find new work by polling.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from queuetopia_py._store.announcements import Announcement

logger = logging.getLogger("queuetopia_py.listener")

#: A subscriber: called with a queue that has new work, or None ("poll the scope").
Offer = Callable[[str | None], None]

# Seconds between reconnection attempts: doubling from the first to the last.
_RECONNECT_FIRST = 0.2
_RECONNECT_MAX = 10.0
# An idle connection is checked this often (a lost one may stay silent).
_IDLE_CHECK = 5.0

_registry: dict[tuple[str, str], Listener] = {}
_registry_lock = threading.Lock()


class Registration:
    """A scheduler's registration with a listener; `close()` ends it."""

    def __init__(self, listener: Listener, scope: str, origin: str, offer: Offer) -> None:
        self.listener = listener
        self.scope = scope
        self.origin = origin
        self.offer = offer

    def close(self) -> None:
        """Stop receiving announcements (the last one out closes the connection)."""
        self.listener.unsubscribe(self)


def subscribe(engine: Engine, channel: str, scope: str, origin: str, offer: Offer) -> Registration:
    """Receive the announcements of `scope` on `channel` made by others than `origin`."""
    key = (engine.url.render_as_string(hide_password=False), channel)
    with _registry_lock:
        listener = _registry.get(key)
        if listener is None:
            listener = _registry[key] = Listener(engine, channel, key)
        subscription = Registration(listener, scope, origin, offer)
        listener.add(subscription)
    return subscription


class Listener:
    """The LISTEN connection of one database and channel, on a thread of its own."""

    def __init__(self, engine: Engine, channel: str, key: tuple[str, str]) -> None:
        self.engine = engine
        self.channel = channel
        self._key = key
        self._subscriptions: list[Registration] = []
        self._stopped = threading.Event()
        #: Set while the connection listens (for tests and status).
        self.listening = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"queuetopia-listen-{channel}", daemon=True
        )
        self._thread.start()

    def add(self, subscription: Registration) -> None:
        """Called with the registry lock held."""
        self._subscriptions = [*self._subscriptions, subscription]

    def unsubscribe(self, subscription: Registration) -> None:
        """Remove `subscription`; stop listening when none is left."""
        with _registry_lock:
            self._subscriptions = [s for s in self._subscriptions if s is not subscription]
            if not self._subscriptions and _registry.get(self._key) is self:
                del _registry[self._key]
                self._stopped.set()

    def _dispatch(self, announcement: Announcement | None) -> None:
        """Hand `announcement` to its subscribers; None: every subscriber polls."""
        for subscription in self._subscriptions:
            if announcement is None:
                queue = None
            elif (
                announcement.scope != subscription.scope
                or announcement.origin == subscription.origin
            ):
                continue
            else:
                queue = announcement.queue
            try:
                subscription.offer(queue)
            except Exception:
                logger.exception("a wake-up subscriber failed")

    def _connect(self) -> Any:
        """A dedicated psycopg connection in autocommit mode, listening on the channel."""
        pooled = self.engine.raw_connection()
        pooled.detach()  # ours for good, outside the pool
        conn = pooled.dbapi_connection
        assert conn is not None
        conn.rollback()
        conn.autocommit = True
        conn.execute(f'LISTEN "{self.channel}"')  # the channel is a validated table name
        return conn

    def _run(self) -> None:
        pause = _RECONNECT_FIRST
        lost = False
        while not self._stopped.is_set():
            conn = None
            try:
                conn = self._connect()
                self.listening.set()
                if lost:
                    logger.warning(
                        "listening for new jobs again on channel %r; instant pickup is back",
                        self.channel,
                    )
                lost, pause = False, _RECONNECT_FIRST
                # Announcements made while not listening were missed: look everywhere.
                self._dispatch(None)
                while not self._stopped.is_set():
                    idle = True
                    for notify in conn.notifies(timeout=_IDLE_CHECK):
                        idle = False
                        self._dispatch(Announcement.from_payload(notify.payload) or None)
                        if self._stopped.is_set():
                            break
                    if idle:
                        conn.execute("SELECT 1")
            except Exception as exc:
                self.listening.clear()
                if self._stopped.is_set():
                    break
                if not lost:
                    logger.warning(
                        "lost the connection listening for new jobs on channel %r (%s); "
                        "jobs created by other processes are found by polling until it is "
                        "back",
                        self.channel,
                        exc,
                    )
                    lost = True
                self._stopped.wait(pause)
                pause = min(pause * 2, _RECONNECT_MAX)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        logger.debug("closing the listening connection failed", exc_info=True)
        self.listening.clear()
