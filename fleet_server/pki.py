"""The fleet PKI (DESIGN §5): a fleet CA, per-device client certificates, the broker's
server certificate, the fleet server's own MQTT identity, revocation and the CRL.

Mosquitto runs mTLS with ``use_identity_as_username``: a certificate's common name *is*
the MQTT username that the broker ACL (``fleet_server.brokerconf``) substitutes for
``%u``. So a device certificate is only issued for a legal device id
(``jetfleet.topics.validate_device_id``: no ``+``, ``#`` or ``/``), and device names and
service names (``jetfleet-server``) are kept apart: a device called ``jetfleet-server``
would get the server's ACL.

CA directory layout (every private key 0600, written atomically)::

    private/ca.key  the CA private key (EC P-256, PEM, optionally passphrase-encrypted);
                    ``private/`` is 0700, the rest is readable by the broker's user
    ca.crt      the CA certificate (give it to the broker and to every device)
    crl.pem     the CA-signed CRL; Mosquitto's ``crlfile``. It always exists, and
                OpenSSL refuses *every* client once its ``next_update`` has passed,
                so rewrite it (:meth:`FleetCA.write_crl`) well before then.
    index.json  every certificate issued (serial, kind, name, validity, revocation)
                and the CRL number
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jetfleet.errors import TopicError
from jetfleet.fsutil import atomic_write
from jetfleet.topics import validate_device_id

logger = logging.getLogger(__name__)

CertKind = Literal["device", "server", "service"]

DEFAULT_SERVICE_IDENTITY = "jetfleet-server"
CA_KEY = "private/ca.key"
CA_CERT = "ca.crt"
CRL_FILE = "crl.pem"
INDEX_FILE = "index.json"
_LOCK_FILE = ".lock"
_BACKDATE = timedelta(minutes=5)  # tolerate small clock skew between CA and devices


class PkiError(Exception):
    """The fleet PKI refused a request or cannot read or write its CA directory.

    Local to this module for now; it belongs under ``FleetServerError`` in
    ``fleet_server/errors.py``.
    """


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


@dataclass(frozen=True)
class IssuedCert:
    """A freshly issued certificate with its private key (PEM). The key is never stored
    by the CA: write it out with :meth:`write` and hand it to its owner."""

    name: str
    kind: CertKind
    serial: int
    not_after: datetime
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def write(self, out_dir: Path, stem: str | None = None) -> CertPaths:
        """Write ``{stem}.crt`` and ``{stem}.key`` (0600) into ``out_dir``; stem = name."""
        stem = stem or self.name
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = CertPaths(cert=out / f"{stem}.crt", key=out / f"{stem}.key")
        atomic_write(paths.key, self.key_pem, mode=0o600)
        atomic_write(paths.cert, self.cert_pem, mode=0o644)
        return paths


@dataclass(frozen=True)
class CertRecord:
    """One line of the CA's index: a certificate it issued."""

    serial: int
    kind: CertKind
    name: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": format(self.serial, "x"),
            "kind": self.kind,
            "name": self.name,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CertRecord:
        kind = raw["kind"]
        if kind not in ("device", "server", "service"):
            raise ValueError(f"unknown certificate kind {kind!r}")
        revoked = raw.get("revoked_at")
        return cls(
            serial=int(raw["serial"], 16),
            kind=kind,
            name=str(raw["name"]),
            not_before=datetime.fromisoformat(raw["not_before"]),
            not_after=datetime.fromisoformat(raw["not_after"]),
            revoked_at=datetime.fromisoformat(revoked) if revoked else None,
        )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _key_usage(*, signing: bool = False, ca: bool = False) -> x509.KeyUsage:
    """digitalSignature for TLS leaves; keyCertSign + cRLSign for the CA; nothing else."""
    return x509.KeyUsage(signing, False, False, False, False, ca, ca, False, False)


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c.isspace() or c in "/\\@" for c in host):
                raise PkiError(f"invalid host name {host!r} for the server certificate") from None
            names.append(x509.DNSName(host))
    return names


class FleetCA:
    """The fleet certificate authority in one directory. Build with :meth:`create` or
    :meth:`load`; every mutation (issue, revoke) is recorded in ``index.json``."""

    def __init__(
        self,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        *,
        clock: Callable[[], datetime] = _utcnow,
        crl_validity: timedelta = timedelta(days=30),
    ) -> None:
        self.directory = Path(directory)
        self._key = key
        self.certificate = cert
        self._clock = clock
        self.crl_validity = crl_validity

    # -- construction ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: Path,
        name: str = "jetfleet fleet CA",
        *,
        validity: timedelta = timedelta(days=3650),
        passphrase: bytes | None = None,
        clock: Callable[[], datetime] = _utcnow,
        crl_validity: timedelta = timedelta(days=30),
    ) -> FleetCA:
        """Create a new CA in ``directory``; refuse if one is already there."""
        directory = Path(directory)
        if (directory / CA_KEY).exists() or (directory / CA_CERT).exists():
            raise PkiError(f"{directory} already holds a CA; load it instead of creating one")
        if not name.strip() or any(c in name for c in "\r\n"):
            raise PkiError(f"invalid CA name {name!r}")
        directory.mkdir(parents=True, exist_ok=True)
        private = (directory / CA_KEY).parent
        private.mkdir(mode=0o700, exist_ok=True)
        private.chmod(0o700)
        key = _new_key()
        now = clock()
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_cn(name))
            .issuer_name(_cn(name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        atomic_write(directory / CA_KEY, _key_pem(key, passphrase), mode=0o600)
        atomic_write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        ca = cls(directory, key, cert, clock=clock, crl_validity=crl_validity)
        with ca._locked():
            ca._save_index([], crl_number=0)
            ca._write_crl_locked()
        logger.info("created fleet CA %r in %s", name, directory)
        return ca

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        passphrase: bytes | None = None,
        clock: Callable[[], datetime] = _utcnow,
        crl_validity: timedelta = timedelta(days=30),
    ) -> FleetCA:
        """Load the CA in ``directory``; its key must match its certificate."""
        directory = Path(directory)
        try:
            key = serialization.load_pem_private_key(
                (directory / CA_KEY).read_bytes(), password=passphrase
            )
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        except FileNotFoundError as exc:
            raise PkiError(f"no fleet CA in {directory}: {exc.filename} is missing") from exc
        except (ValueError, TypeError) as exc:
            raise PkiError(f"cannot read the fleet CA in {directory}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{directory / CA_KEY} is not an EC private key")
        if key.public_key() != cert.public_key():
            raise PkiError(f"{directory / CA_KEY} does not belong to {directory / CA_CERT}")
        ca = cls(directory, key, cert, clock=clock, crl_validity=crl_validity)
        ca.issued()  # fail now, not later, on a damaged index
        return ca

    # -- paths -----------------------------------------------------------------------
    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_FILE

    @property
    def name(self) -> str:
        return str(self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    # -- issuing ---------------------------------------------------------------------
    def issue_device_cert(
        self, device_id: str, *, validity: timedelta = timedelta(days=365)
    ) -> IssuedCert:
        """A client certificate with CN = ``device_id`` (a legal device id, not a name
        already used by a service identity)."""
        try:
            validate_device_id(device_id)
        except TopicError as exc:
            raise PkiError(f"refusing to issue a device certificate: {exc}") from exc
        return self._issue("device", device_id, validity, ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_service_cert(
        self, name: str = DEFAULT_SERVICE_IDENTITY, *, validity: timedelta = timedelta(days=365)
    ) -> IssuedCert:
        """A client certificate for the fleet server's own MQTT connection (CN = ``name``)."""
        try:
            validate_device_id(name)
        except TopicError as exc:
            raise PkiError(f"refusing to issue a service certificate: {exc}") from exc
        return self._issue("service", name, validity, ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_server_cert(
        self, hosts: Sequence[str], *, validity: timedelta = timedelta(days=825)
    ) -> IssuedCert:
        """The broker's TLS server certificate; ``hosts`` (DNS names and IP addresses,
        e.g. ``["broker.example", "127.0.0.1"]``) become its subjectAltName."""
        if not hosts:
            raise PkiError("a server certificate needs at least one host name or IP address")
        sans = _host_names(hosts)
        return self._issue("server", hosts[0], validity, ExtendedKeyUsageOID.SERVER_AUTH, sans=sans)

    def _issue(
        self,
        kind: CertKind,
        name: str,
        validity: timedelta,
        usage: x509.ObjectIdentifier,
        *,
        sans: list[x509.GeneralName] | None = None,
    ) -> IssuedCert:
        if validity <= timedelta(0):
            raise PkiError(f"certificate validity must be positive, got {validity}")
        with self._locked():
            records, crl_number = self._load_index()
            if kind != "server":
                other = "service" if kind == "device" else "device"
                if any(r.kind == other and r.name == name for r in records) or (
                    kind == "device" and name == DEFAULT_SERVICE_IDENTITY
                ):
                    raise PkiError(
                        f"{name!r} is a {other} identity; a {kind} may not use that name "
                        "(the broker ACL grants by certificate common name)"
                    )
            key = _new_key()
            public = key.public_key()
            now = self._clock()
            not_before = now - _BACKDATE
            not_after = min(now + validity, self.certificate.not_valid_after_utc)
            builder = (
                x509.CertificateBuilder()
                .subject_name(_cn(name))
                .issuer_name(self.certificate.subject)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(signing=True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(self._authority_key_id(), critical=False)
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            cert = builder.sign(self._key, hashes.SHA256())
            record = CertRecord(
                serial=cert.serial_number,
                kind=kind,
                name=name,
                not_before=not_before,
                not_after=not_after,
            )
            self._save_index([*records, record], crl_number=crl_number)
        logger.info("issued %s certificate %r serial %x", kind, name, cert.serial_number)
        return IssuedCert(
            name=name,
            kind=kind,
            serial=cert.serial_number,
            not_after=not_after,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=_key_pem(key),
        )

    # -- revocation ------------------------------------------------------------------
    def issued(self) -> list[CertRecord]:
        """Every certificate this CA issued, oldest first."""
        return self._load_index()[0]

    def revoked_serials(self) -> frozenset[int]:
        return frozenset(r.serial for r in self.issued() if r.revoked_at is not None)

    def revoke(self, target: int | str) -> list[int]:
        """Revoke one certificate by serial (``int``) or every live certificate issued to
        a name (``str``: a device id or service name), then rewrite ``crl.pem``.

        Returns the serials revoked now (empty if they all already were). The broker
        only sees the new CRL once it reloads it (see docs/trust.md).
        """
        with self._locked():
            records, crl_number = self._load_index()
            if isinstance(target, int):
                matches = [r for r in records if r.serial == target]
                what = f"serial {target:x}"
            else:
                matches = [r for r in records if r.name == target and r.kind != "server"]
                what = f"name {target!r}"
            if not matches:
                raise PkiError(f"this CA never issued a certificate with {what}")
            now = self._clock()
            newly = [r.serial for r in matches if r.revoked_at is None]
            updated = [
                CertRecord(r.serial, r.kind, r.name, r.not_before, r.not_after, now)
                if r.serial in newly
                else r
                for r in records
            ]
            self._save_index(updated, crl_number=crl_number)
            self._write_crl_locked()
        for serial in newly:
            logger.warning("revoked certificate %s serial %x", what, serial)
        return newly

    def write_crl(self) -> Path:
        """Re-sign ``crl.pem`` with a fresh ``next_update`` (run this periodically)."""
        with self._locked():
            return self._write_crl_locked()

    def _write_crl_locked(self) -> Path:
        records, crl_number = self._load_index()
        crl_number += 1
        now = self._clock()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + self.crl_validity)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(self._authority_key_id(), critical=False)
        )
        for record in records:
            if record.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(record.serial)
                    .revocation_date(record.revoked_at)
                    .build()
                )
        crl = builder.sign(self._key, hashes.SHA256())
        atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
        self._save_index(records, crl_number=crl_number)
        return self.crl_path

    def load_crl(self) -> x509.CertificateRevocationList:
        """The CRL on disk, checked against this CA's signature."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"cannot read {self.crl_path}: {exc}") from exc
        try:
            valid = crl.is_signature_valid(self.certificate.public_key())  # type: ignore[arg-type]
        except InvalidSignature:
            valid = False
        if not valid:
            raise PkiError(f"{self.crl_path} is not signed by this CA")
        return crl

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    # -- index -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (CLI commands and the server may run at once)."""
        with open(self.directory / _LOCK_FILE, "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _load_index(self) -> tuple[list[CertRecord], int]:
        path = self.directory / INDEX_FILE
        try:
            raw = json.loads(path.read_text())
            records = [CertRecord.from_json(item) for item in raw["certificates"]]
            crl_number = int(raw["crl_number"])
        except FileNotFoundError as exc:
            raise PkiError(f"{path} is missing; the CA directory is incomplete") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise PkiError(f"{path} is damaged: {exc}") from exc
        return records, crl_number

    def _save_index(self, records: list[CertRecord], *, crl_number: int) -> None:
        data = {"crl_number": crl_number, "certificates": [r.to_json() for r in records]}
        atomic_write(
            self.directory / INDEX_FILE,
            (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(),
            mode=0o600,
        )
