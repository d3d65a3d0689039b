"""Shared fixtures. Only stdlib + pytest here: the agent-side suite runs in a venv
with just ``.[agent,test]`` on JetPack's Python 3.10."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import MosquittoBroker, find_mosquitto

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A real Mosquitto 2 on a free loopback port (tcp_nodelay, raised queue limits)."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run `make test`, which installs it")
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
