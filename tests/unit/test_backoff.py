from datetime import UTC, datetime, timedelta

import pytest
from factories import make_job
from freezegun import freeze_time

from queuetopia_py._backoff import default_backoff, is_due, lock_lifetime, next_attempt_at
from queuetopia_py._performer import Performer

DAY = timedelta(hours=24)


@pytest.mark.parametrize(
    ("attempts_before", "seconds"), [(0, 2), (1, 3), (2, 5), (3, 9), (4, 17), (10, 1025)]
)
def test_default_backoff_follows_queuetopias_formula(attempts_before: int, seconds: int) -> None:
    assert default_backoff(attempts_before, DAY) == timedelta(seconds=seconds)


def test_default_backoff_is_capped_by_max_backoff() -> None:
    assert default_backoff(20, timedelta(minutes=5)) == timedelta(minutes=5)
    assert default_backoff(10_000, DAY) == DAY


def test_zero_max_backoff_retries_at_once() -> None:
    assert default_backoff(3, timedelta(0)) == timedelta(0)


def test_lock_lives_one_second_longer_than_the_timeout_up_to_the_lease() -> None:
    assert lock_lifetime(timedelta(seconds=30)) == timedelta(seconds=31)
    assert lock_lifetime(timedelta(seconds=60)) == timedelta(seconds=60)  # the lease


def test_failed_job_is_retried_after_its_backoff_from_the_attempt_start() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_attempt_at(at, 1, 20, timedelta(seconds=2)) == at + timedelta(seconds=2)


def test_job_that_used_its_last_attempt_is_given_up() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_attempt_at(at, 20, 20, timedelta(seconds=2)) is None


def test_due_ness_is_judged_against_the_given_clock() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert is_due(now, now)
    assert is_due(now - timedelta(microseconds=1), now)
    assert not is_due(now + timedelta(microseconds=1), now)
    assert not is_due(None, now)


def test_performer_backoff_counts_attempts_before_the_failed_one() -> None:
    # job.attempts includes the attempt that just failed
    assert Performer().backoff(make_job(attempts=1)) == timedelta(seconds=2)
    assert Performer().backoff(make_job(attempts=4)) == timedelta(seconds=9)


@freeze_time("2026-03-01 10:00:00")
def test_a_retry_scheduled_from_now_is_not_due_until_the_clock_reaches_it() -> None:
    now = datetime.now(UTC)
    retry_at = next_attempt_at(now, 1, 20, default_backoff(0, DAY))
    assert retry_at is not None
    with freeze_time("2026-03-01 10:00:01"):
        assert not is_due(retry_at, datetime.now(UTC))
    with freeze_time("2026-03-01 10:00:02"):
        assert is_due(retry_at, datetime.now(UTC))
