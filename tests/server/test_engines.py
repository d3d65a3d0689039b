"""Engines per hardware profile on the server (DESIGN §4, issue 6): the builder's upload
API, device uploads over MQTT (``d/{id}/upload``), and assignment by reported profile."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from jetfleet.frames import encode_frame
from jetfleet.messages import EngineUpload, FetchRequest
from tests.server.conftest import RunningServer, SimDevice, release, wait_for

PLAN = b"fake-trt-plan:" + bytes(range(256)) * 300  # 76 KiB: two 64 KiB blocks
PLAN_SHA = hashlib.sha256(PLAN).hexdigest()
ORIN = {"engine_key": "sm87-trt10.3", "sm": "87"}
XAVIER = {"engine_key": "sm72-trt8.5", "sm": "72"}


def _post_engine(http: TestClient, name: str, plan: bytes, key: str = "sm87-trt10.3"):
    return http.post(f"/api/v1/releases/{name}/engines", data={"engine_key": key},
                     files={"file": ("e.plan", plan)})


def test_builder_upload_list_and_refusals(api: TestClient, package_path: Path) -> None:
    rel = release(api, package_path)
    first = _post_engine(api, "tiny-1", PLAN)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["sha256"] == PLAN_SHA
    assert (body["status"], body["source"]) == ("verified", "builder")
    assert body["target"] == f"engines/{PLAN_SHA}.plan"
    assert body["package_sha256"] == rel["package_sha256"]
    assert _post_engine(api, "tiny-1", PLAN).status_code == 200  # idempotent
    listed = api.get("/api/v1/releases/tiny-1/engines").json()
    assert [e["sha256"] for e in listed] == [PLAN_SHA]
    assert _post_engine(api, "nope", PLAN).status_code == 404
    assert _post_engine(api, "tiny-1", PLAN, key="bad key/..").status_code in (400, 422)
    assert _post_engine(api, "tiny-1", b"").status_code in (400, 422)
    assert api.get("/api/v1/releases/nope/engines").status_code == 404


def _upload(dev: SimDevice, announce: EngineUpload, plan: bytes) -> None:
    dev.publish("upload", announce.to_bytes())
    for i in range(announce.block_count):
        chunk = plan[i * announce.block_size:(i + 1) * announce.block_size]
        dev.publish("upload", encode_frame(announce.sha256, i, announce.block_count,
                                           i * announce.block_size, chunk))


def _announce(device_id: str, package_sha256: str, plan: bytes = PLAN,
              key: str = "sm87-trt10.3", sha: str | None = None) -> EngineUpload:
    return EngineUpload(device_id=device_id, release="tiny-1", package_sha256=package_sha256,
                        engine_key=key, sha256=sha or hashlib.sha256(plan).hexdigest(),
                        length=len(plan))


def test_device_upload_becomes_a_candidate_assigned_to_its_profile_only(
    server: RunningServer, devices: Callable[..., SimDevice], package_path: Path
) -> None:
    rel = release(server.http, package_path)
    builder, peer, other = devices("orin-a"), devices("orin-b"), devices("xavier-c")
    builder.state(backend="tensorrt", profile_details=ORIN)
    peer.state(backend="tensorrt", profile_details=ORIN)
    other.state(backend="tensorrt", profile_details=XAVIER)
    for d in ("orin-a", "orin-b", "xavier-c"):
        wait_for(lambda d=d: server.device(d), what=d)
    server.http.post("/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["orin-a"]})
    assert builder.wait_desired(1)[-1].engine is None  # no engine yet: the device builds

    _upload(builder, _announce("orin-a", rel["package_sha256"]), PLAN)
    listed = wait_for(lambda: server.http.get("/api/v1/releases/tiny-1/engines").json(),
                      what="registered candidate")
    assert [(e["sha256"], e["status"], e["source"], e["engine_key"]) for e in listed] == [
        (PLAN_SHA, "candidate", "device:orin-a", "sm87-trt10.3")]
    assert server.context.store.path(PLAN_SHA).read_bytes() == PLAN

    server.http.post("/api/v1/assignments",
                     json={"release": "tiny-1", "device_ids": ["orin-b", "xavier-c"]})
    desired = peer.wait_desired(1)[-1]
    assert desired.engine is not None
    assert (desired.engine.sha256, desired.engine.length) == (PLAN_SHA, len(PLAN))
    assert desired.engine.target == f"engines/{PLAN_SHA}.plan"
    assert other.wait_desired(1)[-1].engine is None  # another profile gets none

    # the peer fetches the engine with the same block transfer as the package
    peer.send("fetch", FetchRequest(device_id="orin-b", sha256=PLAN_SHA, ranges=[(0, 2)]))
    frames = peer.wait_frames(2)
    rebuilt = b"".join(f.payload for f in sorted(frames, key=lambda f: f.index))
    assert rebuilt == PLAN
    # ... which a device not assigned it cannot
    other.send("fetch", FetchRequest(device_id="xavier-c", sha256=PLAN_SHA, ranges=[(0, 1)]))
    wait_for(lambda: server.bad("fetch", "unassigned_artifact") >= 1, what="refused fetch")


def test_bad_uploads_are_refused_and_nothing_is_registered(
    server: RunningServer, devices: Callable[..., SimDevice], package_path: Path
) -> None:
    rel = release(server.http, package_path)
    dev = devices("orin-a")
    dev.state(backend="tensorrt", profile_details=ORIN)
    wait_for(lambda: server.device("orin-a"), what="device")
    # claims another profile than the device reports
    _upload(dev, _announce("orin-a", rel["package_sha256"], key="sm72-trt8.5"), PLAN)
    wait_for(lambda: server.bad("upload", "wrong_profile") >= 1, what="wrong profile")
    # bytes that do not hash to the declared sha256
    _upload(dev, _announce("orin-a", rel["package_sha256"], sha="f" * 64), PLAN)
    wait_for(lambda: server.bad("upload", "hash_mismatch") >= 1, what="hash mismatch")
    # frames with no announce
    dev.publish("upload", encode_frame(PLAN_SHA, 0, 1, 0, b"x"))
    wait_for(lambda: server.bad("upload", "unannounced") >= 1, what="unannounced")
    assert server.http.get("/api/v1/releases/tiny-1/engines").json() == []
