"""Signed device commands (``POST /api/v1/devices/{id}/commands`` → ``d/{id}/cmd``)."""

from __future__ import annotations

import json
import queue
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet_server.keys import DIRECTOR_PUB, init_keys
from jetfleet import topics
from jetfleet.messages import Command, decode
from jetfleet.mqtt import Inbound
from tests.server.conftest import RunningServer, SimDevice, wait_for
from tests.support.mosquitto import MosquittoBroker
from tests.support.procs import AgentProc, ServerProc
from tests.support.procs import wait_for as wait_until
from tests.support.tinymodel import make_package


def commands_received(sim: SimDevice, count: int) -> list[tuple[Command, bytes]]:
    got: list[tuple[Command, bytes]] = []

    def enough() -> bool:
        while True:
            try:
                item = sim.client.inbox.get_nowait()
            except queue.Empty:
                return len(got) >= count
            if isinstance(item, Inbound) and item.topic == topics.cmd(sim.id):
                got.append((decode("cmd", item.payload, Command), item.payload))

    wait_for(enough, what=f"{count} command(s) on {sim.id}")
    return got


def cmd_device(devices: Callable[..., SimDevice], device_id: str) -> SimDevice:
    sim = devices(device_id, start=False)
    sim.client.subscribe(topics.cmd(device_id))
    return sim.start()


def test_commands_arrive_with_increasing_sequences(
    server: RunningServer, devices: Callable[..., SimDevice]
) -> None:
    http = server.http
    assert http.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    sim = cmd_device(devices, "cam-1")
    sent = []
    for name in ("restart-runtime", "resync", "rollback"):
        response = http.post("/api/v1/devices/cam-1/commands", json={"command": name})
        assert response.status_code == 201, response.text
        sent.append(response.json())
    assert [(c["command"], c["sequence"], c["keyid"]) for c in sent] == [
        ("restart-runtime", 1, None),
        ("resync", 2, None),
        ("rollback", 3, None),
    ]
    got = commands_received(sim, 3)
    assert [(c.command, c.sequence, c.signature) for c, _ in got] == [
        ("restart-runtime", 1, None),
        ("resync", 2, None),
        ("rollback", 3, None),
    ]
    history = http.get("/api/v1/devices/cam-1/commands").json()
    assert [c["sequence"] for c in history] == [3, 2, 1]


def test_bad_commands_are_refused(server: RunningServer) -> None:
    http = server.http
    assert http.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    missing = http.post("/api/v1/devices/nope/commands", json={"command": "resync"})
    assert missing.status_code == 404
    assert "nope" in missing.json()["detail"]
    bad = http.post("/api/v1/devices/cam-1/commands", json={"command": "reboot"})
    assert bad.status_code == 422
    assert "command" in bad.json()["detail"]
    huge = {"command": "resync", "args": {"x": "y" * 5000}}
    assert http.post("/api/v1/devices/cam-1/commands", json=huge).status_code == 422
    assert http.get("/api/v1/devices/cam-1/commands").json() == []


def test_commands_carry_a_valid_director_signature_when_trust_is_on(
    tmp_path: Path,
    server_factory: Callable[..., RunningServer],
    devices: Callable[..., SimDevice],
) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    server = server_factory(keys_dir=keys)
    public = serialization.load_pem_public_key((keys / DIRECTOR_PUB).read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    assert server.http.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    sim = cmd_device(devices, "cam-1")
    for name in ("restart-runtime", "resync"):
        response = server.http.post("/api/v1/devices/cam-1/commands", json={"command": name})
        assert response.status_code == 201
        assert response.json()["keyid"]
    for (command, raw), sequence in zip(commands_received(sim, 2), (1, 2), strict=True):
        assert command.sequence == sequence
        assert command.signature
        assert command.keyid
        payload = {k: v for k, v in json.loads(raw).items() if k not in ("signature", "keyid")}
        assert payload["sequence"] == sequence
        public.verify(bytes.fromhex(command.signature), command.signed_payload())
        tampered = command.model_copy(update={"sequence": sequence + 10})
        with pytest.raises(InvalidSignature):
            public.verify(bytes.fromhex(command.signature), tampered.signed_payload())


def _infer(url: str) -> list[list[float]]:
    x = np.random.default_rng(3).random((1, 64), dtype=np.float32)
    body = json.dumps({"inputs": {"input": x.tolist()}}).encode()
    req = urllib.request.Request(url + "/v1/infer", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        outputs: list[list[float]] = json.loads(resp.read())["outputs"]["logits"]
    return outputs


@pytest.mark.slow
def test_restart_runtime_reloads_a_real_agent_which_keeps_serving(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    from jetfleet.client import FleetClient

    info = make_package(tmp_path / "tiny.jfpkg")
    server = ServerProc(tmp_path / "srv", mosquitto.url)
    agent = AgentProc(tmp_path / "agents", "cmd-1", mosquitto.url)
    try:
        server.wait_ready()
        FleetClient(server.url).upload_package(info.path)
        server.api("POST", "/api/v1/releases", {"name": "tiny-1", "package_sha256": info.sha256})
        wait_until(
            "agent online",
            lambda: (server.api("GET", "/api/v1/devices/cmd-1") or {}).get("online"),
            60,
        )
        server.api("POST", "/api/v1/assignments", {"release": "tiny-1", "device_ids": ["cmd-1"]})
        wait_until(
            "agent serving tiny-1",
            lambda: (
                server.api("GET", "/api/v1/devices/cmd-1").get("serving")
                and agent.state().get("active_sha256") == info.sha256
            ),
            90,
        )
        before = _infer(agent.api_url())

        sent = server.api("POST", "/api/v1/devices/cmd-1/commands", {"command": "restart-runtime"})
        assert sent["sequence"] == 1
        wait_until("agent ran the command", lambda: agent.state().get("command_sequence") == 1, 30)
        wait_until(
            "agent logged the reload",
            lambda: "command restart-runtime (sequence 1)" in agent.output(),
            10,
        )
        assert agent.alive()

        def restart_reported() -> bool:
            events = server.api("GET", "/api/v1/events?device_id=cmd-1&type=selfheal.action")
            return any(e["data"].get("action") == "restart" for e in events)

        wait_until("the server saw the runtime restart", restart_reported, 20)
        assert np.allclose(_infer(agent.api_url()), before)
        device = server.api("GET", "/api/v1/devices/cmd-1")
        assert device["serving"]
        assert device["active_sha256"] == info.sha256
    finally:
        agent.stop()
        server.stop()
