"""Trust fixtures: a fleet CA and a real Mosquitto started from the generated mTLS config."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.pki import CA_KEY, CertPaths, FleetCA
from tests.support.mosquitto import find_mosquitto
from tests.support.mtls import MtlsFleet, make_fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[MtlsFleet]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run `make test`, which installs it")
    mtls = make_fleet(tmp_path)
    mtls.broker.start()
    try:
        yield mtls
    finally:
        mtls.close()


def forge_client_cert(ca: FleetCA, common_name: str, out_dir: Path) -> CertPaths:
    """A client certificate signed with the CA's own key, bypassing ``issue_device_cert``'s
    checks: what an attacker holding a CA-signed cert with any CN could present."""
    ca_key = serialization.load_pem_private_key((ca.directory / CA_KEY).read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"forged-{cert.serial_number:x}"
    paths = CertPaths(stem.with_suffix(".crt"), stem.with_suffix(".key"))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths
