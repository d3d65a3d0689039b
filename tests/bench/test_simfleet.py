"""Smoke test of bench/simfleet.py: 20 simulated devices against the real Mosquitto and
the real server process come online, their telemetry is stored, and one assignment is
downloaded by every device through the agent's OTA code (``edge_agent.ota.Download``)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.support.procs import ServerProc, wait_for
from tests.support.tinymodel import make_package

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.simfleet import FleetConfig, SimFleet  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

DEVICES = 20


def test_simulated_fleet_reports_and_downloads(tmp_path, mosquitto):
    from jetfleet.client import FleetClient

    info = make_package(tmp_path / "tiny.jfpkg", pad_bytes=300_000)  # ~6 blocks of 64 KiB
    server = ServerProc(tmp_path / "srv", mosquitto.url)
    try:
        server.wait_ready()
        FleetClient(server.url).upload_package(info.path)
        server.api("POST", "/api/v1/releases", {"name": "smoke-1", "package_sha256": info.sha256})

        async def scenario():
            fleet = SimFleet(
                FleetConfig(
                    broker_url=mosquitto.url,
                    devices=DEVICES,
                    rate_hz=4,
                    prefix="smoke",
                    slots_dir=tmp_path / "slots",
                )
            )
            try:
                await fleet.start()
                await fleet.run_telemetry(1.0)

                def online():
                    devs = server.api("GET", "/api/v1/devices?online=true")
                    return {d["id"] for d in devs} >= set(fleet.device_ids)

                await asyncio.to_thread(wait_for, "simulated devices online", online, 15)
                await asyncio.to_thread(
                    server.api,
                    "POST",
                    "/api/v1/assignments",
                    {"release": "smoke-1", "device_ids": fleet.device_ids},
                )
                records = await fleet.wait_downloads(info.sha256, 20)
                await fleet.wait_acked(5)
                return fleet.summary(), records
            finally:
                await fleet.stop()

        summary, records = asyncio.run(scenario())
        assert summary["sent"] == DEVICES * 4
        assert summary["unacked"] == 0
        assert sorted(records) == [f"smoke-{i:05d}" for i in range(DEVICES)]
        assert all(r.ok for r in records.values()), [r.error for r in records.values()]
        assert all(r.bytes_received >= info.length for r in records.values())

        def stored():
            return all(
                len(server.api("GET", f"/api/v1/telemetry?device_id=smoke-{i:05d}")) == 4
                for i in range(DEVICES)
            )

        wait_for("every telemetry sample stored", stored, 10)

        def reported_active():
            devices = {d["id"]: d for d in server.api("GET", "/api/v1/devices")}
            return all(devices[f"smoke-{i:05d}"]["active_sha256"] == info.sha256
                       for i in range(DEVICES))

        wait_for("every device reports the release active", reported_active, 10)
    finally:
        server.stop()
