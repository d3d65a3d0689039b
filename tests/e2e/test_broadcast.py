"""OTA fan-out end to end: five real agents download one package; with the broadcast on,
the server sends it about once (plus a little unicast repair) instead of five times."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from jetfleet.client import FleetClient
from tests.support.mosquitto import MosquittoBroker
from tests.support.procs import AgentProc, ServerProc, wait_for
from tests.support.tinymodel import make_package

pytestmark = pytest.mark.slow


def egress(server: ServerProc) -> dict[str, float]:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.findall(
        r'^jetfleet_server_block_egress_bytes_total{mode="(\w+)"} (\S+)$', text, re.MULTILINE
    )
    return {mode: float(value) for mode, value in found}


def test_five_agents_get_one_broadcast_and_little_repair(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    info = make_package(tmp_path / "big.jfpkg", pad_bytes=1_500_000)  # ~24 blocks of 64 KiB
    server = ServerProc(
        tmp_path / "srv", mosquitto.url, extra_env={"JETFLEET_OTA_BROADCAST": "true"}
    )
    agents = [AgentProc(tmp_path / "agents", f"bc-{i}", mosquitto.url) for i in range(5)]
    names = [a.device_id for a in agents]
    try:
        server.wait_ready()
        FleetClient(server.url).upload_package(info.path)
        server.api("POST", "/api/v1/releases", {"name": "big-1", "package_sha256": info.sha256})

        def devices() -> dict[str, dict[str, object]]:
            return {d["id"]: d for d in server.api("GET", "/api/v1/devices")}

        wait_for("agents online", lambda: all(devices().get(n, {}).get("online") for n in names))
        server.api("POST", "/api/v1/assignments", {"release": "big-1", "device_ids": names})
        wait_for(
            "every agent on big-1",
            lambda: all(devices()[n].get("active_sha256") == info.sha256 for n in names),
            90,
        )
        sent = egress(server)
    finally:
        for agent in agents:
            agent.stop()
        server.stop()
    size = info.path.stat().st_size
    print(f"package {size} B, egress {sent}")
    assert size <= sent["broadcast"] < 1.1 * size  # one copy (plus frame headers)
    assert sent.get("unicast", 0.0) < 0.5 * size  # repair only, not 4 more copies
