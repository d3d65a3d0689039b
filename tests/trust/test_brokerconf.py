"""The generated Mosquitto config and ACL (the broker tests run Mosquitto on exactly this)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet_server.brokerconf import BrokerConfigError, render_acl, write_broker_config
from tests.support.mosquitto import find_mosquitto


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def write(tmp_path: Path, **overrides) -> tuple[str, str]:
    args = {
        "port": 8883,
        "ca": tmp_path / "ca.crt",
        "server_cert": tmp_path / "broker.crt",
        "server_key": tmp_path / "broker.key",
        "crl": tmp_path / "crl.pem",
    }
    args.update(overrides)
    paths = write_broker_config(tmp_path / "out", **args)
    return paths.conf.read_text(), paths.acl.read_text()


def test_device_rules_name_only_the_devices_own_topics():
    acl = lines(render_acl())
    assert acl[:2] == ["user jetfleet-server", "topic readwrite jetfleet/v1/#"]
    patterns = acl[2:]
    assert all(p.startswith("pattern ") for p in patterns)
    writes = {p.split()[2] for p in patterns if p.split()[1] == "write"}
    reads = {p.split()[2] for p in patterns if p.split()[1] == "read"}
    assert writes == {
        f"jetfleet/v1/d/%u/{k}" for k in ("state", "telemetry", "events", "fetch", "upload")
    }
    assert reads == {f"jetfleet/v1/d/%u/{k}" for k in ("desired", "cmd", "blocks")} | {
        "jetfleet/v1/a/+/blocks",
        "jetfleet/v1/tuf/+",
    }
    assert not [p for p in patterns if "readwrite" in p]


def test_config_is_mtls_only_with_bounded_queues(tmp_path: Path):
    conf, _ = write(tmp_path, persistence_dir=tmp_path / "db")
    got = lines(conf)
    for expected in (
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {(tmp_path / 'out' / 'acl').resolve()}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"crlfile {(tmp_path / 'crl.pem').resolve()}",
        "listener 8883 0.0.0.0",
        "max_queued_messages 10000",
        "set_tcp_nodelay true",
        "persistence true",
        f"persistence_location {(tmp_path / 'db').resolve()}/",
    ):
        assert expected in got
    assert not [ln for ln in got if ln.startswith("user ")]
    packet = int(next(ln for ln in got if ln.startswith("max_packet_size")).split()[1])
    assert 1024 * 1024 + 1024 < packet <= 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server_identity": "jetfleet/#"}, "server identity"),
        ({"server_identity": "+"}, "server identity"),
        ({"port": 0}, "port"),
        ({"bind": "0.0.0.0\nallow_anonymous true"}, "bind"),
        ({"crl": Path("/tmp/crl.pem\nallow_anonymous true")}, "crlfile"),
        ({"ca": Path("/tmp/ca.crt ")}, "cafile"),
        ({"run_as_user": "root\nallow_anonymous true"}, "run_as_user"),
        ({"max_queued_messages": 0}, "max_queued_messages"),
    ],
)
def test_values_that_would_break_or_open_the_config_are_refused(
    tmp_path: Path, overrides: dict, message: str
):
    with pytest.raises(BrokerConfigError, match=message):
        write(tmp_path, **overrides)
    assert not (tmp_path / "out" / "mosquitto.conf").exists()


def test_mosquitto_parses_the_generated_config(tmp_path: Path):
    """Every option (persistence and the default bind included) is one Mosquitto 2.0
    knows: it logs "Config loaded" and only then fails, on the missing certificate files
    (or, as root, on files its `mosquitto` user cannot read)."""
    exe = find_mosquitto()
    if exe is None:
        pytest.fail("mosquitto is not installed; run `make test`, which installs it")
    write(tmp_path, port=1)
    proc = subprocess.run(
        [exe, "-c", str(tmp_path / "out" / "mosquitto.conf")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Config loaded from" in output, output
    assert "Unknown configuration" not in output
