from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from queue_rows import resync
from recording import Recorder, wait_until

from queuetopia_py import InvalidJobError, Queuetopia, defaults
from queuetopia_py._store.database import create_engine


class MailQueue(Queuetopia):
    pass


class SmsQueue(Queuetopia):
    pass


def test_create_job_stores_and_returns_the_whole_job(make_queue: Callable) -> None:
    queue = make_queue(MailQueue)
    job = queue.create_job(
        "mails_queue_1",
        "send_mail",
        {"email_address": "toto@mail.com", "body": "Welcome"},
        timeout=1.5,
        max_backoff=timedelta(minutes=1),
        max_attempts=3,
    )
    assert job.id > 0
    assert (job.scope, job.queue, job.action) == (queue.scope, "mails_queue_1", "send_mail")
    assert job.params == {"email_address": "toto@mail.com", "body": "Welcome"}
    assert job.timeout == timedelta(seconds=1.5)
    assert job.max_backoff == timedelta(minutes=1)
    assert (job.max_attempts, job.attempts, job.done_at, job.error) == (3, 0, None, None)
    assert job.scheduled_at.tzinfo is UTC and job.inserted_at.tzinfo is UTC
    assert job.next_attempt_at == job.scheduled_at
    assert abs(job.inserted_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert queue.get_job(job.id) == job


def test_defaults_are_queuetopias(make_queue: Callable) -> None:
    job = make_queue().create_job("q", "a", {})
    assert job.timeout == defaults.TIMEOUT == timedelta(seconds=60)
    assert job.max_backoff == defaults.MAX_BACKOFF == timedelta(hours=24)
    assert job.max_attempts == defaults.MAX_ATTEMPTS == 20


def test_instants_keep_their_microseconds(make_queue: Callable) -> None:
    at = datetime(2031, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
    job = make_queue().create_job("q", "a", {}, scheduled_at=at)
    assert make_queue().get_job(job.id).scheduled_at == at


def test_sequence_grows_with_each_job(make_queue: Callable) -> None:
    queue = make_queue()
    ids = [queue.create_job("q", "a", {"i": i}).sequence for i in range(20)]
    assert ids == sorted(ids) and len(set(ids)) == 20


def test_params_round_trip_faithfully(make_queue: Callable) -> None:
    params = {
        "unicode": "héllo wörld \u2603 \U0001f600 日本語",
        "empty": "",
        "zero": 0,
        "big": 2**53,
        "neg": -1.25,
        "bool": True,
        "none": None,
        "nested": {"list": [1, "two", {"three": [3.0]}], "deep": {"a": {"b": {"c": []}}}},
    }
    queue = make_queue()
    job = queue.create_job("q", "a", params)
    assert job.params == params
    assert queue.get_job(job.id).params == params


def test_queue_names_are_case_and_space_sensitive(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("Queue", "a", {})
    queue.create_job("queue", "a", {})
    assert [j.queue for j in queue.list_jobs("queue")] == ["queue"]
    assert [j.queue for j in queue.list_jobs("Queue")] == ["Queue"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"queue": ""},
        {"params": [1]},
        {"timeout": -1},
        {"max_attempts": 0},
        {"scheduled_at": datetime(2030, 1, 1)},
    ],
)
def test_invalid_input_writes_nothing(make_queue: Callable, kwargs: dict) -> None:
    queue = make_queue()
    args = {"queue": "q", "action": "a", "params": {}, **kwargs}
    with pytest.raises(InvalidJobError):
        queue.create_job(args.pop("queue"), args.pop("action"), args.pop("params"), **args)
    assert queue.list_jobs() == []


def test_create_job_joins_the_callers_transaction(make_queue: Callable, url: str) -> None:
    queue = make_queue()
    engine = create_engine(url)
    with engine.connect() as conn:
        with conn.begin() as tx:
            rolled_back = queue.create_job("q", "a", {"n": 1}, connection=conn)
            tx.rollback()
        with conn.begin():
            committed = queue.create_job("q", "a", {"n": 2}, connection=conn)
    engine.dispose()
    assert rolled_back.params == {"n": 1}
    assert queue.list_jobs() == [committed]


def test_get_job_and_lists_see_only_their_scope(make_queue: Callable) -> None:
    mails, sms = make_queue(MailQueue), make_queue(SmsQueue)
    mail = mails.create_job("q", "send_mail", {})
    text = sms.create_job("q", "send_sms", {})
    assert sms.get_job(mail.id) is None and mails.get_job(text.id) is None
    assert [j.id for j in mails.list_jobs()] == [mail.id]
    assert [j.id for j in sms.list_jobs("q")] == [text.id]


def test_list_jobs_filters_and_keeps_queue_order(make_queue: Callable) -> None:
    queue = make_queue()
    early = datetime.now(UTC) - timedelta(hours=1)
    a = queue.create_job("q1", "x", {})
    b = queue.create_job("q1", "y", {})
    c = queue.create_job("q2", "x", {})
    d = queue.create_job("q1", "x", {}, scheduled_at=early)
    assert [j.id for j in queue.list_jobs()] == [d.id, a.id, b.id, c.id]
    assert [j.id for j in queue.list_jobs("q1", action="x")] == [d.id, a.id]
    assert [j.id for j in queue.list_jobs(available=True)] == [d.id, a.id, b.id, c.id]
    assert queue.list_jobs(available=False) == []
    assert [j.id for j in queue.list_jobs(limit=2, offset=1)] == [a.id, b.id]


def test_paginate_jobs_returns_pages_with_totals(make_queue: Callable) -> None:
    queue = make_queue()
    ids = [queue.create_job("q", "a", {"i": i}).id for i in range(7)]
    page = queue.paginate_jobs(page_size=3, page_number=3)
    assert [j.id for j in page.items] == ids[6:]
    assert (page.total, page.total_pages, page.page_number, page.page_size) == (7, 3, 3, 3)
    assert queue.paginate_jobs(page_size=3, page_number=1, queue="other").total == 0
    with pytest.raises(InvalidJobError, match="page_number"):
        queue.paginate_jobs(page_number=0)


def test_cleanup_deletes_only_old_completed_jobs_of_its_own_scope(
    make_queue: Callable, url: str
) -> None:
    mails, sms = make_queue(MailQueue), make_queue(SmsQueue)
    old_done = mails.create_job("q", "a", {})
    fresh_done = mails.create_job("q", "a", {})
    pending = mails.create_job("q", "a", {})
    other_scope = sms.create_job("q", "a", {})
    jobs = mails._db.tables.jobs
    engine = create_engine(url)
    long_ago = datetime.now(UTC) - timedelta(days=8)
    with engine.begin() as conn:
        for job_id, done_at in (
            (old_done.id, long_ago),
            (fresh_done.id, datetime.now(UTC)),
            (other_scope.id, long_ago),
        ):
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(state="done", done_at=done_at, scheduled_at=done_at)
            )
    resync(engine, mails._db.tables)
    engine.dispose()
    assert mails.cleanup_jobs() == 1  # default retention: 7 days
    assert mails.get_job(old_done.id) is None
    assert mails.get_job(fresh_done.id) is not None and mails.get_job(pending.id) is not None
    assert sms.get_job(other_scope.id) is not None
    assert mails.cleanup_jobs(older_than=0) == 1
    assert [j.id for j in mails.list_jobs()] == [pending.id]


def test_jobs_created_in_one_callers_transaction_cost_one_listener_pair_and_one_thread(
    make_queue: Callable, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    queue = make_queue(performer=recorder, poll_interval=600)
    queue.start()
    created: list[int] = []
    queue.subscribe(lambda e: created.append(e.job_id), kinds=["job_created"])
    followers: list[str] = []
    start = threading.Thread.start

    def counting(thread: threading.Thread) -> None:
        if "commit" in thread.name:
            followers.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting)
    engine = create_engine(url)
    with engine.connect() as conn:
        with conn.begin():
            for i in range(1000):
                queue.create_job(f"q{i % 10}", "a", {"i": i}, connection=conn)
            listening = len(list(conn.dispatch.commit)) + len(list(conn.dispatch.rollback))
        recorder.wait(lambda r: len(r.finished) == 1000, timeout=60)  # woken once, all ran
        assert len(followers) == 1
        for _ in range(3):  # more transactions on this connection: no more listeners
            with conn.begin():
                queue.create_job("q0", "a", {}, connection=conn)
        after = len(list(conn.dispatch.commit)) + len(list(conn.dispatch.rollback))
    engine.dispose()
    assert listening == after == 2
    wait_until(lambda: len(created) == 1003, 20, "every job announced")
