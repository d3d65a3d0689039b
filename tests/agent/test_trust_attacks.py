"""Attacks on a trusted agent (DESIGN §5): each is refused, the device keeps serving its
known-good engine, and a ``security.rejected`` (or ``ota.failed``) event says why.

Real Mosquitto, real python-tuf (ngclient on the agent, Metadata API for the test's
repository), real Ed25519. Runs with only ``.[agent,test]``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner

from edge_agent import Agent
from edge_agent.errors import TrustRefused
from edge_agent.trust import DeviceTrust, TrustConfig
from jetfleet.messages import Command, DesiredAssignment
from tests.agent.conftest import package_bytes
from tests.agent.fleet import FakeServer, agent_config
from tests.support.mosquitto import MosquittoBroker
from tests.support.polling import wait_until
from tests.support.tufsign import SigningFleet, publish_tuf

DAY = 86_400.0


def desired(info: Any, release: str, sequence: int, **over: Any) -> DesiredAssignment:
    fields: dict[str, Any] = {
        "device_id": "dev-1", "release": release, "target": f"packages/{info.sha256}.jfpkg",
        "sha256": info.sha256, "length": info.length, "block_size": 16384,
        "sequence": sequence, "issued_at": time.time()}
    fields.update(over)
    return DesiredAssignment(**fields)


def rejections(server: FakeServer) -> list[Any]:
    return [e for e in list(server.events) if e.type == "security.rejected"]


def wait_rejected(server: FakeServer, reason: str) -> Any:
    return wait_until(lambda: next((e for e in rejections(server)
                                    if e.data.get("reason") == reason), None),
                      what=f"security.rejected {reason}")


def serving(agent: Agent, sha256: str) -> bool:
    engine = agent.engines.current
    return engine is not None and engine.sha256 == sha256


@pytest.fixture
def fleet(tmp_path: Path) -> SigningFleet:
    return SigningFleet(tmp_path / "keys")


@pytest.fixture
def trusted(tmp_path: Path, mosquitto: MosquittoBroker, server: FakeServer,
            fleet: SigningFleet, packages: Any) -> Iterator[Agent]:
    """A trusted agent whose known-good engine is v1, installed through TUF + director.

    The repository then publishes a second release listing v1 and v2, so the device
    trusts timestamp version 3 by the time a test attacks it.
    """
    v1, v2 = packages["v1"], packages["v2"]
    fleet.add_target(v1.sha256, v1.length)
    publish_tuf(server.client, fleet.release())
    agent = Agent(agent_config(tmp_path, mosquitto.url, trust=fleet.trust_config()))
    agent.start()
    try:
        server.offer(v1.sha256, package_bytes(v1), 16384)
        server.offer(v2.sha256, package_bytes(v2), 16384)
        server.publish_desired(fleet.sign(desired(v1, "tiny-1", 1)))
        wait_until(lambda: agent.state.known_good_sha256 == v1.sha256, what="v1 committed")
        fleet.add_target(v2.sha256, v2.length)
        publish_tuf(server.client, fleet.release())
        yield agent
    finally:
        agent.stop()


def assert_untouched(agent: Agent, packages: Any, sequence: int = 1) -> None:
    v1 = packages["v1"]
    assert serving(agent, v1.sha256)
    assert agent.state.known_good_sha256 == v1.sha256
    assert agent.state.assignment_sequence == sequence


def test_signed_assignment_matching_tuf_is_installed(trusted, server, fleet, packages):
    v2 = packages["v2"]
    server.publish_desired(fleet.sign(desired(v2, "tiny-2", 2)))
    wait_until(lambda: serving(trusted, v2.sha256), what="v2 serving")
    assert not rejections(server)


def test_unsigned_assignment_is_refused(trusted, server, packages):
    server.publish_desired(desired(packages["v2"], "tiny-2", 2).to_bytes())
    event = wait_rejected(server, "unsigned")
    assert event.sequence == 2
    assert_untouched(trusted, packages)


def test_assignment_signed_by_unknown_key_is_refused(trusted, server, fleet, packages):
    rogue = Ed25519PrivateKey.generate()
    server.publish_desired(fleet.sign(desired(packages["v2"], "tiny-2", 2), key=rogue))
    wait_rejected(server, "unknown_key")
    assert_untouched(trusted, packages)


def test_assignment_altered_after_signing_is_refused(trusted, server, fleet, packages):
    signed = fleet.sign(desired(packages["v2"], "tiny-2", 2))
    server.publish_desired(signed.replace(b'"sequence":2', b'"sequence":9'))
    wait_rejected(server, "bad_signature")
    assert_untouched(trusted, packages)


def test_replayed_older_assignment_is_refused(trusted, server, fleet, packages):
    v1, v2 = packages["v1"], packages["v2"]
    old = fleet.sign(desired(v1, "tiny-1", 1, issued_at=1.0))  # a validly signed old one
    server.publish_desired(fleet.sign(desired(v2, "tiny-2", 3)))
    wait_until(lambda: trusted.state.known_good_sha256 == v2.sha256, what="v2 committed")
    server.publish_desired(old)
    event = wait_until(lambda: next((e for e in rejections(server) if e.sequence == 1), None),
                       what="replay refused")
    assert "older" in event.message or "reuses" in event.message
    assert serving(trusted, v2.sha256)
    assert trusted.state.assignment_sequence == 3


def test_package_target_signed_by_unknown_key_is_refused(trusted, server, fleet, packages):
    v2 = packages["v2"]
    fleet.add_target(v2.sha256, v2.length, path=f"packages/{v2.sha256}.jfpkg")
    publish_tuf(server.client, fleet.release(targets_signer=CryptoSigner.generate_ed25519()))
    server.publish_desired(fleet.sign(desired(v2, "tiny-2", 2)))
    wait_rejected(server, "tuf_bad_signature")
    assert_untouched(trusted, packages)


def test_assignment_disagreeing_with_tuf_target_is_refused(trusted, server, fleet, packages):
    v1, v2 = packages["v1"], packages["v2"]
    # Mix and match: a genuine director signature on v2's bytes under v1's target path.
    server.publish_desired(fleet.sign(desired(v2, "tiny-2", 2,
                                              target=f"packages/{v1.sha256}.jfpkg")))
    event = wait_rejected(server, "target_mismatch")
    assert "TUF target" in event.message
    assert_untouched(trusted, packages)


def test_replayed_older_tuf_metadata_is_refused(trusted, server, fleet, packages):
    publish_tuf(server.client, fleet.history[0])  # validly signed, one release older
    server.publish_desired(fleet.sign(desired(packages["v2"], "tiny-2", 2)))
    wait_rejected(server, "tuf_rollback")
    assert_untouched(trusted, packages)


def test_expired_tuf_metadata_is_refused(trusted, server, fleet, packages):
    fleet.clock = lambda: time.time() - 10 * DAY  # a freeze: metadata that expired days ago
    publish_tuf(server.client, fleet.release())
    server.publish_desired(fleet.sign(desired(packages["v2"], "tiny-2", 2)))
    wait_rejected(server, "tuf_expired")
    assert_untouched(trusted, packages)


def test_flipped_byte_in_transfer_is_refused(trusted, server, fleet, packages):
    v2 = packages["v2"]
    data = bytearray(package_bytes(v2))
    data[len(data) // 2] ^= 0x01  # every frame carries a valid digest of the flipped bytes
    server.offer(v2.sha256, bytes(data), 16384)
    server.publish_desired(fleet.sign(desired(v2, "tiny-2", 2)))
    event = wait_until(lambda: next((e for e in list(server.events) if e.type == "ota.failed"),
                                    None), what="ota.failed")
    assert "sha256" in event.message
    assert_untouched(trusted, packages, sequence=2)
    assert not (trusted.slots.root / v2.sha256).exists()


def test_commands_need_a_director_signature(trusted, server, fleet, packages):
    cmd = Command(device_id="dev-1", command="rollback", sequence=5, issued_at=time.time())
    server.client.publish("jetfleet/v1/d/dev-1/cmd", cmd.to_bytes())
    wait_rejected(server, "unsigned")
    assert trusted.state.command_sequence == 0
    resync = Command(device_id="dev-1", command="resync", sequence=6, issued_at=time.time())
    server.client.publish("jetfleet/v1/d/dev-1/cmd", fleet.sign(resync))
    wait_until(lambda: trusted.state.command_sequence == 6, what="signed command accepted")
    assert_untouched(trusted, packages)


# -- the TUF check on the downloaded file, without MQTT -------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_downloaded_file_must_match_the_tuf_target(tmp_path, fleet, damage):
    data = b"jetfleet package bytes " * 1000
    sha = hashlib.sha256(data).hexdigest()
    fleet.add_target(sha, len(data))
    trust = DeviceTrust(TrustConfig(**fleet.trust_config()), tmp_path / "tuf")
    for role, payload in fleet.release().items():
        trust.on_metadata(role, payload)
    good = tmp_path / "good.jfpkg"
    good.write_bytes(data)
    assignment = desired(type("Info", (), {"sha256": sha, "length": len(data)}), "r", 1)
    trust.check_assignment(assignment)
    trust.verify_file(assignment, good)
    bad = tmp_path / "bad.jfpkg"
    bad.write_bytes({"flip": data[:10] + b"X" + data[11:], "truncate": data[:-1],
                     "extend": data + b"\0"}[damage])
    with pytest.raises(TrustRefused) as refused:
        trust.verify_file(assignment, bad)
    assert refused.value.reason == "target_hash_mismatch"
    # the trusted metadata is on disk, and a new DeviceTrust (a reboot) still has it
    assert (tmp_path / "tuf" / "timestamp.json").is_file()
    again = DeviceTrust(TrustConfig(**fleet.trust_config()), tmp_path / "tuf")
    with pytest.raises(TrustRefused) as missing:
        again.check_assignment(assignment)  # nothing received yet: no remote timestamp
    assert missing.value.reason == "tuf_metadata_missing"
