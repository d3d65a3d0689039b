"""The server's TUF repository and director key (fleet_server/keys.py, tufrepo.py,
director.py), checked by the agent's real verifier (edge_agent/trust.py, ngclient)."""

from __future__ import annotations

import hashlib
import json
import queue
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent import Agent
from edge_agent.errors import TrustRefused
from edge_agent.trust import DeviceTrust, TrustConfig
from fleet_server.director import Director
from fleet_server.errors import TrustError
from fleet_server.keys import Expiry, init_keys, rotate_director, rotate_key
from fleet_server.tufrepo import TufRepository, TufService
from jetfleet import topics
from jetfleet.messages import DesiredAssignment
from jetfleet.mqtt import BrokerAddress, MqttClient
from tests.agent.fleet import FakeServer, agent_config
from tests.support.mosquitto import MosquittoBroker
from tests.support.polling import wait_until
from tests.support.tinymodel import make_package

DAY = 86_400.0


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = now if now is not None else time.time()

    def __call__(self) -> float:
        return self.now


def device(keys: Path, tmp: Path, name: str = "dev") -> DeviceTrust:
    config = TrustConfig(root=keys / "metadata" / "1.root.json",
                         director_key=keys / "director.pub")
    return DeviceTrust(config, tmp / name / "tuf")


def deliver(trust: DeviceTrust, repo: TufRepository) -> None:
    for role, payload in repo.payloads().items():
        trust.on_metadata(role, payload)


def assignment(sha256: str, length: int, sequence: int = 1) -> DesiredAssignment:
    return DesiredAssignment(device_id="dev-1", release="r", target=f"packages/{sha256}.jfpkg",
                             sha256=sha256, length=length, sequence=sequence,
                             issued_at=time.time())


SHA = hashlib.sha256(b"pkg").hexdigest()


def test_init_publishes_targets_a_device_verifies(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys)
    assert (keys / "root").stat().st_mode & 0o777 == 0o700
    assert all((keys / "online" / f"{r}.pem").stat().st_mode & 0o777 == 0o600
               for r in ("targets", "snapshot", "timestamp"))
    with pytest.raises(TrustError, match="already holds keys"):
        init_keys(keys)
    repo = TufRepository(keys)
    assert repo.add_package(SHA, 3)
    assert not repo.add_package(SHA, 3)  # idempotent: no new version
    with pytest.raises(TrustError, match="other content"):
        repo.add_targets([(f"packages/{SHA}.jfpkg", SHA, 4)])
    trust = device(keys, tmp_path)
    deliver(trust, repo)
    trust.check_assignment(assignment(SHA, 3))
    with pytest.raises(TrustRefused) as refused:
        trust.check_assignment(assignment(SHA, 4))
    assert refused.value.reason == "target_mismatch"
    # ngclient's names are served as files too (what /tuf/{name} returns)
    assert repo.file("timestamp.json") is not None
    assert repo.file("2.snapshot.json") is not None
    assert repo.file("../director.pem") is None


def test_root_rotation_with_threshold_is_followed_by_devices(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys, root_keys=2, root_threshold=2)
    repo = TufRepository(keys)
    trust = device(keys, tmp_path)
    repo.add_package(SHA, 3)
    deliver(trust, repo)
    trust.check_assignment(assignment(SHA, 3))
    old_root_keys = sorted(p.name for p in (keys / "root").iterdir())
    assert rotate_key(keys, "root") == 2
    assert rotate_key(keys, "timestamp") == 3  # signed by the *new* root keys
    assert sorted(p.name for p in (keys / "root").iterdir()) != old_root_keys
    deliver(trust, repo)
    trust.check_assignment(assignment(SHA, 3))
    assert (tmp_path / "dev" / "tuf" / "root_history" / "3.root.json").is_file()
    # a device that starts from 1.root.json walks 1 → 2 → 3 as well
    fresh = device(keys, tmp_path, "fresh")
    deliver(fresh, repo)
    fresh.check_assignment(assignment(SHA, 3))
    # with one of two root keys gone, no rotation can be signed
    next(iter((keys / "root").iterdir())).unlink()
    with pytest.raises(TrustError, match="threshold is 2"):
        rotate_key(keys, "targets")


def test_offline_root_keys_can_live_elsewhere(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys)
    offline = tmp_path / "usb"
    (keys / "root").rename(offline)
    repo = TufRepository(keys)
    assert repo.add_package(SHA, 3)  # the server needs no root key
    with pytest.raises(TrustError, match="not there"):
        rotate_key(keys, "snapshot")
    assert rotate_key(keys, "snapshot", root_key_dir=offline) == 2


def test_timestamp_is_resigned_before_it_expires(tmp_path):
    clock = Clock()
    keys = tmp_path / "keys"
    init_keys(keys, clock=clock)
    repo = TufRepository(keys, clock=clock)
    published: list[tuple[str, bytes]] = []
    service = TufService(repo, lambda t, p: published.append((t, p)))
    assert set(service.tick()) == {"root", "targets", "snapshot", "timestamp"}
    assert service.tick() == []  # nothing changed, nothing re-published
    clock.now += 0.6 * DAY  # past half of the 1-day timestamp validity
    assert service.tick() == ["timestamp"]
    assert published[-1][0] == topics.tuf("timestamp")
    assert json.loads(published[-1][1])["signed"]["version"] == 2
    clock.now += 4 * DAY  # past half of the snapshot's 7 days: snapshot and timestamp
    assert sorted(service.tick()) == ["snapshot", "timestamp"]


def test_device_refuses_rollback_and_expired_metadata(tmp_path):
    clock = Clock(time.time() - 10 * DAY)  # the repository's clock is ten days behind
    keys = tmp_path / "keys"
    init_keys(keys, clock=clock, expiry=Expiry(root=timedelta(days=365)))
    repo = TufRepository(keys, clock=clock)
    repo.add_package(SHA, 3)
    trust = device(keys, tmp_path)
    deliver(trust, repo)
    with pytest.raises(TrustRefused) as expired:
        trust.check_assignment(assignment(SHA, 3))
    assert expired.value.reason == "tuf_expired"
    clock.now = time.time()
    repo.refresh()
    old = repo.payloads()
    repo.add_package(hashlib.sha256(b"other").hexdigest(), 5)
    deliver(trust, repo)
    trust.check_assignment(assignment(SHA, 3))
    for role, payload in old.items():  # replay the older (validly signed) release
        trust.on_metadata(role, payload)
    with pytest.raises(TrustRefused) as rollback:
        trust.check_assignment(assignment(SHA, 3))
    assert rollback.value.reason == "tuf_rollback"


def test_director_signature_is_verified_by_the_device(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys)
    director = Director.load(keys)
    trust = device(keys, tmp_path)
    unsigned = assignment(SHA, 3)
    raw = director.sign_desired_payload(unsigned.to_bytes())
    assert raw == director.sign_desired_payload(unsigned.to_bytes())  # deterministic
    signed = DesiredAssignment.model_validate_json(raw)
    trust.check_signed(signed, raw)
    with pytest.raises(TrustRefused) as refused:
        trust.check_signed(signed, raw.replace(b'"release":"r"', b'"release":"x"'))
    assert refused.value.reason == "bad_signature"
    assert rotate_director(keys) == keys / "director.pub"
    with pytest.raises(TrustRefused) as unknown:
        trust.check_signed(DesiredAssignment.model_validate_json(
            Director.load(keys).sign_desired_payload(unsigned.to_bytes())), raw)
    assert unknown.value.reason == "unknown_key"


def test_trusted_agent_over_mosquitto_installs_signed_and_refuses_forged(
        tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """The server's TufService publishes retained over real MQTT; the real agent verifies."""
    keys = tmp_path / "keys"
    init_keys(keys)
    director = Director.load(keys)
    publisher = MqttClient("tuf-publisher", BrokerAddress.from_url(mosquitto.url),
                           queue.Queue())
    publisher.start()
    assert publisher.wait_connected(10)
    service = TufService(TufRepository(keys),
                         lambda t, p: publisher.publish(t, p, qos=1, retain=True))
    pkg = make_package(tmp_path / "v1.jfpkg", version="1", seed=1)
    data = Path(pkg.path).read_bytes()
    service.add_package(pkg.sha256, pkg.length)
    service.tick()
    server = FakeServer(mosquitto.url).start()
    config: dict[str, Any] = {"trust": {"root": str(keys / "metadata" / "1.root.json"),
                                        "director_key": str(keys / "director.pub")}}
    agent = Agent(agent_config(tmp_path, mosquitto.url, **config))
    agent.start()
    try:
        server.offer(pkg.sha256, data, 16384)
        a = DesiredAssignment(device_id="dev-1", release="tiny-1",
                              target=f"packages/{pkg.sha256}.jfpkg", sha256=pkg.sha256,
                              length=pkg.length, block_size=16384, sequence=1,
                              issued_at=time.time())
        server.publish_desired(director.sign_desired_payload(a.to_bytes()))
        wait_until(lambda: agent.state.known_good_sha256 == pkg.sha256, what="committed")
        forged = a.model_copy(update={"sequence": 2, "release": "evil",
                                      "signature": "00" * 64, "keyid": director.keyid})
        server.publish_desired(forged.to_bytes())
        event = wait_until(lambda: next((e for e in list(server.events)
                                         if e.type == "security.rejected"), None),
                           what="forged assignment refused")
        assert event.data["reason"] == "bad_signature"
        assert agent.state.assignment_sequence == 1
        assert agent.engines.current is not None
        assert agent.engines.current.sha256 == pkg.sha256
    finally:
        agent.stop()
        server.stop()
        publisher.stop()
