"""Every bad device message is counted, dropped, and leaves the server and its DB intact."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.gateway import BoundedInbox
from jetfleet.messages import FetchRequest
from jetfleet.mqtt import Connection, Inbound
from tests.server.conftest import RunningServer, SimDevice, release, wait_for


def _json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


CASES = [
    ("state", b"{not json", "invalid_json"),
    ("state", b"\xff\xfe", "invalid_json"),
    ("state", b"[1, 2]", "schema"),
    ("state", _json(device_id="bad-1", online=True), "schema"),  # no "v"
    ("state", _json(v=1, device_id="bad-1"), "schema"),  # no "online"
    ("state", _json(v=2, device_id="bad-1", online=True), "version"),
    ("state", _json(v=1, device_id="bad-1", online=True, profile="x" * 70_000), "oversize"),
    ("state", _json(v=1, device_id="other-device", online=True), "device_mismatch"),
    ("telemetry", _json(v=1, device_id="bad-1", samples=[]), "schema"),
    ("events", _json(v=1, device_id="bad-1", id="e", ts=1.0, type="Not A Type"), "schema"),
    ("fetch", _json(v=1, device_id="bad-1", sha256="a" * 64, ranges=[[3, 1]]), "schema"),
]


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    CASES,
    ids=[f"{kind}-{reason}-{i}" for i, (kind, _, reason) in enumerate(CASES)],
)
def test_bad_message_is_counted_and_dropped(
    server: RunningServer,
    devices: Callable[..., SimDevice],
    kind: str,
    payload: bytes,
    reason: str,
) -> None:
    bad, good = devices("bad-1"), devices("good-1")
    bad.publish(kind, payload)
    # Messages are handled in arrival order: once the good one is in, the bad one was seen.
    bad.state()
    good.state()
    wait_for(lambda: server.device("good-1"), what="the good device")
    assert server.bad(kind, reason) == 1
    bad_device = server.device("bad-1")  # registered by its later *valid* state only
    assert bad_device is not None
    assert server.http.get("/api/v1/events").json() == []
    assert server.http.get("/api/v1/telemetry", params={"device_id": "bad-1"}).json() == []
    assert server.http.get("/healthz").status_code == 200
    metrics = server.http.get("/metrics").text
    assert f'jetfleet_server_bad_messages_total{{kind="{kind}",reason="{reason}"}} 1.0' in metrics


def test_bad_messages_leave_no_trace_in_the_database(
    server: RunningServer, devices: Callable[..., SimDevice]
) -> None:
    bad, good = devices("bad-1"), devices("good-1")
    for _, payload, _ in CASES:
        bad.publish("state", payload)
    good.state()
    wait_for(lambda: server.device("good-1"), what="the good device")
    assert [d["id"] for d in server.http.get("/api/v1/devices").json()] == ["good-1"]


def test_fetch_out_of_range_and_for_unknown_device_are_refused(
    server: RunningServer, devices: Callable[..., SimDevice], package_path: Path
) -> None:
    rel = release(server.http, package_path)
    cam = devices("cam-1")
    cam.state()
    wait_for(lambda: server.device("cam-1"), what="device")
    server.http.post("/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1"]})
    count = cam.wait_desired(1)[-1].block_count
    sha = rel["package_sha256"]
    cam.send("fetch", FetchRequest(device_id="cam-1", sha256=sha, ranges=[(0, count + 1)]))
    devices("ghost").send("fetch", FetchRequest(device_id="ghost", sha256=sha, ranges=[(0, 1)]))
    cam.send("fetch", FetchRequest(device_id="cam-1", sha256=sha, ranges=[(count - 1, count)]))
    frames = cam.wait_frames(1)
    assert [f.index for f in frames] == [count - 1]
    assert server.bad("fetch", "block_out_of_range") == 1
    assert server.bad("fetch", "unassigned_artifact") == 1


def test_inbox_backpressure_waits_then_drops_and_counts() -> None:
    dropped: list[Inbound] = []
    inbox = BoundedInbox(limit=2, put_timeout=0.05, on_drop=dropped.append)
    msgs = [Inbound(f"jetfleet/v1/d/x/state{i}", b"", False, 1, 0.0) for i in range(3)]
    inbox.put(msgs[0])
    inbox.put(msgs[1])
    started = time.monotonic()
    inbox.put(msgs[2])  # full: waits put_timeout, then drops
    assert time.monotonic() - started >= 0.04
    assert dropped == [msgs[2]]
    inbox.put(Connection(False, "lost"))  # connection changes always get through
    assert inbox.qsize() == 3
    assert [inbox.get(), inbox.get()] == [msgs[0], msgs[1]]
    inbox.put(msgs[2])  # room again: accepted without waiting
    assert dropped == [msgs[2]]
    assert inbox.get() == Connection(False, "lost")
    assert inbox.get() is msgs[2]


def test_message_on_a_topic_with_an_invalid_device_id_is_refused(
    server: RunningServer, devices: Callable[..., SimDevice]
) -> None:
    good = devices("good-1")
    payload = json.dumps({"v": 1, "device_id": "bad id", "online": True}).encode()
    good.client.publish("jetfleet/v1/d/bad id/state", payload, qos=1).wait_for_publish(5)
    good.state()
    wait_for(lambda: server.device("good-1"), what="the good device")
    assert server.bad("state", "bad_topic") == 1
    assert [d["id"] for d in server.http.get("/api/v1/devices").json()] == ["good-1"]
