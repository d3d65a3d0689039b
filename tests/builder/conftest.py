from __future__ import annotations

from pathlib import Path

import pytest

from jetfleet.package import ModelPackage, read_package
from model_builder import build_digits_package


@pytest.fixture(scope="session")
def digits_package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    """The fast-path digits package, built once per session."""
    out = tmp_path_factory.mktemp("digits-pkg")
    info = build_digits_package(out, seed=0, epochs=8)
    return read_package(info.path, expected_sha256=info.sha256)


def no_package_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())
