"""Rollouts end to end: a real server, real Mosquitto, and simulated agents that answer
each desired assignment with events (carrying its sequence), state and telemetry."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetfleet.messages import (
    DesiredAssignment,
    EventMessage,
    InferenceMetrics,
    TelemetryBatch,
    TelemetrySample,
)
from tests.server.conftest import RunningServer, SimDevice, release, wait_for
from tests.support.tinymodel import make_package

LAB = ["cam-a", "cam-b", "cam-c", "cam-d"]  # site=lab, in wave order; cam-a is the canary
OTHER = "cam-x"  # site=other: never selected
BASE_P95 = 10.0


@dataclass
class Agent:
    """Answers desired assignments the way ``behaviour[release]`` says (default: good)."""

    sim: SimDevice
    behaviour: dict[str, str] = field(default_factory=dict)
    handled: set[int] = field(default_factory=set)
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def releases(self) -> list[str]:
        """Releases of the distinct assignments received (a re-delivery counts once)."""
        by_sequence = {d.sequence: d.release for d in list(self.sim.desired)}
        return [by_sequence[s] for s in sorted(by_sequence)]

    def step(self) -> None:
        self.sim.pump()
        for desired in list(self.sim.desired):
            if desired.sequence not in self.handled:
                self.handled.add(desired.sequence)
                self._answer(desired)

    def _event(self, desired: DesiredAssignment, kind: str) -> None:
        self.sim.send(
            "events",
            EventMessage(
                device_id=self.sim.id,
                id=f"{desired.sequence}-{kind}",
                ts=time.time(),
                type=kind,
                release=desired.release,
                sha256=desired.sha256,
                sequence=desired.sequence,
            ),
        )

    def _telemetry(self, desired: DesiredAssignment, p95: float) -> None:
        samples = [
            TelemetrySample(
                ts=time.time() + i * 0.001,
                seq=next(self.seq),
                inference=InferenceMetrics(
                    count=100, errors=0, p95_ms=p95, release=desired.release, sha256=desired.sha256
                ),
            )
            for i in range(3)
        ]
        self.sim.send("telemetry", TelemetryBatch(device_id=self.sim.id, samples=samples))

    def _answer(self, desired: DesiredAssignment) -> None:
        how = self.behaviour.get(desired.release, "good")
        if how == "silent":
            return
        self._event(desired, "ota.started")
        if how == "golden_fail":
            self._event(desired, "activation.failed")
            return
        self._event(desired, "activation.trial")
        self.sim.state(
            active_release=desired.release,
            active_sha256=desired.sha256,
            assignment_sequence=desired.sequence,
        )
        self._telemetry(desired, BASE_P95 * (3 if how == "slow" else 1))
        if how == "revert":
            self._event(desired, "activation.reverted")
            return
        self._event(desired, "activation.committed")


@dataclass
class Fleet:
    server: RunningServer
    agents: dict[str, Agent]
    r1: dict[str, Any]
    r2: dict[str, Any]

    @property
    def http(self) -> TestClient:
        return self.server.http

    def create(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "release": "r2",
            "selector": "site=lab",
            "waves": "1,50%,100%",
            "bake_s": 1.0,
            "wave_timeout_s": 15.0,
        }
        body.update(overrides)
        response = self.http.post("/api/v1/rollouts", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/api/v1/rollouts/{rollout_id}").json()
        return body

    def wait_status(self, rollout_id: int, status: str, timeout: float = 20.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body = self.rollout(rollout_id)
            return body if body["status"] == status else None

        return wait_for(reached, timeout, f"rollout {rollout_id} {status}")

    def got(self, release_name: str) -> list[str]:
        """Devices that ever received a desired assignment for ``release_name``."""
        return sorted(d for d, a in self.agents.items() if release_name in a.releases())


def _pump(agents: dict[str, Agent], stop: threading.Event) -> None:
    while not stop.wait(0.03):
        for agent in list(agents.values()):
            agent.step()


@pytest.fixture
def fleet(
    tmp_path: Path,
    server_factory: Callable[..., RunningServer],
    devices: Callable[..., SimDevice],
) -> Iterator[Fleet]:
    """Five devices (four site=lab) all committed on r1 with baseline telemetry; r2 uploaded."""
    server = server_factory(rollout_tick_interval=0.2, auth_enabled=False)
    r1 = release(server.http, make_package(tmp_path / "pkgs" / "r1.jfpkg", seed=0).path, "r1")
    r2_path = make_package(tmp_path / "pkgs" / "r2.jfpkg", version="2", seed=1).path
    r2 = release(server.http, r2_path, "r2")
    agents: dict[str, Agent] = {}
    for device_id in [*LAB, OTHER]:
        site = "other" if device_id == OTHER else "lab"
        response = server.http.post(
            "/api/v1/devices", json={"id": device_id, "tags": {"site": site}}
        )
        assert response.status_code == 201, response.text
        agents[device_id] = Agent(devices(device_id))
    stop = threading.Event()
    pump = threading.Thread(target=_pump, args=(agents, stop), daemon=True)
    pump.start()
    response = server.http.post(
        "/api/v1/assignments", json={"release": "r1", "device_ids": [*LAB, OTHER]}
    )
    assert response.status_code == 201, response.text

    def baseline_ready() -> bool:
        on_r1 = all((server.device(d) or {}).get("active_release") == "r1" for d in agents)
        return on_r1 and all(
            server.http.get("/api/v1/telemetry", params={"device_id": d}).json() for d in agents
        )

    wait_for(baseline_ready, 10, "the fleet on r1 with baseline telemetry")
    yield Fleet(server, agents, r1, r2)
    stop.set()
    pump.join(5)


def test_good_release_goes_through_every_wave_to_the_selection_only(fleet: Fleet) -> None:
    created = fleet.create()
    assert created["plan"] == [1, 2, 4]
    assert created["targets"] == LAB
    done = fleet.wait_status(created["id"], "completed")
    assert [g["passed"] for g in done["gates"]] == [True, True, True]
    assert [w["devices"] for w in done["wave_plan"]] == [["cam-a"], ["cam-b"], ["cam-c", "cam-d"]]
    assert {d["device_id"]: d["status"] for d in done["devices"]} == dict.fromkeys(LAB, "committed")
    first = done["gates"][0]["numbers"]
    assert first["p95_ratio"] == pytest.approx(1.0)
    assert first["p95_baseline_ms"] == BASE_P95
    assert first["failures"] == 0
    assert fleet.got("r2") == LAB
    assert fleet.agents[OTHER].releases() == ["r1"]
    for device_id in LAB:  # each device got the release exactly once
        assert fleet.agents[device_id].releases() == ["r1", "r2"]


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("golden_fail", "1 failure(s) > max_failures 0 (cam-a)"),
        ("slow", "p95 latency 30 ms is 3.00x the baseline 10 ms (max 1.5x)"),
        ("revert", "1 revert(s) > max_reverts 0"),
    ],
)
def test_bad_release_halts_at_the_canary_and_rolls_it_back(
    fleet: Fleet, behaviour: str, reason: str
) -> None:
    fleet.agents["cam-a"].behaviour["r2"] = behaviour
    created = fleet.create(auto_rollback=True)
    halted = fleet.wait_status(created["id"], "halted")
    assert reason in halted["reason"]
    (gate,) = halted["gates"]
    assert gate["passed"] is False
    assert gate["wave"] == 0
    assert reason in gate["reason"]
    assert gate["numbers"]["devices"] == 1
    canary = fleet.agents["cam-a"]
    wait_for(lambda: len(canary.releases()) == 3, 5, "the canary's rollback assignment")
    assert canary.releases() == ["r1", "r2", "r1"]
    sequences = sorted({d.sequence for d in canary.sim.desired})
    assert len(sequences) == 3
    (row,) = halted["devices"]
    assert fleet.rollout(created["id"])["devices"][0]["rollback_sequence"] == sequences[-1]
    assert row["previous_release"] == "r1"
    time.sleep(0.6)  # a few more ticks: nothing else is sent
    assert fleet.got("r2") == ["cam-a"]  # the blast radius: the canary only
    assert fleet.rollout(created["id"])["status"] == "halted"


def test_restart_mid_rollout_resumes_without_reissuing_finished_waves(
    fleet: Fleet, server_factory: Callable[..., RunningServer]
) -> None:
    created = fleet.create(waves="1,100%", bake_s=1.5)
    wait_for(
        lambda: (
            [d["status"] for d in fleet.rollout(created["id"])["devices"]][:1]
            in (["trial"], ["committed"])
        ),
        10,
        "the canary in trial",
    )
    before = fleet.rollout(created["id"])
    assert before["gates"] == []  # still baking: stop the server mid-wave
    canary_sequence = before["devices"][0]["sequence"]
    fleet.server.http.__exit__(None, None, None)
    fleet.server = server_factory(rollout_tick_interval=0.2, auth_enabled=False)
    done = fleet.wait_status(created["id"], "completed")
    assert [g["passed"] for g in done["gates"]] == [True, True]
    assert done["devices"][0]["sequence"] == canary_sequence
    canary = fleet.agents["cam-a"]
    assert {d.sequence for d in canary.sim.desired if d.release == "r2"} == {canary_sequence}
    for device_id in LAB:
        assert fleet.agents[device_id].releases() == ["r1", "r2"]


def test_pause_records_the_gate_but_issues_nothing_then_resume_and_rollback(
    fleet: Fleet,
) -> None:
    created = fleet.create(waves="1,100%")
    rid = created["id"]
    wait_for(lambda: fleet.got("r2") == ["cam-a"], 5, "the canary's assignment")
    paused = fleet.http.post(f"/api/v1/rollouts/{rid}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    wait_for(lambda: fleet.rollout(rid)["gates"], 10, "the wave 0 gate while paused")
    time.sleep(0.6)
    body = fleet.rollout(rid)
    assert body["status"] == "paused"
    assert [w["state"] for w in body["wave_plan"]] == ["passed", "pending"]
    assert fleet.got("r2") == ["cam-a"]
    assert fleet.http.post(f"/api/v1/rollouts/{rid}/resume").json()["status"] == "running"
    fleet.wait_status(rid, "completed")
    assert fleet.got("r2") == LAB

    rolled = fleet.http.post(f"/api/v1/rollouts/{rid}/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["status"] == "rolled_back"
    for device_id in LAB:
        agent = fleet.agents[device_id]
        wait_for(lambda a=agent: a.releases() == ["r1", "r2", "r1"], 5, f"{device_id} back")
    assert fleet.agents[OTHER].releases() == ["r1"]
    again = fleet.http.post(f"/api/v1/rollouts/{rid}/rollback")
    assert again.status_code == 409
    assert "is rolled_back; cannot roll back" in again.json()["detail"]
    assert fleet.http.post(f"/api/v1/rollouts/{rid}/pause").status_code == 409


def test_abort_stops_without_rollback(fleet: Fleet) -> None:
    fleet.agents["cam-a"].behaviour["r2"] = "silent"
    created = fleet.create()
    rid = created["id"]
    wait_for(lambda: fleet.got("r2") == ["cam-a"], 5, "the canary's assignment")
    aborted = fleet.http.post(f"/api/v1/rollouts/{rid}/abort")
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["status"] == "aborted"
    time.sleep(0.6)
    assert fleet.agents["cam-a"].releases() == ["r1", "r2"]  # kept, not rolled back
    assert fleet.got("r2") == ["cam-a"]
    assert fleet.rollout(rid)["gates"] == []
    assert fleet.http.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409
    listed = fleet.http.get("/api/v1/rollouts").json()
    assert [(r["id"], r["status"]) for r in listed] == [(rid, "aborted")]


@pytest.mark.parametrize(
    ("overrides", "code", "message"),
    [
        ({"release": "nope"}, 404, "release 'nope' does not exist"),
        ({"selector": "site=nowhere"}, 422, "selector site=nowhere matches no device"),
        ({"selector": {"site": "lab", "rack": "9"}}, 422, "rack=9,site=lab matches no device"),
        ({"selector": "site"}, 422, "selector part 'site' must look like key=value"),
        ({"selector": {}}, 422, "selector must name at least one tag"),
        ({"waves": "1,50%"}, 422, "covers 2 of the 4 selected devices; it is not extended"),
        ({"waves": "0,100%"}, 422, "must be at least 1 device"),
        ({"waves": "50%,10%,100%"}, 422, "waves must increase"),
        ({"waves": "1,lots"}, 422, "wave 2 ('lots') must be a device count"),
        ({"waves": [1, "200%"]}, 422, "percentage in (0%, 100%]"),
        ({"max_failure_rate": 1.5}, 422, "max_failure_rate"),
        ({"max_error_rate": -0.1}, 422, "max_error_rate"),
        ({"max_failures": -1}, 422, "max_failures"),
        ({"bake_s": -1}, 422, "bake_s"),
        ({"wave_timeout_s": 0}, 422, "wave_timeout_s"),
        ({"min_executions": 0}, 422, "min_executions"),
    ],
)
def test_bad_input_is_refused_clearly(
    fleet: Fleet, overrides: dict[str, Any], code: int, message: str
) -> None:
    body = {"release": "r2", "selector": "site=lab", "waves": "1,100%", **overrides}
    response = fleet.http.post("/api/v1/rollouts", json=body)
    assert response.status_code == code, response.text
    assert message in response.json()["detail"]
    assert fleet.http.get("/api/v1/rollouts").json() == []


def test_unknown_rollout_and_overlapping_rollouts(fleet: Fleet) -> None:
    assert fleet.http.get("/api/v1/rollouts/999").status_code == 404
    missing = fleet.http.post("/api/v1/rollouts/999/pause")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "rollout 999 does not exist"
    fleet.agents["cam-a"].behaviour["r2"] = "silent"
    first = fleet.create()
    clash = fleet.http.post(
        "/api/v1/rollouts", json={"release": "r2", "selector": {"site": "lab"}, "waves": "100%"}
    )
    assert clash.status_code == 409
    assert f"rollout {first['id']} (running) already targets cam-a" in clash.json()["detail"]
