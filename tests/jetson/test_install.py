"""install.sh, the systemd unit, and sd_notify over a real unix datagram socket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import jetson
from jetson.systemd import (
    notify,
    notify_ready,
    notify_stopping,
    notify_watchdog,
    watchdog_interval_s,
)

PACKAGE = Path(jetson.__file__).parent
INSTALL = PACKAGE / "install.sh"
UNIT = PACKAGE / "jetfleet-agent.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}}; comments and blanks skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None, f"line {number} is outside a section: {raw!r}"
        assert sep, f"line {number} is not key=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values is not None, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times"
    return values[0]


def test_install_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = INSTALL.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "--system-site-packages" in text
    assert os.access(INSTALL, os.X_OK)


@pytest.mark.skipif(
    Path("/etc/nv_tegra_release").exists(), reason="on a Jetson this would really install"
)
def test_install_script_refuses_a_host_that_is_not_a_root_jetson() -> None:
    result = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "run as root" in result.stderr or "not a Jetson" in result.stderr
    assert result.stdout == ""  # refused before doing anything


def test_unit_runs_the_agent_as_its_own_user(unit) -> None:
    assert one(unit, "Service", "ExecStart") == (
        "/opt/jetfleet/venv/bin/jetfleet agent run --config /etc/jetfleet/agent.yaml"
    )
    assert one(unit, "Service", "User") == "jetfleet"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert one(unit, "Service", "Type") in {"simple", "notify"}


def test_unit_restarts_with_a_limit(unit) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"
    assert float(one(unit, "Service", "RestartSec")) >= 1
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 1
    assert int(one(unit, "Unit", "StartLimitIntervalSec")) > 0


def test_unit_watchdog_only_with_notify(unit) -> None:
    if "WatchdogSec" in unit["Service"]:
        assert one(unit, "Service", "Type") == "notify"


def test_unit_is_hardened_but_keeps_gpu_access(unit) -> None:
    service = unit["Service"]
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ReadWritePaths") == "/var/lib/jetfleet"
    for key in ("PrivateDevices", "DevicePolicy", "PrivateUsers", "ProcSubset"):
        assert key not in service, f"{key}= would hide the GPU or /proc/stat from the agent"


def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing; `make test` installs systemd"
    # verify checks ExecStart exists; the venv is not installed here.
    text = UNIT.read_text().replace("/opt/jetfleet/venv/bin/jetfleet", "/bin/true")
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    verify = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert "Unknown" not in verify.stderr, verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=45", str(copy)],
        capture_output=True,
        text=True,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


def test_sd_notify_sends_states_to_the_socket(notify_socket) -> None:
    sock, env = notify_socket
    assert notify_ready(env)
    assert sock.recv(256) == b"READY=1"
    assert notify_watchdog(env)
    assert sock.recv(256) == b"WATCHDOG=1"
    assert notify_stopping(env)
    assert sock.recv(256) == b"STOPPING=1"
    assert notify("STATUS=serving model abc", env)
    assert sock.recv(256) == b"STATUS=serving model abc"


def test_sd_notify_abstract_socket() -> None:
    name = f"jetfleet-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify_ready({"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(256) == b"READY=1"


def test_sd_notify_is_a_noop_without_systemd(tmp_path: Path) -> None:
    assert notify_ready({}) is False
    assert notify_watchdog({"NOTIFY_SOCKET": ""}) is False
    # a socket that is gone: reported, never raised
    assert notify_ready({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")}) is False


def test_watchdog_interval() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert (
        watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    )
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
