"""The `statement_timeout` option: a positive duration, 30 s by default."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from queuetopia_py import ConfigurationError, Queuetopia, defaults


def test_it_defaults_to_30_seconds(tmp_path: Path) -> None:
    queue = Queuetopia(repo=f"sqlite:///{tmp_path / 'q.db'}")
    assert queue.options.statement_timeout == defaults.STATEMENT_TIMEOUT == timedelta(seconds=30)


@pytest.mark.parametrize("given", [2, 2.0, timedelta(seconds=2)])
def test_it_takes_seconds_or_a_timedelta(tmp_path: Path, given: object) -> None:
    queue = Queuetopia(repo=f"sqlite:///{tmp_path / 'q.db'}", statement_timeout=given)
    assert queue.options.statement_timeout == timedelta(seconds=2)


@pytest.mark.parametrize("given", [0, -1, None, float("nan"), "30", timedelta(days=36_501)])
def test_anything_but_a_positive_duration_is_refused(tmp_path: Path, given: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^statement_timeout: "):
        Queuetopia(repo=f"sqlite:///{tmp_path / 'q.db'}", statement_timeout=given)
