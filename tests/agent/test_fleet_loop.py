"""End-to-end agent behaviour against a real Mosquitto and a fake fleet server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent import Agent, AgentClient
from jetfleet.messages import SlotStatus
from tests.agent.conftest import package_bytes
from tests.agent.fleet import FakeServer, agent_config
from tests.support.mosquitto import MosquittoBroker
from tests.support.polling import wait_until
from tests.support.tinymodel import make_mlp_onnx, run_onnx


@pytest.fixture
def agent(tmp_path: Path, mosquitto: MosquittoBroker, server: FakeServer) -> Iterator[Agent]:
    a = Agent(agent_config(tmp_path, mosquitto.url))
    a.start()
    try:
        yield a
    finally:
        a.stop()


def serving(agent: Agent, sha256: str) -> bool:
    engine = agent.engines.current
    return engine is not None and engine.sha256 == sha256


def activate(server: FakeServer, agent: Agent, info, release: str, sequence: int):
    assignment = server.assign(info.sha256, package_bytes(info), release=release,
                               sequence=sequence)
    wait_until(lambda: serving(agent, info.sha256), what=f"agent serving {release}")
    return assignment


def test_download_verify_activate_serve_commit(agent, server, packages):
    v1 = packages["v1"]
    server.corrupt_once.add((v1.sha256, 3))  # one bad digest: must be asked for again
    activate(server, agent, v1, "tiny-1", 1)

    client = AgentClient(agent.api_url)
    x = np.random.default_rng(5).random((3, 64), dtype=np.float32)
    expected = run_onnx(make_mlp_onnx(seed=1), x)
    np.testing.assert_allclose(client.infer(x), expected, rtol=1e-5, atol=1e-6)
    assert client.health()["release"] == "tiny-1"

    assert server.sent[(v1.sha256, 3)] == 2
    assert agent.updater.ota_totals["hash_mismatches"] == 1
    assert agent.validator.by_reason().get("block_hash") == 1
    wait_until(lambda: agent.state.known_good_sha256 == v1.sha256, what="commit")
    wait_until(lambda: "activation.committed" in server.event_types(), what="commit event")
    types = server.event_types()
    for expected_type in ("ota.started", "ota.verified", "activation.staged",
                          "activation.testing", "activation.trial"):
        assert expected_type in types
    state = wait_until(lambda: (s := server.latest_state()) and s.known_good_sha256 == v1.sha256
                       and s, what="retained state with known-good")
    assert state.online
    assert state.serving
    assert state.tags == {"site": "lab"}


def test_sha_mismatch_and_bad_golden_keep_serving_old(agent, server, packages):
    v1, v2, bad = packages["v1"], packages["v2"], packages["bad_golden"]
    activate(server, agent, v1, "tiny-1", 1)
    wait_until(lambda: agent.state.known_good_sha256 == v1.sha256, what="commit")

    # v2's bytes under a claimed sha256 that they do not have: the whole-file check fails
    fake_sha = hashlib.sha256(b"not the package").hexdigest()
    server.assign(fake_sha, package_bytes(v2), release="tiny-2", sequence=2)
    wait_until(lambda: "ota.failed" in server.event_types(), what="ota.failed")
    assert agent.state.slots[fake_sha].status is SlotStatus.FAILED
    assert serving(agent, v1.sha256)
    assert not (agent.slots.root / fake_sha).exists()

    server.assign(bad.sha256, package_bytes(bad), release="tiny-bad", sequence=3)
    wait_until(lambda: "activation.failed" in server.event_types(), what="activation.failed")
    assert "golden" in agent.state.slots[bad.sha256].reason
    assert serving(agent, v1.sha256)
    assert AgentClient(agent.api_url).health()["release"] == "tiny-1"

    # a good new release still goes through afterwards
    activate(server, agent, v2, "tiny-2", 4)
    wait_until(lambda: agent.state.known_good_sha256 == v2.sha256, what="commit of v2")
    wait_until(lambda: agent.slots.names() == [v2.sha256], what="old slots cleaned up")


def test_bad_inbound_messages_are_counted_and_dropped(agent, server, packages):
    v1 = packages["v1"]
    good = activate(server, agent, v1, "tiny-1", 2)
    wait_until(lambda: agent.store.load().known_good_sha256 == v1.sha256, what="commit on disk")
    state_file = agent.store.path
    before = state_file.read_bytes()

    from jetfleet import topics
    from jetfleet.frames import encode_frame

    desired, cmd, blocks = (topics.desired("dev-1"), topics.cmd("dev-1"), topics.blocks("dev-1"))
    base = good.model_dump(mode="json")
    import json

    def dumps(**changes):
        return json.dumps({**base, **changes}).encode()

    frame = encode_frame(v1.sha256, 0, 4, 0, b"abcd")
    cases = {
        ("desired", "invalid_json"): (desired, b"{not json"),
        ("desired", "schema"): (desired, dumps(sha256="xyz")),
        ("desired", "version"): (desired, dumps(v=99)),
        ("desired", "too_large"): (desired, dumps(release="r" * 20_000)),
        ("desired", "device_mismatch"): (desired, dumps(device_id="someone-else")),
        ("cmd", "schema"): (cmd, b'{"v": 1, "device_id": "dev-1", "command": "format-disk"}'),
        ("cmd", "invalid_json"): (cmd, b"\xff\xfe"),
        ("blocks", "bad_frame"): (blocks, b"JFB1" + b"\0" * 10),
        ("blocks", "block_hash"): (blocks, frame[:-1] + b"X"),
    }
    for topic, payload in cases.values():
        server.client.publish(topic, payload)
    wait_until(lambda: set(cases) <= set(agent.validator.snapshot()), what="all bad messages")
    assert all(agent.validator.snapshot()[key] == 1 for key in cases)

    # older and re-used sequences are refused; an identical re-delivery is a no-op
    rejected_before = server.event_types().count("security.rejected")
    server.publish_desired(dumps(sequence=1), retain=False)
    server.publish_desired(dumps(release="other"), retain=False)
    server.publish_desired(good.to_bytes(), retain=False)
    wait_until(lambda: server.event_types().count("security.rejected") == rejected_before + 2,
               what="two security.rejected events")

    assert state_file.read_bytes() == before
    assert serving(agent, v1.sha256)
    assert AgentClient(agent.api_url).health()["status"] == "serving"
    metrics = AgentClient(agent.api_url).metrics()
    assert 'jetfleet_agent_bad_messages_total{device="dev-1",kind="desired",reason="version"} 1' \
        in metrics


def test_broker_restart_buffered_telemetry_arrives(tmp_path, mosquitto, packages):
    agent = Agent(agent_config(tmp_path, mosquitto.url, telemetry_interval_s=0.1))
    first = FakeServer(mosquitto.url).start()
    agent.start()
    try:
        wait_until(lambda: len(first.telemetry) >= 2, what="telemetry before the outage")
        mosquitto.stop()
        first.stop()
        wait_until(lambda: not agent.connected, what="agent notices the outage")
        wait_until(lambda: agent.buffer.pending("telemetry") >= 10, what="samples buffered offline")
        mosquitto.start()
        second = FakeServer(mosquitto.url).start()
        try:
            wait_until(lambda: agent.connected, timeout=20, what="agent reconnects")
            wait_until(lambda: agent.buffer.pending("telemetry") <= 1
                       and agent._forwarders[0].inflight == 0, what="outbox drained")
            seqs = {s.seq for b in first.telemetry + second.telemetry for s in b.samples}
            last = max(seqs)
            assert seqs >= set(range(min(seqs), last + 1)), "a sample was lost"
            assert all(b.dropped == 0 for b in second.telemetry)
            assert agent.stats is not None
        finally:
            second.stop()
    finally:
        agent.stop()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_operator_rollback_during_trial_and_no_retry_of_reverted(tmp_path, mosquitto, server,
                                                                  packages):
    from jetfleet import topics
    from jetfleet.messages import Command

    v1, v2 = packages["v1"], packages["v2"]
    clock = ManualClock()
    agent = Agent(agent_config(tmp_path, mosquitto.url, bake_s=60), clock=clock)
    agent.start()
    try:
        activate(server, agent, v1, "tiny-1", 1)
        clock.now += 61
        wait_until(lambda: agent.state.known_good_sha256 == v1.sha256, what="v1 committed")
        activate(server, agent, v2, "tiny-2", 2)
        assert agent.state.trial is not None

        rollback = Command(device_id="dev-1", command="rollback", sequence=1, issued_at=clock())
        server.client.publish(topics.cmd("dev-1"), rollback.to_bytes())
        wait_until(lambda: serving(agent, v1.sha256), what="rolled back to v1")
        assert agent.state.reverted == [v2.sha256]
        server.client.publish(topics.cmd("dev-1"), rollback.to_bytes())  # replayed command
        wait_until(lambda: "security.rejected" in server.event_types(), what="replay refused")

        resync = Command(device_id="dev-1", command="resync", sequence=2, issued_at=clock())
        server.client.publish(topics.cmd("dev-1"), resync.to_bytes())
        wait_until(lambda: agent.state.command_sequence == 2, what="resync handled")
        assert serving(agent, v1.sha256)  # the reverted release is not tried again by itself
        assert agent.state.slots[v2.sha256].status is SlotStatus.REVERTED
    finally:
        agent.stop()


def test_full_offline_buffer_drops_oldest_and_reports_the_count(tmp_path, mosquitto):
    agent = Agent(agent_config(tmp_path, mosquitto.url, telemetry_interval_s=0.05,
                               telemetry_buffer_max=5))
    agent.start()
    try:
        wait_until(lambda: agent.connected, what="connected")
        mosquitto.stop()
        wait_until(lambda: agent.buffer.dropped("telemetry") >= 10, what="drops while offline")
        mosquitto.start()
        server = FakeServer(mosquitto.url).start()
        try:
            wait_until(lambda: any(b.dropped for b in server.telemetry), timeout=20,
                       what="a batch reporting drops")
            batch = next(b for b in server.telemetry if b.dropped)
            assert len(batch.samples) <= 5
            assert all(s.gpu is None for s in batch.samples)  # CPU-only host: absent, not faked
            seqs = [s.seq for s in batch.samples]
            assert seqs == sorted(seqs)
        finally:
            server.stop()
    finally:
        agent.stop()
