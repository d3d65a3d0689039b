"""The fleet's TUF repository (DESIGN §5): targets, snapshot, timestamp, signed online.

Metadata lives in ``{keys_dir}/metadata`` with consistent snapshots, laid out the way
python-tuf's ngclient asks for it: ``{v}.root.json``, ``timestamp.json``,
``{v}.snapshot.json``, ``{v}.targets.json``. Every model package is the target
``packages/{sha256}.jfpkg``; TensorRT engines can be added as ``engines/...``.

:class:`TufRepository` is stateless between calls: every write reads the newest files
under the keys directory's lock, so ``jetfleet keys rotate`` and the server can share it.
:class:`TufService` publishes the metadata retained on ``jetfleet/v1/tuf/{role}`` and
re-signs what is about to expire (call :meth:`TufService.tick`, or run its thread).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from fleet_server.errors import TrustError
from fleet_server.keys import (
    METADATA_DIR,
    ONLINE_DIR,
    Expiry,
    latest_version,
    load_signer,
    locked,
    utc,
)
from fleet_server.worker import Periodic
from jetfleet import topics
from jetfleet.canonical import canonical_json
from jetfleet.fsutil import atomic_write
from jetfleet.package import PACKAGE_SUFFIX

logger = logging.getLogger(__name__)

KEEP_VERSIONS = 4  # older snapshot/targets files are deleted (clients fetch the newest)
_FILE = re.compile(r"^(timestamp|root|[1-9][0-9]{0,9}\.(root|snapshot|targets))\.json$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def package_target(sha256: str) -> str:
    return f"packages/{sha256}{PACKAGE_SUFFIX}"


class TufRepository:
    def __init__(
        self,
        keys_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        expiry: Expiry | None = None,
    ) -> None:
        self.keys_dir = Path(keys_dir)
        self.metadata_dir = self.keys_dir / METADATA_DIR
        self.clock = clock
        self.expiry = expiry or Expiry()

    # -- reading -------------------------------------------------------------------
    def file(self, name: str) -> bytes | None:
        """The bytes of one metadata file as ngclient names it, or None."""
        if not _FILE.match(name):
            return None
        try:
            return (self.metadata_dir / name).read_bytes()
        except OSError:
            return None

    def _load(self, role: str) -> Metadata[Any]:
        name = (
            "timestamp.json"
            if role == Timestamp.type
            else (f"{latest_version(self.metadata_dir, role)}.{role}.json")
        )
        try:
            return Metadata.from_file(str(self.metadata_dir / name))
        except (OSError, DeserializationError) as exc:
            raise TrustError(f"cannot read TUF {role} metadata: {exc}") from exc

    def targets(self) -> dict[str, TargetFile]:
        md: Metadata[Targets] = self._load(Targets.type)
        return dict(md.signed.targets)

    def root_versions(self) -> list[bytes]:
        last = latest_version(self.metadata_dir, Root.type)
        return [(self.metadata_dir / f"{v}.root.json").read_bytes() for v in range(1, last + 1)]

    def payloads(self) -> dict[str, bytes]:
        """role → the retained payload of ``tuf/{role}``.

        ``tuf/root`` carries every root version (a device several rotations behind
        needs each one in turn): ``{"v": 1, "roots": ["<1.root.json>", ...]}``.
        """
        roots = [data.decode("utf-8") for data in self.root_versions()]
        out = {Root.type: canonical_json({"v": 1, "roots": roots})}
        for role in (Targets.type, Snapshot.type):
            out[role] = (
                self.metadata_dir / f"{latest_version(self.metadata_dir, role)}.{role}.json"
            ).read_bytes()
        out[Timestamp.type] = (self.metadata_dir / "timestamp.json").read_bytes()
        return out

    # -- writing -------------------------------------------------------------------
    def create_locked(self) -> None:
        """Version 1 of targets, snapshot and timestamp (``init_keys`` holds the lock)."""
        now = utc(self.clock)
        targets = Metadata(Targets(expires=now + self.expiry.targets))
        self._write(targets, Targets.type)
        snapshot = Metadata(Snapshot(expires=now + self.expiry.snapshot))
        self._write(snapshot, Snapshot.type)
        timestamp = Metadata(Timestamp(expires=now + self.expiry.timestamp))
        self._write(timestamp, Timestamp.type)

    def add_targets(self, entries: Iterable[tuple[str, str, int]]) -> bool:
        """Add ``(path, sha256, length)`` targets in one new version; False if none is new.

        A path already present with a different hash or length is refused: a
        content-addressed path never changes meaning.
        """
        with locked(self.keys_dir):
            md: Metadata[Targets] = self._load(Targets.type)
            changed = False
            for path, sha256, length in entries:
                if not _SHA256.match(sha256) or length <= 0:
                    raise TrustError(f"bad target {path!r}: sha256 {sha256!r}, length {length}")
                new = TargetFile(length=length, hashes={"sha256": sha256}, path=path)
                old = md.signed.targets.get(path)
                if old is not None:
                    if (old.length, old.hashes) != (new.length, new.hashes):
                        raise TrustError(f"target {path} already exists with other content")
                    continue
                md.signed.targets[path] = new
                changed = True
            if changed:
                self._bump(md, Targets.type)
                self._cascade(Targets.type)
            return changed

    def add_package(self, sha256: str, length: int) -> bool:
        return self.add_targets([(package_target(sha256), sha256, length)])

    def refresh(self) -> list[str]:
        """Re-sign every online role past half its validity; return the roles re-signed."""
        now = utc(self.clock)
        done: list[str] = []
        with locked(self.keys_dir):
            for role in (Targets.type, Snapshot.type, Timestamp.type):
                md = self._load(role)
                if md.signed.expires - now <= self.expiry.of(role) / 2:
                    self._bump(md, role)
                    self._cascade(role)
                    done.append(role)
                    break  # _cascade re-signed everything above it
            root = self._load(Root.type)
            if root.signed.expires - now <= self.expiry.root / 12:
                logger.warning(
                    "TUF root expires at %s; sign a new one with the offline key "
                    "(`jetfleet keys rotate --role root`)",
                    root.signed.expires,
                )
        return done

    def resign_locked(self, role: str) -> None:
        """After a key rotation: a new version of ``role`` (and above) with its new key."""
        self._bump(self._load(role), role)
        self._cascade(role)

    def _cascade(self, role: str) -> None:
        if role == Targets.type:
            snapshot: Metadata[Snapshot] = self._load(Snapshot.type)
            version = latest_version(self.metadata_dir, Targets.type)
            snapshot.signed.meta["targets.json"] = MetaFile(version=version)
            self._bump(snapshot, Snapshot.type)
            role = Snapshot.type
        if role == Snapshot.type:
            timestamp: Metadata[Timestamp] = self._load(Timestamp.type)
            version = latest_version(self.metadata_dir, Snapshot.type)
            timestamp.signed.snapshot_meta = MetaFile(version=version)
            self._bump(timestamp, Timestamp.type)

    def _bump(self, md: Metadata[Any], role: str) -> None:
        md.signed.version += 1
        self._write(md, role)

    def _write(self, md: Metadata[Any], role: str) -> None:
        signed: Signed = md.signed
        signed.expires = utc(self.clock) + self.expiry.of(role)
        md.signatures.clear()
        md.sign(load_signer(self.keys_dir / ONLINE_DIR / f"{role}.pem"))
        data = md.to_bytes()
        if role == Timestamp.type:
            atomic_write(self.metadata_dir / "timestamp.json", data)
            return
        atomic_write(self.metadata_dir / f"{signed.version}.{role}.json", data)
        for old in self.metadata_dir.glob(f"*.{role}.json"):
            number = old.name.split(".", 1)[0]
            if number.isdigit() and int(number) <= signed.version - KEEP_VERSIONS:
                old.unlink(missing_ok=True)


Publish = Callable[[str, bytes], Any]  # (topic, payload) → publish retained, QoS 1


class TufService:
    """Keeps the repository fresh and its metadata retained on ``tuf/{role}``."""

    def __init__(self, repo: TufRepository, publish: Publish, *, interval: float = 600.0) -> None:
        self.repo = repo
        self.publish = publish
        self.interval = interval
        self._sent: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._worker = Periodic(
            "jetfleet-tuf", lambda: self.interval, self.tick, errors=(TrustError, OSError)
        )

    def publish_all(self) -> list[str]:
        """Publish every role whose payload changed since the last call; return them."""
        with self._lock:
            changed = []
            for role, payload in self.repo.payloads().items():
                if self._sent.get(role) != payload:
                    self.publish(topics.tuf(role), payload)
                    self._sent[role] = payload
                    changed.append(role)
            return changed

    def add_package(self, sha256: str, length: int) -> None:
        if self.repo.add_package(sha256, length):
            self.publish_all()

    def add_targets(self, entries: Iterable[tuple[str, str, int]]) -> None:
        if self.repo.add_targets(entries):
            self.publish_all()

    def tick(self) -> list[str]:
        """Re-sign what is about to expire and publish what changed (also after a rotation)."""
        resigned = self.repo.refresh()
        if resigned:
            logger.info("re-signed TUF %s", ", ".join(resigned))
        return self.publish_all()

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._worker.stop(timeout)


def describe(repo: TufRepository) -> dict[str, Any]:
    """Versions and expiry of each role (for logs and the CLI)."""
    out: dict[str, Any] = {}
    for role in (Root.type, Targets.type, Snapshot.type, Timestamp.type):
        md = repo._load(role)
        out[role] = {"version": md.signed.version, "expires": md.signed.expires.isoformat()}
    out["targets_count"] = len(json.loads(repo.payloads()[Targets.type])["signed"]["targets"])
    return out


def package_targets(engine: Engine) -> list[tuple[str, str, int]]:
    """``(path, sha256, length)`` of every stored package, for :meth:`add_targets`."""
    from sqlmodel import Session, select

    from fleet_server.models import Package

    with Session(engine) as session:
        return [
            (package_target(p.sha256), p.sha256, p.length)
            for p in session.exec(select(Package)).all()
        ]
