"""The MQTT gateway against a real Mosquitto, with a simulated device speaking protocol v1."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from jetfleet.messages import (
    EventMessage,
    FetchRequest,
    InferenceMetrics,
    SlotState,
    SlotStatus,
    SystemMetrics,
    TelemetryBatch,
    TelemetrySample,
)
from tests.server.conftest import RunningServer, SimDevice, release, wait_for
from tests.support.mosquitto import MosquittoBroker
from tests.support.tinymodel import make_package

SHA_A = "a" * 64


def test_state_registers_device_and_lwt_flips_it_offline(
    server: RunningServer, devices: Callable[..., SimDevice]
) -> None:
    cam = devices("cam-1")
    cam.state(
        agent_version="0.1.0",
        active_release="r1",
        active_sha256=SHA_A,
        serving=True,
        backend="onnxruntime",
        profile="cpu-x86_64",
        slots=[SlotState(sha256=SHA_A, release="r1", status=SlotStatus.COMMITTED)],
        tags={"site": "lab"},
        assignment_sequence=3,
    )
    device = wait_for(lambda: server.device("cam-1"), what="auto-registered device")
    assert device["online"] is True
    assert device["last_seen"] is not None
    assert (device["active_release"], device["backend"], device["serving"]) == (
        "r1",
        "onnxruntime",
        True,
    )
    assert device["slots"] == [{"sha256": SHA_A, "release": "r1", "status": "committed"}]
    assert device["tags"] == {"site": "lab"}
    assert device["assignment_sequence"] == 3

    # An ungraceful disconnect: the broker publishes the device's LWT.
    cam.client._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
    offline = wait_for(
        lambda: (d := server.device("cam-1")) and not d["online"] and d, what="LWT offline"
    )
    assert offline["active_release"] == "r1"  # the rest of the state is kept
    assert offline["slots"] == device["slots"]
    assert server.http.get("/api/v1/devices", params={"online": "false"}).json()[0]["id"] == "cam-1"


def _sample(seq: int, ts: float) -> TelemetrySample:
    return TelemetrySample(
        ts=ts,
        seq=seq,
        system=SystemMetrics(cpu_pct=10.0 + seq, mem_pct=40.0),
        inference=InferenceMetrics(
            count=100, errors=1, p50_ms=2.0, p95_ms=5.0, p99_ms=9.0, release="r1"
        ),
    )


def test_telemetry_batches_are_stored_once(
    server: RunningServer, devices: Callable[..., SimDevice]
) -> None:
    cam = devices("cam-1")
    cam.state()
    batch = TelemetryBatch(
        device_id="cam-1", samples=[_sample(i, 1000.0 + i) for i in range(5)], dropped=7
    )
    cam.send("telemetry", batch)
    cam.send("telemetry", batch)  # a QoS 1 re-delivery / store-and-forward resend
    later = TelemetryBatch(device_id="cam-1", samples=[_sample(5, 1005.0)])
    cam.send("telemetry", later)

    def rows() -> list[dict[str, object]]:
        r = server.http.get("/api/v1/telemetry", params={"device_id": "cam-1"})
        return r.json() if len(r.json()) >= 6 else []

    samples = wait_for(rows, what="6 telemetry samples")
    assert [s["seq"] for s in samples] == [0, 1, 2, 3, 4, 5]
    assert samples[0]["cpu_pct"] == 10.0
    assert (samples[0]["inference_count"], samples[0]["p95_ms"], samples[0]["release"]) == (
        100,
        5.0,
        "r1",
    )
    assert samples[0]["gpu_source"] is None  # no GPU reported: stored as absent, not zero
    assert server.device("cam-1")["telemetry_dropped"] == 7
    window = server.http.get(
        "/api/v1/telemetry", params={"device_id": "cam-1", "since": 1001, "until": 1003}
    ).json()
    assert [s["seq"] for s in window] == [1, 2]
    assert (
        server.context.metrics.registry.get_sample_value(
            "jetfleet_server_messages_ingested_total", {"kind": "telemetry"}
        )
        == 3
    )


def test_events_are_stored_deduplicated_and_filterable(
    server: RunningServer, devices: Callable[..., SimDevice]
) -> None:
    cam = devices("cam-1")
    cam.state()
    first = EventMessage(device_id="cam-1", id="e1", ts=100.0, type="ota.started", release="r1")
    cam.send("events", first)
    cam.send("events", first)
    cam.send(
        "events",
        EventMessage(
            device_id="cam-1",
            id="e2",
            ts=101.0,
            type="ota.failed",
            message="sha256 mismatch",
            data={"blocks": 3},
        ),
    )
    events = wait_for(
        lambda: (
            (e := server.http.get("/api/v1/events", params={"device_id": "cam-1"}).json())
            and len(e) >= 2
            and e
        ),
        what="2 events",
    )
    assert [(e["event_id"], e["type"]) for e in events] == [
        ("e1", "ota.started"),
        ("e2", "ota.failed"),
    ]
    assert events[1]["data"] == {"blocks": 3}
    failed = server.http.get("/api/v1/events", params={"type": "ota.failed"}).json()
    assert [e["event_id"] for e in failed] == ["e2"]
    assert server.http.get("/api/v1/events", params={"since": 100.5}).json()[0]["event_id"] == "e2"


def test_assignment_publishes_retained_desired_with_increasing_sequence(
    server: RunningServer, devices: Callable[..., SimDevice], package_path: Path
) -> None:
    rel = release(server.http, package_path)
    server.http.post("/api/v1/devices", json={"id": "cam-1"})
    for _ in range(2):
        r = server.http.post(
            "/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1"]}
        )
        assert r.status_code == 201
    # The device connects afterwards and still gets the latest (retained) assignment.
    cam = devices("cam-1")
    desired = cam.wait_desired(1)[0]
    sha = rel["package_sha256"]
    assert (desired.sequence, desired.release, desired.sha256) == (2, "tiny-1", sha)
    assert desired.length == package_path.stat().st_size
    assert desired.target == f"packages/{sha}.jfpkg"
    server.http.post("/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1"]})
    assert cam.wait_sequence(3).sha256 == sha
    assert [d.sequence for d in cam.desired] == [2, 3]


def test_event_with_sequence_updates_assignment_status(
    server: RunningServer, devices: Callable[..., SimDevice], package_path: Path
) -> None:
    rel = release(server.http, package_path)
    cam = devices("cam-1")
    cam.state()
    wait_for(lambda: server.device("cam-1"), what="device")
    server.http.post("/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1"]})
    committed = EventMessage(
        device_id="cam-1",
        id="c1",
        ts=50.0,
        type="activation.committed",
        sequence=1,
        sha256=rel["package_sha256"],
    )
    cam.send("events", committed)

    def status() -> str:
        return str(server.http.get("/api/v1/devices/cam-1/assignments").json()[0]["status"])

    wait_for(lambda: status() == "committed", what="assignment committed")


def _assemble(frames: list, block_size: int) -> bytes:
    blocks = {f.index: f.payload for f in frames}
    assert all(f.offset == f.index * block_size for f in frames)
    return b"".join(blocks[i] for i in sorted(blocks))


def test_fetch_serves_frames_that_reassemble_the_package(
    server_factory: Callable[..., RunningServer], devices: Callable[..., SimDevice], tmp_path: Path
) -> None:
    server = server_factory(block_size=1024)
    pkg = make_package(tmp_path / "big.jfpkg", pad_bytes=300_000)
    data = pkg.path.read_bytes()
    release(server.http, pkg.path, "big-1")
    cam = devices("cam-1")
    cam.state()
    wait_for(lambda: server.device("cam-1"), what="device")
    server.http.post("/api/v1/assignments", json={"release": "big-1", "device_ids": ["cam-1"]})
    desired = cam.wait_desired(1)[-1]
    count = desired.block_count
    assert count > 256

    cam.send("fetch", FetchRequest(device_id="cam-1", sha256=pkg.sha256, ranges=[(0, count)]))
    frames = cam.wait_frames(256)
    assert sorted(f.index for f in frames) == list(range(256))  # at most 256 per request
    cam.send("fetch", FetchRequest(device_id="cam-1", sha256=pkg.sha256, ranges=[(256, count)]))
    frames = cam.wait_frames(count)
    assert len(frames) == count
    assert {f.count for f in frames} == {count}
    rebuilt = _assemble(frames, desired.block_size)
    assert hashlib.sha256(rebuilt).hexdigest() == pkg.sha256
    assert rebuilt == data
    assert server.context.metrics.fetch_truncated._value.get() == 1
    assert server.context.metrics.blocks_served._value.get() == count


def test_fetch_for_an_unassigned_artifact_gets_no_frames(
    server: RunningServer, devices: Callable[..., SimDevice], package_path: Path, tmp_path: Path
) -> None:
    other = make_package(tmp_path / "other.jfpkg", seed=7)
    release(server.http, other.path, "other-1")  # stored, but never assigned to cam-1
    rel = release(server.http, package_path)
    cam = devices("cam-1")
    cam.state()
    wait_for(lambda: server.device("cam-1"), what="device")
    server.http.post("/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1"]})
    cam.wait_desired(1)
    cam.send("fetch", FetchRequest(device_id="cam-1", sha256=other.sha256, ranges=[(0, 1)]))
    sha = rel["package_sha256"]
    cam.send("fetch", FetchRequest(device_id="cam-1", sha256=sha, ranges=[(0, 1)]))
    frames = cam.wait_frames(1)  # requests are served in order: the first was refused
    cam.pump()
    assert [f.sha256 for f in frames] == [rel["package_sha256"]]
    assert server.bad("fetch", "unassigned_artifact") == 1


def test_desired_is_republished_only_when_the_broker_lost_it(
    server_factory: Callable[..., RunningServer],
    devices: Callable[..., SimDevice],
    mosquitto: MosquittoBroker,
    package_path: Path,
) -> None:
    server = server_factory()
    release(server.http, package_path)
    server.http.post("/api/v1/devices", json={"id": "cam-1"})
    server.http.post("/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1"]})
    published = server.context.metrics.desired_published
    wait_for(lambda: published._value.get() == 1, what="first publish")

    # A broker without persistence restarts: its retained assignment is gone.
    mosquitto.restart()
    wait_for(lambda: published._value.get() == 2, what="re-publish after broker restart")
    cam = devices("cam-1")
    assert cam.wait_desired(1)[-1].sequence == 1

    # A second server on the same database and broker: the broker still has it.
    second = server_factory(client_id="server-two")
    wait_for(lambda: second.context.metrics.reconciles._value.get() == 1, what="reconcile")
    assert second.context.metrics.desired_published._value.get() == 0
