"""The fleet CA: certificate contents, name rules, key file modes, revocation and the CRL."""

from __future__ import annotations

import ipaddress
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.pki import CA_KEY, INDEX_FILE, FleetCA, PkiError

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.create(tmp_path / "ca", "test fleet CA")


def test_ca_certificate_is_a_p256_signing_ca(ca: FleetCA):
    cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    assert cn(cert) == "test fleet CA"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature


def test_device_certificate_names_the_device_for_client_auth(ca: FleetCA, tmp_path: Path):
    issued = ca.issue_device_cert("jetson-01", validity=timedelta(days=30))
    cert = issued.certificate
    assert cn(cert) == "jetson-01"
    assert cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.serial_number == issued.serial
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=10)
    key = serialization.load_pem_private_key(issued.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()
    assert "key_pem" not in repr(issued)


def test_serials_are_random_and_unique(ca: FleetCA):
    serials = {ca.issue_device_cert(f"d{i}").serial for i in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


@pytest.mark.parametrize(
    "name", ["+", "#", "dev-+", "dev/1", "a/#", "", " dev", "dev 1", "-dev", "x" * 64]
)
def test_device_names_that_are_not_device_ids_are_refused(ca: FleetCA, name: str):
    with pytest.raises(PkiError, match="invalid device id"):
        ca.issue_device_cert(name)
    assert ca.issued() == []


def test_service_and_device_names_never_overlap(ca: FleetCA):
    """The broker ACL grants by CN: a device named like the server would be the server."""
    with pytest.raises(PkiError, match="service identity"):
        ca.issue_device_cert("jetfleet-server")
    ca.issue_service_cert("jetfleet-worker")
    with pytest.raises(PkiError, match="service identity"):
        ca.issue_device_cert("jetfleet-worker")
    ca.issue_device_cert("dev-a")
    with pytest.raises(PkiError, match="device identity"):
        ca.issue_service_cert("dev-a")
    with pytest.raises(PkiError, match="invalid device id"):
        ca.issue_service_cert("jetfleet/#")


def test_server_certificate_has_dns_and_ip_names(ca: FleetCA):
    cert = ca.issue_server_cert(["broker.fleet.example", "127.0.0.1", "::1"]).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.fleet.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(PkiError):
        ca.issue_server_cert([])
    with pytest.raises(PkiError):
        ca.issue_server_cert(["bad host/name"])


def test_service_certificate_is_a_client_certificate(ca: FleetCA):
    cert = ca.issue_service_cert().certificate
    assert cn(cert) == "jetfleet-server"
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_private_keys_are_written_0600_and_atomically(ca: FleetCA, tmp_path: Path):
    assert mode(ca.directory / CA_KEY) == 0o600
    assert mode((ca.directory / CA_KEY).parent) == 0o700
    assert mode(ca.directory / INDEX_FILE) == 0o600
    paths = ca.issue_device_cert("dev-a").write(tmp_path / "out")
    assert mode(paths.key) == 0o600
    assert mode(paths.cert) == 0o644
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dev-a.crt", "dev-a.key"]
    assert not [p for p in ca.directory.rglob("*.tmp")]


def test_create_refuses_to_overwrite_a_ca(ca: FleetCA):
    with pytest.raises(PkiError, match="already holds a CA"):
        FleetCA.create(ca.directory)


def test_load_from_disk_keeps_issuing_and_revoking(ca: FleetCA):
    first = ca.issue_device_cert("dev-a")
    again = FleetCA.load(ca.directory)
    assert again.certificate == ca.certificate
    second = again.issue_device_cert("dev-b")
    second.certificate.verify_directly_issued_by(ca.certificate)
    assert [r.name for r in again.issued()] == ["dev-a", "dev-b"]
    again.revoke("dev-a")
    assert FleetCA.load(ca.directory).revoked_serials() == {first.serial}


def test_passphrase_protects_the_ca_key(tmp_path: Path):
    FleetCA.create(tmp_path / "ca", passphrase=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "ca" / CA_KEY).read_bytes()
    with pytest.raises(PkiError):
        FleetCA.load(tmp_path / "ca")
    with pytest.raises(PkiError):
        FleetCA.load(tmp_path / "ca", passphrase=b"wrong")
    FleetCA.load(tmp_path / "ca", passphrase=b"correct horse").issue_device_cert("d")


def test_load_refuses_a_key_from_another_ca(tmp_path: Path):
    FleetCA.create(tmp_path / "one")
    FleetCA.create(tmp_path / "two")
    (tmp_path / "one" / CA_KEY).write_bytes((tmp_path / "two" / CA_KEY).read_bytes())
    with pytest.raises(PkiError, match="does not belong"):
        FleetCA.load(tmp_path / "one")
    with pytest.raises(PkiError, match="no fleet CA"):
        FleetCA.load(tmp_path / "missing")


def test_damaged_index_is_reported(ca: FleetCA):
    (ca.directory / INDEX_FILE).write_text("{not json")
    with pytest.raises(PkiError, match="damaged"):
        FleetCA.load(ca.directory)


def test_new_ca_has_an_empty_signed_crl(ca: FleetCA):
    crl = ca.load_crl()
    assert len(crl) == 0
    assert crl.issuer == ca.certificate.subject
    assert crl.next_update_utc is not None


def test_revoke_writes_the_serial_into_a_signed_crl(tmp_path: Path):
    ca = FleetCA.create(tmp_path / "ca", clock=lambda: T0, crl_validity=timedelta(days=7))
    old = ca.issue_device_cert("dev-a")
    new = ca.issue_device_cert("dev-a")  # re-enrolled: both certs are live
    other = ca.issue_device_cert("dev-b")
    number_before = ca.load_crl().extensions.get_extension_for_class(x509.CRLNumber).value
    assert sorted(ca.revoke("dev-a")) == sorted([old.serial, new.serial])
    crl = ca.load_crl()
    assert {r.serial_number for r in crl} == {old.serial, new.serial}
    assert crl.get_revoked_certificate_by_serial_number(other.serial) is None
    assert crl.next_update_utc == T0 + timedelta(days=7)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value
    assert number.crl_number > number_before.crl_number
    assert ca.revoke("dev-a") == []  # already revoked: nothing new, no error
    assert ca.revoke(other.serial) == [other.serial]
    assert {r.serial_number for r in ca.load_crl()} == {old.serial, new.serial, other.serial}


def test_revoking_something_never_issued_is_refused(ca: FleetCA):
    with pytest.raises(PkiError, match="never issued"):
        ca.revoke("ghost")
    with pytest.raises(PkiError, match="never issued"):
        ca.revoke(12345)


def test_crl_from_another_ca_is_detected(tmp_path: Path):
    one = FleetCA.create(tmp_path / "one")
    two = FleetCA.create(tmp_path / "two")
    one.crl_path.write_bytes(two.crl_path.read_bytes())
    with pytest.raises(PkiError, match="not signed by this CA"):
        one.load_crl()
