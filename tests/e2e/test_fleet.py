"""End-to-end: a real Mosquitto, the fleet server and three agents as real processes."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from tests.support.procs import AgentProc, ServerProc, wait_for
from tests.support.tinymodel import make_package, run_onnx

pytestmark = pytest.mark.slow


def upload(server: ServerProc, path) -> dict:
    from jetfleet.client import FleetClient

    return FleetClient(server.url).upload_package(path)


def infer(url: str, x: np.ndarray) -> np.ndarray:
    body = json.dumps({"inputs": {"input": x.tolist()}}).encode()
    req = urllib.request.Request(url + "/v1/infer", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        out = json.loads(resp.read())
    return np.asarray(out["outputs"]["logits"], dtype=np.float32)


def test_release_reaches_three_agents_and_they_serve_it(tmp_path, mosquitto):
    info = make_package(tmp_path / "tiny.jfpkg", pad_bytes=400_000)  # ~7 blocks of 64 KiB
    server = ServerProc(tmp_path / "srv", mosquitto.url)
    agents = [AgentProc(tmp_path / "agents", f"e2e-{i}", mosquitto.url) for i in range(3)]
    try:
        server.wait_ready()
        pkg = upload(server, info.path)
        assert pkg["sha256"] == info.sha256
        server.api("POST", "/api/v1/releases", {"name": "tiny-1", "package_sha256": info.sha256})

        names = [a.device_id for a in agents]

        def all_online():
            devs = {d["id"]: d for d in server.api("GET", "/api/v1/devices")}
            return all(devs.get(n, {}).get("online") for n in names)

        wait_for("agents online", all_online, 60)
        server.api("POST", "/api/v1/assignments", {"release": "tiny-1", "device_ids": names})

        def all_serving():
            devs = {d["id"]: d for d in server.api("GET", "/api/v1/devices")}
            return all(
                devs[n].get("active_sha256") == info.sha256 and devs[n].get("serving")
                for n in names
            )

        wait_for("all agents serving tiny-1", all_serving, 90)

        x = np.random.default_rng(7).random((2, 64), dtype=np.float32)
        from jetfleet.package import read_package

        expected = run_onnx(read_package(info.path).variant("onnxruntime"), x)
        for agent in agents:
            np.testing.assert_allclose(infer(agent.api_url(), x), expected, rtol=1e-5, atol=1e-5)
            assert agent.state()["active_sha256"] == info.sha256

        def telemetry_stored():
            return all(server.api("GET", f"/api/v1/telemetry?device_id={n}&limit=5") for n in names)

        wait_for("telemetry from every agent", telemetry_stored, 30)
        events = server.api("GET", "/api/v1/events?limit=500")
        for n in names:
            types = {e["type"] for e in events if e["device_id"] == n}
            assert {"ota.verified", "activation.trial"} <= types, (n, types)
    finally:
        for agent in agents:
            agent.stop()
        server.stop()
        for proc in (server, *agents):
            if proc.popen.returncode not in (0, -15):
                print(f"--- {proc.name} log ---\n{proc.output()[-4000:]}")
