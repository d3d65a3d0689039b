"""Fixtures of the agent suite: real Mosquitto (tests/conftest.py), tiny real packages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jetfleet.package import PackageInfo
from tests.agent.fleet import FakeServer
from tests.support.mosquitto import MosquittoBroker
from tests.support.tinymodel import make_package


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PackageInfo]:
    """v1, v2 (different weights), a padded multi-block one, and one failing golden."""
    root = tmp_path_factory.mktemp("packages")
    return {
        "v1": make_package(root / "v1.jfpkg", version="1", seed=1, pad_bytes=150_000),
        "v2": make_package(root / "v2.jfpkg", version="2", seed=2, pad_bytes=150_000),
        "big": make_package(root / "big.jfpkg", version="3", seed=3, pad_bytes=3_000_000),
        "bad_golden": make_package(root / "bad.jfpkg", version="4", seed=4, corrupt_golden=True),
    }


@pytest.fixture
def server(mosquitto: MosquittoBroker) -> Iterator[FakeServer]:
    fake = FakeServer(mosquitto.url).start()
    try:
        yield fake
    finally:
        fake.stop()


def package_bytes(info: PackageInfo) -> bytes:
    return Path(info.path).read_bytes()
