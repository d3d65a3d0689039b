"""The demo a newcomer runs: embedded amqtt broker, server and agents as real processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_once_with_embedded_broker(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jetfleet",
            "demo",
            "--agents",
            "2",
            "--once",
            "--workdir",
            str(tmp_path / "demo"),
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "ALL SERVING" in out
    assert "demo: OK" in out
