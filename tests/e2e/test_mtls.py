"""End-to-end over mTLS: Mosquitto with the generated config + ACL, the server with its
service identity, and an agent started from an enrollment bundle, all real processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fleet_server.enrollment import enroll_device
from tests.support.mtls import make_fleet
from tests.support.procs import ServerProc, wait_for
from tests.support.tinymodel import make_package

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("signed", [False, True], ids=["mtls", "mtls+tuf+director"])
def test_enrolled_agent_gets_a_release_over_mtls(tmp_path, signed):
    fleet = make_fleet(tmp_path / "pki")
    fleet.broker.start()
    url = f"mqtts://127.0.0.1:{fleet.broker.port}"
    env = {
        "JETFLEET_BROKER_CA_FILE": str(fleet.ca.cert_path),
        "JETFLEET_BROKER_CERT_FILE": str(fleet.service.cert),
        "JETFLEET_BROKER_KEY_FILE": str(fleet.service.key),
    }
    trust = {}
    if signed:
        keys = tmp_path / "keys"
        out = subprocess.run(
            [sys.executable, "-m", "jetfleet", "keys", "init", "--keys-dir", str(keys)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        env["JETFLEET_KEYS_DIR"] = str(keys)
        trust = {"root": keys / "metadata" / "1.root.json", "director_key": keys / "director.pub"}
    server = ServerProc(tmp_path / "srv", url, extra_env=env)
    bundle = enroll_device(
        tmp_path / "pki" / "ca",
        tmp_path / "bundle",
        "cam-7",
        broker_host="127.0.0.1",
        broker_port=fleet.broker.port,
        tags={"site": "lab"},
        state_dir=str(tmp_path / "cam-7-state"),
        trust_files=trust,
    )
    agent = None
    try:
        server.wait_ready()
        info = make_package(tmp_path / "p.jfpkg")
        from jetfleet.client import FleetClient

        FleetClient(server.url).upload_package(info.path)
        server.api("POST", "/api/v1/releases", {"name": "r1", "package_sha256": info.sha256})
        agent_log = tmp_path / "agent.log"
        agent = subprocess.Popen(
            [sys.executable, "-m", "jetfleet", "agent", "run", "--config", str(bundle.agent_yaml)],
            stdout=agent_log.open("wb"),
            stderr=subprocess.STDOUT,
        )

        def online():
            dev = {d["id"]: d for d in server.api("GET", "/api/v1/devices")}.get("cam-7")
            return dev and dev["online"]

        wait_for("cam-7 online over mTLS", online, 30)
        server.api("POST", "/api/v1/assignments", {"release": "r1", "device_ids": ["cam-7"]})

        def serving():
            dev = server.api("GET", "/api/v1/devices/cam-7")
            return dev["active_sha256"] == info.sha256 and dev["serving"]

        wait_for("cam-7 serving r1", serving, 60)
        assert server.api("GET", "/api/v1/devices/cam-7")["tags"]["site"] == "lab"
        if signed:
            assert "trust" in bundle.agent_yaml.read_text()
            # A compromised broker identity: stop the server, then publish a forged
            # (unsigned) assignment with the server's certificate. The device refuses it
            # and keeps serving r1.
            import time

            from jetfleet import topics
            from jetfleet.messages import DesiredAssignment
            from jetfleet.mqtt import BrokerAddress, MqttClient

            server.stop()
            forger = MqttClient(
                "forger",
                BrokerAddress(
                    "127.0.0.1",
                    fleet.broker.port,
                    ca_file=str(fleet.ca.cert_path),
                    cert_file=str(fleet.service.cert),
                    key_file=str(fleet.service.key),
                ),
            )
            forger.start()
            assert forger.wait_connected(10)
            forged = DesiredAssignment(
                device_id="cam-7",
                release="evil",
                target=f"packages/{'0' * 64}.jfpkg",
                sha256="0" * 64,
                length=1000,
                sequence=99,
                issued_at=time.time(),
            )
            forger.publish(topics.desired("cam-7"), forged.to_bytes(), retain=True)
            wait_for(
                "forged assignment refused",
                lambda: "refused by trust checks" in agent_log.read_text(),
                30,
            )
            forger.stop()
            state = json.loads((tmp_path / "cam-7-state" / "state.json").read_text())
            assert state["active_sha256"] == info.sha256
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        server.stop()
        fleet.broker.stop()


def test_enroll_cli_writes_a_bundle_and_refuses_bad_names(tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "jetfleet",
            "device",
            "enroll",
            "cam-1",
            "--tags",
            "site=lab",
            "--no-register",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert {"agent.yaml", "ca.crt", "device.crt", "device.key"} <= {
        p.name for p in (tmp_path / "b").iterdir()
    }
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "jetfleet",
            "device",
            "enroll",
            "cam+1",
            "--no-register",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--out",
            str(tmp_path / "b2"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "invalid device id" in bad.stderr
