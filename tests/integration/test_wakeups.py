"""Wake-ups: on PostgreSQL, work announced by one instance reaches the others at once
(LISTEN/NOTIFY), and a lost listening connection comes back; elsewhere a node wakes for
its own new jobs. Every node here polls only once a minute: a job picked up within
seconds was announced."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from recording import Recorder, wait_until

from queuetopia_py import Job, Performer, Queuetopia
from queuetopia_py import _listener as listener
from queuetopia_py._store.announcements import Announcement, channel

SLOW_POLL = 60.0


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """LISTEN/NOTIFY is PostgreSQL's (a parameter, so that the run leaves these tests out
    with the other PostgreSQL tests when it cannot reach one)."""
    return str(request.param)


def _listener_of(queue: Queuetopia) -> listener.Listener:
    registration = queue._subscription
    assert registration is not None
    return registration.listener


def _listening_connections(queue: Queuetopia, aggregate: str = "count(*)") -> int:
    """`aggregate` over the database's sessions that listen (count them, or end them)."""
    with queue.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    f"SELECT {aggregate} FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            ).scalar_one()
        )


def _started_idle(make_queue: Callable, recorder: Performer, **options: object) -> Queuetopia:
    """A started worker that has run one job (its first poll is behind it) and idles."""
    worker: Queuetopia = make_queue(performer=recorder, poll_interval=SLOW_POLL, **options)
    worker.start()
    assert _listener_of(worker).listening.wait(10)
    first = worker.create_job("warm-up", "a", {})
    wait_until(lambda: worker.get_job(first.id).done)  # type: ignore[union-attr]
    return worker


def test_a_job_created_by_another_instance_starts_at_once(make_queue: Callable) -> None:
    recorder = Recorder()
    worker = _started_idle(make_queue, recorder)
    producer = make_queue(scope=worker.scope)

    job = producer.create_job("mails", "send", {"to": "a"})

    recorder.wait(lambda r: any(j.id == job.id for j in r.finished), timeout=10)


def test_many_queues_in_one_bulk_are_announced_as_the_scope(make_queue: Callable) -> None:
    recorder = Recorder()
    worker = _started_idle(make_queue, recorder, max_concurrency=4)
    producer = make_queue(scope=worker.scope)

    created = producer.create_jobs(
        [{"queue": f"q{i}", "action": "a", "params": {}} for i in range(150)]
    )

    ids = {j.id for j in created}
    recorder.wait(lambda r: ids <= {j.id for j in r.finished}, timeout=30)


def test_other_scopes_are_not_woken(make_queue: Callable) -> None:
    offers: list[str | None] = []
    woken = threading.Event()
    producer = make_queue(scope="producer")
    registration = listener.subscribe(
        producer.engine,
        channel(producer._db.tables),
        "elsewhere",
        "someone",
        lambda queue: (offers.append(queue), woken.set()),
    )
    try:
        assert registration.listener.listening.wait(10)
        wait_until(lambda: offers == [None])  # the first "poll once" after connecting
        producer.create_job("q", "a", {})
        ours = make_queue(scope="elsewhere")
        ours.create_job("q2", "a", {})
        wait_until(lambda: offers == [None, "q2"])
    finally:
        registration.close()


def test_an_operator_action_on_another_instance_wakes_the_queue(make_queue: Callable) -> None:
    recorder = Recorder()
    worker = _started_idle(make_queue, recorder)
    operator = make_queue(scope=worker.scope)
    operator.suspend("q")
    job = operator.create_job("q", "a", {})

    operator.resume("q")

    recorder.wait(lambda r: any(j.id == job.id for j in r.finished), timeout=10)


def test_a_lost_listening_connection_is_logged_and_comes_back(
    make_queue: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    worker = _started_idle(make_queue, recorder)
    caplog.set_level(logging.WARNING, logger="queuetopia_py.listener")
    assert _listening_connections(worker, "count(pg_terminate_backend(pid))") == 1
    wait_until(lambda: "lost the connection listening" in caplog.text)
    wait_until(lambda: "listening for new jobs again" in caplog.text)

    job = make_queue(scope=worker.scope).create_job("after", "a", {})

    recorder.wait(lambda r: any(j.id == job.id for j in r.finished), timeout=10)


def test_one_listening_connection_serves_every_instance_of_a_process(
    make_queue: Callable,
) -> None:
    first = make_queue(scope="one", performer=Recorder(), poll_interval=SLOW_POLL)
    second = make_queue(scope="two", performer=Recorder(), poll_interval=SLOW_POLL)
    first.start()
    second.start()
    assert _listener_of(first) is _listener_of(second)
    assert _listener_of(first).listening.wait(10)
    assert _listening_connections(first) == 1


def test_payloads_round_trip_and_foreign_ones_are_refused() -> None:
    announcement = Announcement("scope", "queue ü", "origin")
    assert Announcement.from_payload(announcement.to_payload()) == announcement
    assert Announcement.from_payload(Announcement("s", None, "o").to_payload()) == (
        Announcement("s", None, "o")
    )
    for foreign in ("", "hello", "[1,2,3]", '["s", 5, "o"]', "{}"):
        assert Announcement.from_payload(foreign) is None


class _Gate(Performer):
    def __init__(self) -> None:
        self.started = threading.Event()

    def perform(self, job: Job) -> object:
        self.started.set()
        return None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"], indirect=False)
def test_a_nodes_own_new_job_starts_at_once(make_queue: Callable, backend: str) -> None:
    gate = _Gate()
    worker: Queuetopia = make_queue(performer=gate, poll_interval=SLOW_POLL)
    worker.start()
    first = worker.create_job("warm-up", "a", {})
    wait_until(lambda: worker.get_job(first.id).done)  # type: ignore[union-attr]
    gate.started.clear()

    worker.create_job("q", "a", {})

    assert gate.started.wait(10)
