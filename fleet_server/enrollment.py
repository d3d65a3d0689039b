"""Device enrollment bundles, broker set-up and revocation (DESIGN §5).

``jetfleet broker config`` → :func:`setup_broker`; ``jetfleet device enroll`` →
:func:`enroll_device`; ``jetfleet device revoke`` → :func:`revoke_device`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from fleet_server.brokerconf import BrokerConfigPaths, write_broker_config
from fleet_server.pki import DEFAULT_SERVICE_IDENTITY, FleetCA, PkiError
from jetfleet.topics import validate_device_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerSetup:
    config: BrokerConfigPaths
    server_identity_dir: Path


@dataclass(frozen=True)
class Bundle:
    directory: Path
    agent_yaml: Path
    serial: int


def open_ca(ca_dir: Path) -> FleetCA:
    """Load the fleet CA, creating it on first use."""
    ca_dir = Path(ca_dir)
    if (ca_dir / "ca.crt").exists():
        return FleetCA.load(ca_dir)
    logger.info("creating a new fleet CA in %s", ca_dir)
    return FleetCA.create(ca_dir)


def setup_broker(
    ca_dir: Path,
    out_dir: Path,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    port: int = 8883,
    run_as_user: str | None = None,
) -> BrokerSetup:
    """Write a Mosquitto mTLS config + ACL, the broker's TLS cert and the server's identity."""
    ca = open_ca(ca_dir)
    out_dir = Path(out_dir)
    certs = out_dir / "certs"
    tls = ca.issue_server_cert(list(hosts)).write(certs, "broker")
    shutil.copyfile(ca.cert_path, certs / "ca.crt")
    identity_dir = out_dir / "server-identity"
    ca.issue_service_cert(DEFAULT_SERVICE_IDENTITY).write(identity_dir, "server")
    shutil.copyfile(ca.cert_path, identity_dir / "ca.crt")
    paths = write_broker_config(
        out_dir,
        port=port,
        ca=certs / "ca.crt",
        server_cert=tls.cert,
        server_key=tls.key,
        crl=ca.crl_path,
        run_as_user=run_as_user,
    )
    return BrokerSetup(config=paths, server_identity_dir=identity_dir)


def enroll_device(
    ca_dir: Path,
    out_dir: Path,
    device_id: str,
    *,
    broker_host: str,
    broker_port: int = 8883,
    tags: dict[str, str] | None = None,
    state_dir: str = "/var/lib/jetfleet",
    trust_files: dict[str, Path] | None = None,
) -> Bundle:
    """Write a device bundle: key + client cert, CA cert, trust files, agent.yaml."""
    validate_device_id(device_id)
    ca = open_ca(ca_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise PkiError(f"bundle directory {out} is not empty; refusing to overwrite")
    issued = ca.issue_device_cert(device_id)
    paths = issued.write(out, "device")
    shutil.copyfile(ca.cert_path, out / "ca.crt")
    trust: dict[str, str] = {}
    for name, src in (trust_files or {}).items():
        dest = out / Path(src).name
        shutil.copyfile(src, dest)
        trust[name] = dest.name
    config = {
        "device_id": device_id,
        "broker_url": f"mqtts://{broker_host}:{broker_port}",
        "tls": {"ca_file": "ca.crt", "cert_file": paths.cert.name, "key_file": paths.key.name},
        "state_dir": state_dir,
        "tags": dict(tags or {}),
    }
    if trust:
        config["trust"] = trust
    agent_yaml = out / "agent.yaml"
    agent_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    (out / "bundle.json").write_text(json.dumps({"device_id": device_id, "serial": issued.serial}))
    return Bundle(directory=out, agent_yaml=agent_yaml, serial=issued.serial)


def revoke_device(ca_dir: Path, device_id: str) -> list[int]:
    """Revoke every live certificate of a device and rewrite the CRL the broker reads.

    Mosquitto re-reads the CRL on SIGHUP (new connections refused); a session opened
    before the reload lasts until the broker restarts (docs/trust.md).
    """
    ca = FleetCA.load(Path(ca_dir))
    serials = ca.revoke(device_id)
    ca.write_crl()
    return serials
