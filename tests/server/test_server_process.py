"""The embedded broker, ``run_server`` as a real process, and settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fleet_server import BrokerError, EmbeddedBroker, Settings, create_app, get_settings
from jetfleet.mqtt import BrokerAddress, MqttClient
from tests.server.conftest import SimDevice, make_settings, wait_for
from tests.support.mosquitto import MosquittoBroker, free_port, wait_port


def test_embedded_broker_ingests_a_device_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = make_settings(tmp_path, broker_url=None, embedded_broker_port=port)
    with (
        caplog.at_level("WARNING", logger="fleet_server.broker"),
        TestClient(create_app(settings)) as http,
    ):
        assert "without TLS or authentication" in caplog.text
        wait_for(lambda: http.get("/healthz").status_code == 200, what="healthy server")
        cam = SimDevice(
            "cam-1", BrokerAddress("127.0.0.1", port, protocol="3.1.1"), MqttClient
        ).start()
        try:
            cam.state(active_release="r1")
            device = wait_for(
                lambda: (r := http.get("/api/v1/devices/cam-1")).status_code == 200 and r.json(),
                what="device ingested through the embedded broker",
            )
            assert (device["online"], device["active_release"]) == (True, "r1")
        finally:
            cam.stop()


def test_embedded_broker_on_a_taken_port_fails_clearly(mosquitto: MosquittoBroker) -> None:
    broker = EmbeddedBroker("127.0.0.1", mosquitto.port)
    with pytest.raises(BrokerError, match=f"cannot listen on 127.0.0.1:{mosquitto.port}"):
        broker.start()


def test_run_server_stops_cleanly_on_sigterm(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    port = free_port()
    env = {
        **os.environ,
        "JETFLEET_DATA_DIR": str(tmp_path / "server"),
        "JETFLEET_BROKER_URL": mosquitto.url,
        "JETFLEET_HTTP_PORT": str(port),
    }
    code = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from fleet_server import get_settings, run_server; run_server(get_settings())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        wait_port("127.0.0.1", port, timeout=20)
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
            what="healthy server process",
        )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "gateway stopped" in stderr
    assert "fleet server stopped" in stderr
    assert (tmp_path / "server" / "fleet.db").is_file()


def test_settings_from_environment_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JETFLEET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JETFLEET_HTTP_PORT", "9000")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings is get_settings()
    finally:
        get_settings.cache_clear()
    assert settings.http_port == 9000
    assert settings.db_url == f"sqlite:///{tmp_path / 'fleet.db'}"
    assert settings.broker_url is None
    assert (settings.embedded_broker_host, settings.embedded_broker_port) == ("127.0.0.1", 1883)
    assert settings.block_size == 64 * 1024
    explicit = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://u:p@db/fleet")
    assert explicit.db_url == "postgresql+psycopg://u:p@db/fleet"
    with pytest.raises(ValueError, match="block_size"):
        Settings(block_size=0)


def test_server_package_imports_neither_torch_nor_the_agent() -> None:
    code = (
        "import sys, fleet_server, fleet_server.app;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'edge_agent'));"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert out.stdout.strip() == ""
