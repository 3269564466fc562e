"""A database that goes silent (its host gone, packets dropped: the connection stays
open and nothing answers) fails each call within the `statement_timeout` bounds, as
`DatabaseUnavailableError`, instead of holding it for the ~15 minutes TCP takes to give
up: neither an application's call nor the renewal of a long attempt's lock hangs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from proxy import SilentableProxy

from queuetopia_py import DatabaseUnavailableError, Queuetopia
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Claim

# Long enough to tell "fails after the bounds" (a few seconds, plus a connection
# attempt's 10 s) from "hangs" (minutes).
RETURNS_WITHIN = 60.0

pytestmark = pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)


@pytest.fixture
def proxy(url: str) -> Iterator[SilentableProxy]:
    made = SilentableProxy.for_url(url)
    yield made
    made.close()


@pytest.fixture
def queue(proxy: SilentableProxy) -> Iterator[Queuetopia]:
    made = Queuetopia(repo=proxy.url, scope="silent", statement_timeout=2)
    yield made
    made.stop()


def _outcome(call: Callable[[], object]) -> object:
    """What `call` returned or raised, run on a thread; the test fails if it hangs."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(RETURNS_WITHIN)
    if thread.is_alive():
        pytest.fail(f"the call still hangs after {RETURNS_WITHIN:.0f} s")
    return outcome[0]


def test_reading_a_job_fails_as_unavailable(queue: Queuetopia, proxy: SilentableProxy) -> None:
    job = queue.create_job("q", "a", {})
    assert queue.get_job(job.id) == job  # the proxy forwards
    proxy.black_hole()
    assert isinstance(_outcome(lambda: queue.get_job(job.id)), DatabaseUnavailableError)


def test_creating_a_job_fails_as_unavailable(queue: Queuetopia, proxy: SilentableProxy) -> None:
    queue.create_job("q", "a", {})
    proxy.black_hole()
    failed = _outcome(lambda: queue.create_job("q", "a", {}))
    assert isinstance(failed, DatabaseUnavailableError)


def test_renewing_a_lock_fails_as_unavailable(queue: Queuetopia, proxy: SilentableProxy) -> None:
    queue.create_job("q", "a", {}, timeout=3600)
    claims = ClaimStore(queue._db, queue.scope, queue.node)
    claim = claims.claim("q")
    assert isinstance(claim, Claim)
    assert claims.locks.renew(claim, retry=False)
    proxy.black_hole()
    failed = _outcome(lambda: claims.locks.renew(claim, retry=False))
    assert isinstance(failed, DatabaseUnavailableError)
