"""Recording a success and claiming the queue's next job in one transaction: the lock
passes from job to job, and every case where it must not pass releases it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from recording import wait_until

from queuetopia_py import DatabaseUnavailableError, Job, Performer, Queuetopia
from queuetopia_py._backoff import default_backoff, lock_lifetime
from queuetopia_py._job import validate_new_job
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.database import Database
from queuetopia_py._store.locks import Claim, Interrupted, NotDue


def _claims(queue: Queuetopia, node: str = "node-a") -> ClaimStore:
    return ClaimStore(queue._db, queue.scope, node)


def _claim_q(queue: Queuetopia) -> tuple[ClaimStore, Claim]:
    """Node A's claim store, and its claim of queue "q"."""
    claims = _claims(queue)
    claim = claims.claim("q")
    assert isinstance(claim, Claim)
    return claims, claim


def _lock_rows(queue: Queuetopia) -> list[dict[str, object]]:
    return _claims(queue).locks.locks_held()


def test_the_lock_passes_to_the_next_job_which_is_claimed(make_queue: Callable) -> None:
    queue = make_queue()
    first = queue.create_job("q", "a", {"n": 1}, timeout=30)
    second = queue.create_job("q", "a", {"n": 2}, timeout=30)
    claims, claim = _claim_q(queue)
    assert claim.job.id == first.id

    done, following = claims.records.record_success_and_claim(claim, {"ok": 1})

    assert done is not None and done.id == first.id and done.result == {"ok": 1}
    assert isinstance(following, Claim) and following.job.id == second.id
    assert following.job.attempts == 1 and following.job.attempted_by == "node-a"
    assert following.token != claim.token  # every claim its own token
    stored = queue.get_job(first.id)
    assert stored is not None and stored.done and stored.result == {"ok": 1}
    assert queue.get_job(second.id).attempts == 1  # type: ignore[union-attr]
    [lock] = _lock_rows(queue)
    assert lock["job_id"] == second.id and lock["token"] == following.token
    # The queue stays exclusive while the lock passes.
    assert not isinstance(_claims(queue, "node-b").claim("q"), Claim)

    done, following = claims.records.record_success_and_claim(following)
    assert done is not None and done.id == second.id
    assert following is None  # the queue is empty: the lock is released
    assert _lock_rows(queue) == []


def test_a_next_job_scheduled_later_is_not_claimed(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {})
    later = queue.create_job("q", "a", {}, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    claims, claim = _claim_q(queue)

    done, following = claims.records.record_success_and_claim(claim)

    assert done is not None
    # PostgreSQL's one-statement record says nothing about a head it does not claim.
    if not isinstance(following, NotDue):
        assert following is None and queue._db.dialect == "postgresql"
    else:
        assert following.wait is not None
        assert timedelta(minutes=59) < following.wait <= timedelta(hours=1)
    assert queue.get_job(later.id).attempts == 0  # type: ignore[union-attr]
    assert _lock_rows(queue) == []


def test_a_suspended_queue_passes_nothing(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {})
    nxt = queue.create_job("q", "a", {})
    claims, claim = _claim_q(queue)
    queue.suspend("q")

    done, following = claims.records.record_success_and_claim(claim)

    assert done is not None and following is None
    assert queue.get_job(nxt.id).attempts == 0  # type: ignore[union-attr]
    assert _lock_rows(queue) == []


def test_a_lost_claim_records_nothing_and_claims_nothing(make_queue: Callable) -> None:
    queue = make_queue()
    job = queue.create_job("q", "a", {})
    nxt = queue.create_job("q", "a", {})
    claims, claim = _claim_q(queue)
    # Another node took the job over meanwhile: its claim is the job's now.
    jobs = queue._db.tables.jobs
    with queue.engine.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.id == job.id).values(claim_token="other"))

    done, following = claims.records.record_success_and_claim(claim)

    assert done is None and following is None
    assert not queue.get_job(job.id).done  # type: ignore[union-attr]
    assert queue.get_job(nxt.id).attempts == 0  # type: ignore[union-attr]


def test_an_interrupted_final_attempt_of_the_next_job_meets_its_failure_mode(
    make_queue: Callable,
) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {})
    nxt = queue.create_job("q", "a", {}, max_attempts=1)
    # The next job's only attempt was started by a node that died before recording it.
    jobs = queue._db.tables.jobs
    with queue.engine.begin() as conn:
        conn.execute(
            jobs.update()
            .where(jobs.c.id == nxt.id)
            .values(attempts=1, attempted_by="dead-node", attempted_at=datetime.now(UTC))
        )
    claims, claim = _claim_q(queue)

    done, following = claims.records.record_success_and_claim(claim)

    assert done is not None
    if following is None:
        # PostgreSQL's one-statement record leaves such a head to the ordinary claim.
        assert queue._db.dialect == "postgresql" and _lock_rows(queue) == []
        following = claims.claim("q")
    assert isinstance(following, Interrupted) and following.job.id == nxt.id
    assert queue.get_job(nxt.id).state == "given_up"  # type: ignore[union-attr]
    assert _lock_rows(queue) == []


def test_a_passed_claim_counts_its_attempt_like_an_ordinary_claim(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {})
    nxt = queue.create_job("q", "a", {}, timeout=7, max_backoff=timedelta(hours=1))
    jobs = queue._db.tables.jobs
    with queue.engine.begin() as conn:  # three attempts made in earlier rounds
        conn.execute(jobs.update().where(jobs.c.id == nxt.id).values(attempts=3))
    claims, claim = _claim_q(queue)

    _, following = claims.records.record_success_and_claim(claim)

    assert isinstance(following, Claim)
    job = following.job
    stored = queue.get_job(nxt.id)
    assert stored is not None and stored.attempts == job.attempts == 4
    assert job.attempted_at is not None and job.next_attempt_at is not None
    assert stored.attempted_at == job.attempted_at
    # Should this node die, the job runs again after the default backoff of its round.
    assert job.next_attempt_at - job.attempted_at == default_backoff(3, timedelta(hours=1))
    assert stored.next_attempt_at == job.next_attempt_at
    assert following.locked_until - job.attempted_at == lock_lifetime(timedelta(seconds=7))
    [lock] = _lock_rows(queue)
    assert lock["locked_until"] == following.locked_until


def test_a_claim_given_back_leaves_the_job_as_it_was(make_queue: Callable) -> None:
    queue = make_queue()
    queue.create_job("q", "a", {})
    nxt = queue.create_job("q", "a", {})
    claims, claim = _claim_q(queue)
    _, following = claims.records.record_success_and_claim(claim)
    assert isinstance(following, Claim)

    claims.locks.give_back(following)

    assert queue.get_job(nxt.id) == nxt
    assert _lock_rows(queue) == []
    again = _claims(queue, "node-b").claim("q")
    assert isinstance(again, Claim) and again.job.id == nxt.id and again.job.attempts == 1


def _lost_connection() -> DatabaseUnavailableError:
    """What a connection lost just after the server committed looks like to us."""
    error = DatabaseUnavailableError("database unreachable: connection lost after commit")
    error.__cause__ = sa.exc.OperationalError(
        "COMMIT", {}, Exception("server closed the connection"), connection_invalidated=True
    )
    return error


def test_a_success_whose_acknowledgement_was_lost_is_recognised_when_retried(
    make_queue: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops after the statement recording job 1's success (and passing
    the lock to job 2) committed: the retry must recognise its own commit, so job 1's
    success is reported once and job 2 runs once, charged one attempt."""
    performed: list[int] = []
    hooks: list[int] = []
    ran_first = threading.Event()
    lose = threading.Event()

    class Performs(Performer):
        def perform(self, job: Job) -> object:
            performed.append(job.id)
            if job.id == first.id:
                ran_first.set()
            return {"n": job.id}

        def handle_succeeded_job(self, job: Job) -> None:
            hooks.append(job.id)

    def losing(original):  # type: ignore[no-untyped-def]
        @contextlib.contextmanager
        def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            with original(self, *args, **kwargs) as inner:
                yield inner
            runner = threading.current_thread().name == "queuetopia-runner"
            if runner and not args and ran_first.is_set() and not lose.is_set():
                lose.set()  # once: the commit happened, its answer is lost
                raise _lost_connection()

        return wrapper

    monkeypatch.setattr(Database, "transaction", losing(Database.transaction))
    queue = make_queue(performer=Performs, poll_interval=30)
    first = queue.create_job("q", "a", {}, timeout=2, max_attempts=1)
    second = queue.create_job("q", "a", {}, timeout=2, max_attempts=1)
    succeeded: list[int] = []
    queue.subscribe(lambda e: succeeded.append(e.job_id), kinds=["attempt_succeeded"])
    queue.start()
    wait_until(
        lambda: not queue.get_job(second.id).pending,  # type: ignore[union-attr]
        20,
        "the second job recorded",
    )
    assert lose.is_set()
    assert queue.get_job(first.id).result == {"n": first.id}  # type: ignore[union-attr]
    stored = queue.get_job(second.id)
    assert stored is not None and stored.done and stored.attempts == 1
    assert performed == [first.id, second.id]
    assert succeeded == hooks == [first.id, second.id]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_record_waiting_on_a_job_being_created_passes_the_lock_to_it(
    make_queue: Callable, url: str
) -> None:
    """A record whose locked read waits for a job being created in the queue (its creator
    holds the queue's row) sees that job once it has the lock: the lock passes to it, and
    it stays the head, ahead of jobs created after it."""
    queue = make_queue()
    first = queue.create_job("q", "a", {}, timeout=30)
    claims, claim = _claim_q(queue)
    engine = sa.create_engine(url)
    outcome: list[object] = []
    try:
        with engine.begin() as creator:  # creates the second job, holding the queue's row
            (second,) = queue._jobs.create(
                creator,
                [
                    validate_new_job(
                        "q", "a", {}, timeout=30, max_backoff=60, max_attempts=3, scheduled_at=None
                    )
                ],
            ).jobs
            recorder = threading.Thread(
                target=lambda: outcome.append(claims.records.record_success_and_claim(claim))
            )
            recorder.start()
            with engine.connect() as watcher:  # until the record waits for the row's lock
                wait_until(
                    lambda: (
                        watcher.execute(
                            sa.text(
                                "SELECT count(*) FROM pg_stat_activity"
                                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                            )
                        ).scalar_one()
                        > 0
                    ),
                    what="the record to wait for the queue's row",
                )
        recorder.join(30)
    finally:
        engine.dispose()
    [(done, following)] = outcome  # type: ignore[misc]
    assert done is not None and done.id == first.id
    assert isinstance(following, Claim) and following.job.id == second.id
    third = queue.create_job("q", "a", {})
    assert queue.status().queues[0].head.id == second.id  # type: ignore[union-attr]
    assert third.id > second.id


def test_successes_of_several_queues_are_recorded_in_one_transaction(
    make_queue: Callable,
) -> None:
    from queuetopia_py._store.records import Success

    queue = make_queue()
    firsts = {q: queue.create_job(q, "a", {"n": 1}) for q in ("q3", "q1", "q2")}
    seconds = {q: queue.create_job(q, "a", {"n": 2}) for q in ("q3", "q1", "q2")}
    claims = _claims(queue)
    taken = {q: claims.claim(q) for q in ("q3", "q1", "q2")}
    assert all(isinstance(claim, Claim) for claim in taken.values())
    # q2's claim is lost meanwhile: its job was claimed again under another token.
    jobs = queue._db.tables.jobs
    with queue.engine.begin() as conn:
        conn.execute(
            jobs.update().where(jobs.c.id == firsts["q2"].id).values(claim_token="someone-else")
        )
    commits: list[object] = []

    def committed(conn: object) -> None:
        commits.append(conn)

    sa.event.listen(queue.engine, "commit", committed)
    try:
        outcomes = claims.records.record_successes(
            [
                Success(taken["q3"], {"q": 3}, claim_next=True),  # type: ignore[arg-type]
                Success(taken["q1"], {"q": 1}, claim_next=False),  # type: ignore[arg-type]
                Success(taken["q2"], {"q": 2}, claim_next=True),  # type: ignore[arg-type]
            ]
        )
    finally:
        sa.event.remove(queue.engine, "commit", committed)
    assert len(commits) == 1
    (done3, next3), (done1, next1), (done2, next2) = outcomes
    assert done3 is not None and done3.result == {"q": 3}
    assert isinstance(next3, Claim) and next3.job.id == seconds["q3"].id
    assert done1 is not None and next1 is None  # recorded alone: q1's lock released
    assert (done2, next2) == (None, None)  # the lost claim records nothing
    assert queue.get_job(firsts["q3"].id).done and queue.get_job(firsts["q1"].id).done
    assert not queue.get_job(firsts["q2"].id).done
    held = {lock["queue"]: lock["job_id"] for lock in _lock_rows(queue)}
    assert held["q3"] == seconds["q3"].id and "q1" not in held


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_a_success_whose_queue_is_busy_does_not_hold_up_the_others(
    make_queue: Callable,
) -> None:
    from queuetopia_py._store.records import Success

    queue = make_queue()
    first = queue.create_job("q1", "a", {})
    second = queue.create_job("q2", "a", {})
    claims = _claims(queue)
    claim1, claim2 = claims.claim("q1"), claims.claim("q2")
    assert isinstance(claim1, Claim) and isinstance(claim2, Claim)
    queues = queue._db.tables.queues
    recorded: list[object] = []
    with queue.engine.connect() as holder, holder.begin():
        # Another transaction holds q2's row (an application creating jobs, say).
        q2 = sa.and_(queues.c.scope == queue.scope, queues.c.queue == "q2")
        holder.execute(sa.select(queues.c.queue).where(q2).with_for_update())
        recording = threading.Thread(
            target=lambda: recorded.extend(
                claims.records.record_successes(
                    [Success(claim2, None, claim_next=True), Success(claim1, None, True)]
                )
            )
        )
        recording.start()
        # q1's success is committed while q2's row is held: it did not wait for it, and
        # its transaction held no row while waiting for another.
        wait_until(lambda: queue.get_job(first.id).done, what="q1 recorded")
        assert not queue.get_job(second.id).done and recording.is_alive()
    recording.join(30)
    assert queue.get_job(second.id).done
    assert [done.id for done, _ in recorded] == [second.id, first.id]  # type: ignore[attr-defined]


def test_claims_of_several_queues_are_made_in_one_transaction(make_queue: Callable) -> None:
    from queuetopia_py._store.claims import ClaimRequest

    queue = make_queue()
    heads = {q: queue.create_job(q, "a", {"n": 1}) for q in ("q3", "q1", "q2", "q4")}
    queue.create_job("q4", "a", {"n": 2})
    later = datetime.now(UTC) + timedelta(hours=1)
    queue.create_job("q5", "a", {}, scheduled_at=later)
    queue.suspend("q2")
    claims = _claims(queue)
    commits: list[object] = []

    def committed(conn: object) -> None:
        commits.append(conn)

    sa.event.listen(queue.engine, "commit", committed)
    try:
        taken = claims.claim_all([ClaimRequest(q) for q in ("q3", "q1", "q2", "q4", "q5", "empty")])
    finally:
        sa.event.remove(queue.engine, "commit", committed)
    assert len(commits) == 1
    q3, q1, q2, q4, q5, empty = taken
    assert isinstance(q3, Claim) and q3.job.id == heads["q3"].id and q3.job.attempts == 1
    assert isinstance(q1, Claim) and q1.job.id == heads["q1"].id
    assert isinstance(q4, Claim) and q4.job.id == heads["q4"].id
    assert q2 is None and empty is None  # suspended; no such queue
    assert isinstance(q5, NotDue)
    held = {lock["queue"]: lock["job_id"] for lock in _lock_rows(queue)}
    assert held == {"q1": heads["q1"].id, "q3": heads["q3"].id, "q4": heads["q4"].id}
    # Each claim is the queue's own: its next job is passed the lock as it is recorded.
    done, following = claims.records.record_success_and_claim(q4)
    assert done is not None and isinstance(following, Claim) and following.job.params == {"n": 2}


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_a_claim_whose_queue_is_busy_does_not_hold_up_the_others(make_queue: Callable) -> None:
    from queuetopia_py._store.claims import ClaimRequest

    queue = make_queue()
    first = queue.create_job("q1", "a", {})
    second = queue.create_job("q2", "a", {})
    claims = _claims(queue)
    queues = queue._db.tables.queues
    taken: list[object] = []
    with queue.engine.connect() as holder, holder.begin():
        # Another transaction holds q2's row (an application creating jobs, say).
        q2 = sa.and_(queues.c.scope == queue.scope, queues.c.queue == "q2")
        holder.execute(sa.select(queues.c.queue).where(q2).with_for_update())
        claiming = threading.Thread(
            target=lambda: taken.extend(claims.claim_all([ClaimRequest("q2"), ClaimRequest("q1")]))
        )
        claiming.start()
        # q1 is claimed and committed while q2's row is held: its claim did not wait
        # for it, and its transaction held no row while waiting for another.
        wait_until(
            lambda: any(lock["queue"] == "q1" for lock in _lock_rows(queue)), what="q1 claimed"
        )
        assert claiming.is_alive()
    claiming.join(30)
    claimed2, claimed1 = taken
    assert isinstance(claimed1, Claim) and claimed1.job.id == first.id
    assert isinstance(claimed2, Claim) and claimed2.job.id == second.id


def test_a_claim_whose_head_met_its_failure_mode_is_made_alone(make_queue: Callable) -> None:
    """The head's final attempt never ended (its node died): its failure mode may
    create a job in another queue, so its claim is a transaction of its own, not one
    that holds other queues' rows meanwhile."""
    from queuetopia_py._store.claims import ClaimRequest

    queue = make_queue()
    interrupted = queue.create_job("q2", "a", {}, max_attempts=1)
    other = queue.create_job("q1", "a", {})
    claims = _claims(queue)
    lost = claims.claim("q2")
    assert isinstance(lost, Claim)
    jobs, queues = queue._db.tables.jobs, queue._db.tables.queues
    with queue.engine.begin() as conn:  # its node died: the lock expired
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(queues.update().where(queues.c.queue == "q2").values(locked_until=past))
        conn.execute(jobs.update().where(jobs.c.id == interrupted.id).values(next_attempt_at=past))
    commits: list[object] = []

    def committed(conn: object) -> None:
        commits.append(conn)

    sa.event.listen(queue.engine, "commit", committed)
    try:
        claimed1, claimed2 = claims.claim_all([ClaimRequest("q1"), ClaimRequest("q2")])
    finally:
        sa.event.remove(queue.engine, "commit", committed)
    assert len(commits) == 2
    assert isinstance(claimed1, Claim) and claimed1.job.id == other.id
    assert isinstance(claimed2, Interrupted) and claimed2.job.id == interrupted.id
