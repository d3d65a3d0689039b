"""Trust key files: the TUF roles' keys and the director key (``jetfleet keys``).

Layout of a keys directory (DESIGN §5, docs/trust.md "TUF and the director")::

    root/           0700  offline root key(s) ``root-{keyid16}.pem``: move away after use
    online/         0700  ``targets.pem``, ``snapshot.pem``, ``timestamp.pem``
    director.pem    0600  the director's Ed25519 key (signs assignments and commands)
    director.pub    0644  its public key, for ``trust.director_key`` in agent.yaml
    metadata/             the public TUF repository (``{v}.root.json``, ``timestamp.json``...)

:func:`init_keys` creates it; :func:`rotate_key` replaces one role's key(s).
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, Root

from fleet_server.errors import TrustError
from jetfleet.fsutil import atomic_write

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
ROTATABLE = ("root", *ONLINE_ROLES)
ROOT_DIR, ONLINE_DIR, METADATA_DIR = "root", "online", "metadata"
DIRECTOR_KEY, DIRECTOR_PUB = "director.pem", "director.pub"


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid; re-signed at half of it."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def of(self, role: str) -> timedelta:
        value: timedelta = getattr(self, role)
        return value


def utc(clock: Callable[[], float]) -> datetime:
    """``clock()`` as an aware UTC datetime with whole seconds (TUF's format)."""
    return datetime.fromtimestamp(int(clock()), tz=timezone.utc)


@contextmanager
def locked(keys_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``{keys_dir}/.lock``: the CLI and the server both write."""
    with (keys_dir / ".lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_signer(path: Path) -> CryptoSigner:
    """A TUF signer from an Ed25519 PKCS#8 PEM file."""
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise TrustError(f"cannot load key {path}: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise TrustError(f"key {path} is not an Ed25519 key")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def _new_signer(path: Path) -> CryptoSigner:
    signer = CryptoSigner.generate_ed25519()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, signer.private_bytes, mode=0o600)
    return signer


def root_signers(root_dir: Path) -> list[CryptoSigner]:
    """Every root key found in ``root_dir`` (the offline directory the operator keeps)."""
    if not root_dir.is_dir():
        raise TrustError(f"offline root key directory {root_dir} is not there")
    return [load_signer(p) for p in sorted(root_dir.glob("root-*.pem"))]


def latest_version(metadata_dir: Path, role: str) -> int:
    versions = [
        int(p.name.split(".", 1)[0])
        for p in metadata_dir.glob(f"*.{role}.json")
        if p.name.split(".", 1)[0].isdigit()
    ]
    if not versions:
        raise TrustError(f"no {role} metadata in {metadata_dir}; run `jetfleet keys init`")
    return max(versions)


def sign_root(root: Metadata[Root], signers: list[CryptoSigner], metadata_dir: Path) -> None:
    """Sign ``root`` with every signer and write ``{v}.root.json`` and ``root.json``."""
    root.signatures.clear()
    for signer in signers:
        root.sign(signer, append=True)
    data = root.to_bytes()
    atomic_write(metadata_dir / f"{root.signed.version}.root.json", data)
    atomic_write(metadata_dir / "root.json", data)


def _director_key(keys_dir: Path) -> None:
    private = Ed25519PrivateKey.generate()
    atomic_write(keys_dir / DIRECTOR_KEY, _pem(private), mode=0o600)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(keys_dir / DIRECTOR_PUB, public)


def init_keys(
    keys_dir: Path,
    *,
    root_keys: int = 1,
    root_threshold: int = 1,
    clock: Callable[[], float] = time.time,
    expiry: Expiry | None = None,
) -> Path:
    """Create every key and version 1 of the TUF metadata; return the metadata dir.

    Refuses to overwrite an existing keys directory. ``metadata/1.root.json`` is what
    devices are given as ``trust.root``; ``director.pub`` is their ``trust.director_key``.
    """
    from fleet_server.tufrepo import TufRepository  # the repository signs the first versions

    if not 1 <= root_threshold <= root_keys:
        raise TrustError(f"root threshold {root_threshold} must be within 1..{root_keys}")
    keys_dir = Path(keys_dir)
    if (keys_dir / METADATA_DIR).exists() or (keys_dir / DIRECTOR_KEY).exists():
        raise TrustError(f"{keys_dir} already holds keys; use `jetfleet keys rotate`")
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (keys_dir / METADATA_DIR).mkdir()
    expiry = expiry or Expiry()
    with locked(keys_dir):
        roots = [_new_signer_root(keys_dir / ROOT_DIR) for _ in range(root_keys)]
        root = Metadata(Root(expires=utc(clock) + expiry.root, consistent_snapshot=True))
        for signer in roots:
            root.signed.add_key(signer.public_key, Root.type)
        root.signed.roles[Root.type].threshold = root_threshold
        for role in ONLINE_ROLES:
            root.signed.add_key(_new_signer(keys_dir / ONLINE_DIR / f"{role}.pem").public_key, role)
        sign_root(root, roots, keys_dir / METADATA_DIR)
        _director_key(keys_dir)
        TufRepository(keys_dir, clock=clock, expiry=expiry).create_locked()
    return keys_dir / METADATA_DIR


def _new_signer_root(root_dir: Path) -> CryptoSigner:
    signer = CryptoSigner.generate_ed25519()
    return _write_root_key(root_dir, signer)


def _write_root_key(root_dir: Path, signer: CryptoSigner) -> CryptoSigner:
    root_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(
        root_dir / f"root-{signer.public_key.keyid[:16]}.pem", signer.private_bytes, mode=0o600
    )
    return signer


def rotate_key(
    keys_dir: Path,
    role: str,
    *,
    root_key_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
    expiry: Expiry | None = None,
) -> int:
    """Replace ``role``'s key(s) and publish a new root version; return that version.

    Needs the offline root keys (``root_key_dir``, default ``{keys_dir}/root``). A root
    rotation replaces every root key with a new one (same count and threshold) and signs
    the new root with the old keys *and* the new ones, so devices can follow it. A
    targets/snapshot/timestamp rotation also re-signs that role's metadata (and the ones
    above it) with the new key at once.
    """
    from fleet_server.tufrepo import TufRepository

    if role not in ROTATABLE:
        raise TrustError(f"cannot rotate {role!r}; expected one of {', '.join(ROTATABLE)}")
    keys_dir = Path(keys_dir)
    root_dir = root_key_dir or keys_dir / ROOT_DIR
    metadata_dir = keys_dir / METADATA_DIR
    expiry = expiry or Expiry()
    with locked(keys_dir):
        version = latest_version(metadata_dir, Root.type)
        root = Metadata[Root].from_file(str(metadata_dir / f"{version}.root.json"))
        old = root_signers(root_dir)
        known = set(root.signed.roles[Root.type].keyids)
        old = [s for s in old if s.public_key.keyid in known]
        if len(old) < root.signed.roles[Root.type].threshold:
            raise TrustError(
                f"{len(old)} root key(s) in {root_dir}; root threshold is "
                f"{root.signed.roles[Root.type].threshold}"
            )
        signers = list(old)
        if role == Root.type:
            new = [CryptoSigner.generate_ed25519() for _ in known]
            for keyid in known:
                root.signed.revoke_key(keyid, Root.type)
            for signer in new:
                root.signed.add_key(signer.public_key, Root.type)
            signers += new
        else:
            for keyid in list(root.signed.roles[role].keyids):
                root.signed.revoke_key(keyid, role)
            root.signed.add_key(_new_signer(keys_dir / ONLINE_DIR / f"{role}.pem").public_key, role)
        root.signed.version += 1
        root.signed.expires = utc(clock) + expiry.root
        sign_root(root, signers, metadata_dir)
        if role == Root.type:  # the new keys replace the old ones on disk only once signed
            for signer in old:
                (root_dir / f"root-{signer.public_key.keyid[:16]}.pem").unlink()
            for signer in new:
                _write_root_key(root_dir, signer)
        else:
            TufRepository(keys_dir, clock=clock, expiry=expiry).resign_locked(role)
        return root.signed.version


def director_private_key(keys_dir: Path) -> Ed25519PrivateKey:
    path = Path(keys_dir) / DIRECTOR_KEY
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise TrustError(f"cannot load the director key {path}: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise TrustError(f"director key {path} is not an Ed25519 key")
    return private


def rotate_director(keys_dir: Path) -> Path:
    """A new director key; return ``director.pub`` (every agent.yaml must get it)."""
    keys_dir = Path(keys_dir)
    with locked(keys_dir):
        _director_key(keys_dir)
    return keys_dir / DIRECTOR_PUB
