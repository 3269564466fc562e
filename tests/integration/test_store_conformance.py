"""One set of claim and record scenarios, run on every database: each step's answer and
the queue's row afterwards must be the same on SQLite, PostgreSQL and MariaDB (and the
queues table exact after each scenario, as after every test)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from queuetopia_py import MoveTo, Queuetopia
from queuetopia_py._store.claims import ClaimStore
from queuetopia_py._store.locks import Busy, Claim, Interrupted, NotDue

Trace = list[tuple[Any, ...]]


class Scenario:
    """A queue and two nodes' stores, and the trace of what each step answered."""

    def __init__(self, queue: Queuetopia) -> None:
        self.queue = queue
        self.a = ClaimStore(queue._db, queue.scope, "node-a")
        self.b = ClaimStore(queue._db, queue.scope, "node-b")
        self.trace: Trace = []
        self.ids: dict[int, str] = {}

    def job(self, name: str, queue: str = "q", **options: Any) -> int:
        job = self.queue.create_job(queue, "a", {"name": name}, **options)
        self.ids[job.id] = name
        return job.id

    def name(self, job_id: int | None) -> str | None:
        return None if job_id is None else self.ids.get(job_id, f"#{job_id}")

    def answer(self, step: str, taken: object) -> object:
        """Note what a claim or pass answered."""
        if isinstance(taken, Claim):
            shown: tuple[Any, ...] = ("claim", self.name(taken.job.id), taken.job.attempts)
        elif isinstance(taken, NotDue):
            shown = ("not due", taken.wait is None)
        elif isinstance(taken, Interrupted):
            shown = ("interrupted", self.name(taken.job.id), str(taken.job.state))
        elif isinstance(taken, Busy):
            shown = ("busy",)
        else:
            shown = (None,)
        self.trace.append((step, *shown))
        return taken

    def row(self, step: str, queue: str = "q") -> None:
        """Note the queue's row: pending count, head, whether due, and the lock's job."""
        queues = self.queue._db.tables.queues
        with self.queue.engine.connect() as conn:
            now = conn.execute(sa.select(self.queue._db.now())).scalar_one()
            row = conn.execute(
                sa.select(queues).where(queues.c.scope == self.queue.scope, queues.c.queue == queue)
            ).first()
        if row is None:
            self.trace.append((step, "no row"))
            return
        due = None if row.head_due is None else row.head_due <= now
        lock = None if row.token is None else self.name(row.locked_job)
        self.trace.append((step, row.pending, self.name(row.head_id), due, lock))

    def expire(self, queue: str = "q") -> None:
        queues = self.queue._db.tables.queues
        with self.queue.engine.begin() as conn:
            conn.execute(
                queues.update()
                .where(queues.c.queue == queue)
                .values(locked_until=datetime.now(UTC) - timedelta(hours=1))
            )

    def claim(self, step: str, node: str = "a", queue: str = "q") -> Claim:
        taken = self.answer(step, (self.a if node == "a" else self.b).claim(queue))
        assert isinstance(taken, Claim), (step, taken)
        return taken


def claim_busy_pass_and_release(s: Scenario) -> None:
    s.job("one", max_backoff=0)
    s.job("two")
    first = s.claim("claim")
    s.row("claimed")
    s.answer("other node", s.b.claim("q"))
    done, following = s.a.records.record_success_and_claim(first, {"ok": 1})
    assert done is not None and done.result == {"ok": 1}
    s.answer("pass", following)
    assert isinstance(following, Claim) and following.token != first.token
    s.row("passed")
    assert s.a.records.record_success(following) is not None
    s.row("released")


def not_due_empty_and_suspended(s: Scenario) -> None:
    s.answer("empty", s.a.claim("q"))
    s.job("later", scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    s.answer("scheduled later", s.a.claim("q"))
    s.row("waiting")
    s.job("now", queue="r")
    s.queue.suspend("r")
    s.answer("suspended", s.a.claim("r"))
    s.queue.resume("r")
    s.answer("resumed", s.a.claim("r"))


def a_failure_backs_off_and_unblocks_nothing(s: Scenario) -> None:
    s.job("head")
    s.job("behind")
    claim = s.claim("claim")
    retry_at = claim.job.attempted_at + timedelta(minutes=10)  # type: ignore[operator]
    recorded = s.a.records.record_failure(claim, "boom", retry_at, keep_lock=False)
    assert recorded is not None
    s.trace.append(("failed", str(recorded.job.state), recorded.job.error))
    s.row("backing off")
    s.trace.append(("poll", tuple(s.a.poll(10).queues)))
    s.answer("claim again", s.a.claim("q"))


def _exhausted(s: Scenario, mode: str) -> None:
    on_failure = MoveTo("dead") if mode == "move_to" else mode
    s.job("last", max_attempts=1, on_failure=on_failure)
    s.job("next")
    claim = s.claim("claim")
    recorded = s.a.records.record_failure(claim, "boom", None, keep_lock=False)
    assert recorded is not None
    moved = recorded.moved_to
    if moved is not None:
        s.ids[moved.id] = "moved"
    s.trace.append(("exhausted", str(recorded.job.state), None if moved is None else moved.queue))
    s.row("after")
    s.row("dead letters", "dead")


def exhausted_giving_up(s: Scenario) -> None:
    _exhausted(s, "give_up")


def exhausted_blocking(s: Scenario) -> None:
    _exhausted(s, "block")


def exhausted_moving(s: Scenario) -> None:
    _exhausted(s, "move_to")


def an_interrupted_last_attempt_is_given_up_at_take_over(s: Scenario) -> None:
    s.job("last", max_attempts=1, timeout=1, max_backoff=0)
    s.job("next")
    lost = s.claim("claim")  # ... and node a dies
    s.expire()
    s.answer("take over", s.b.claim("q"))
    s.row("after")
    s.trace.append(("late record", s.a.records.record_success(lost) is not None))
    s.claim("next", node="b")


def a_taken_over_claim_records_nothing(s: Scenario) -> None:
    s.job("job", max_backoff=0)
    old = s.claim("claim")
    s.expire()
    new = s.claim("take over", node="b")
    s.trace.append(("old record", s.a.records.record_success(old) is not None))
    s.trace.append(("old renew", s.a.locks.renew(old)))
    s.a.locks.release(old)
    s.row("still b's")
    s.trace.append(("new record", s.b.records.record_success(new) is not None))
    s.row("after")


def a_claim_given_back_leaves_the_job_as_it_was(s: Scenario) -> None:
    s.job("job")
    claim = s.claim("claim")
    s.a.locks.give_back(claim)
    s.row("given back")
    s.claim("again", node="b")


def an_earlier_job_created_meanwhile_is_passed_the_lock(s: Scenario) -> None:
    s.job("first")
    s.job("second")
    claim = s.claim("claim")
    s.job("earlier", scheduled_at=datetime.now(UTC) - timedelta(hours=1))
    s.row("earlier is the head")
    s.answer("pass", s.a.records.record_success_and_claim(claim)[1])


def operators_keep_the_row_exact(s: Scenario) -> None:
    head = s.job("head", max_attempts=1)
    behind = s.job("behind")
    s.queue.cancel_job(behind)
    s.row("cancelled behind")
    s.queue.abort_job(head)
    s.row("aborted head")
    s.queue.retry_job(head)
    s.row("retried")
    s.queue.retry_job(behind)
    s.row("both back")


SCENARIOS: dict[Callable[[Scenario], None], Trace] = {
    claim_busy_pass_and_release: [
        ("claim", "claim", "one", 1),
        ("claimed", 2, "one", True, "one"),
        ("other node", "busy"),
        ("pass", "claim", "two", 1),
        ("passed", 1, "two", False, "two"),
        ("released", "no row"),
    ],
    not_due_empty_and_suspended: [
        ("empty", None),
        ("scheduled later", "not due", False),
        ("waiting", 1, "later", False, None),
        ("suspended", None),
        ("resumed", "claim", "now", 1),
    ],
    a_failure_backs_off_and_unblocks_nothing: [
        ("claim", "claim", "head", 1),
        ("failed", "retrying", "boom"),
        ("backing off", 2, "head", False, None),
        ("poll", ()),
        ("claim again", "not due", False),
    ],
    exhausted_giving_up: [
        ("claim", "claim", "last", 1),
        ("exhausted", "given_up", None),
        ("after", 1, "next", True, None),
        ("dead letters", "no row"),
    ],
    exhausted_blocking: [
        ("claim", "claim", "last", 1),
        ("exhausted", "blocked", None),
        ("after", 2, "last", None, None),
        ("dead letters", "no row"),
    ],
    exhausted_moving: [
        ("claim", "claim", "last", 1),
        ("exhausted", "dead_lettered", "dead"),
        ("after", 1, "next", True, None),
        ("dead letters", 1, "moved", True, None),
    ],
    an_interrupted_last_attempt_is_given_up_at_take_over: [
        ("claim", "claim", "last", 1),
        ("take over", "interrupted", "last", "given_up"),
        ("after", 1, "next", True, None),
        ("late record", True),  # the work did happen: the job is done
        ("next", "claim", "next", 1),
    ],
    a_taken_over_claim_records_nothing: [
        ("claim", "claim", "job", 1),
        ("take over", "claim", "job", 2),
        ("old record", False),
        ("old renew", False),
        ("still b's", 1, "job", True, "job"),
        ("new record", True),
        ("after", "no row"),
    ],
    a_claim_given_back_leaves_the_job_as_it_was: [
        ("claim", "claim", "job", 1),
        ("given back", 1, "job", True, None),
        ("again", "claim", "job", 1),
    ],
    an_earlier_job_created_meanwhile_is_passed_the_lock: [
        ("claim", "claim", "first", 1),
        ("earlier is the head", 3, "earlier", True, "first"),
        ("pass", "claim", "earlier", 1),
    ],
    operators_keep_the_row_exact: [
        ("cancelled behind", 1, "head", True, None),
        ("aborted head", "no row"),
        ("retried", 1, "head", True, None),
        ("both back", 2, "head", True, None),
    ],
}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_every_database_answers_the_scenario_alike(
    make_queue: Callable[..., Queuetopia], scenario: Callable[[Scenario], None]
) -> None:
    s = Scenario(make_queue(scope="conformance"))
    scenario(s)
    assert s.trace == SCENARIOS[scenario]
