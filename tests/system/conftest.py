"""Fixtures of the system tests: `cluster`, worker processes on a fresh test database
of each backend (see cluster.py), all killed when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import SCOPE, Cluster

from queuetopia_py import Queuetopia


@pytest.fixture
def cluster(url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Nodes of the `system-tests` scope on a fresh database of the current backend."""
    queue = Queuetopia(repo=url, scope=SCOPE)
    history = tmp_path / "history.jsonl"
    history.touch()
    made = Cluster(url=url, tmp_path=tmp_path, queue=queue, history=history)
    try:
        yield made
    finally:
        made.close()
