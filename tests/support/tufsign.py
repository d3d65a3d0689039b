"""A TUF repository and director for the agent-side tests, built with the real python-tuf
Metadata API and real Ed25519 keys (no server imports: the agent suite runs with only
``.[agent,test]``). Knobs let a test sign with a wrong key, go back a version or expire.

The server's own repository (``fleet_server/tufrepo.py``) is tested in tests/trust.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from jetfleet import topics
from jetfleet.canonical import canonical_json
from jetfleet.messages import Command, DesiredAssignment


class SigningFleet:
    def __init__(self, directory: Path, *, clock: Any = time.time) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.keys = {role: CryptoSigner.generate_ed25519()
                     for role in ("root", "targets", "snapshot", "timestamp")}
        root = Root(expires=self._expiry(365), consistent_snapshot=True)
        for role, signer in self.keys.items():
            root.add_key(signer.public_key, role)
        self.root = Metadata(root)
        self.root.sign(self.keys["root"])
        self.roots = [self.root.to_bytes()]
        self.targets = Metadata(Targets(expires=self._expiry(30)))
        self.snapshot = Metadata(Snapshot(expires=self._expiry(7)))
        self.timestamp = Metadata(Timestamp(expires=self._expiry(1)))
        self.history: list[dict[str, bytes]] = []
        (directory / "root.json").write_bytes(self.roots[0])
        self.director = Ed25519PrivateKey.generate()
        pub = self.director.public_key()
        (directory / "director.pub").write_bytes(pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.director_keyid = hashlib.sha256(raw).hexdigest()

    def _expiry(self, days: float) -> datetime:
        return datetime.fromtimestamp(int(self.clock()), tz=timezone.utc) + timedelta(days=days)

    def trust_config(self) -> dict[str, Any]:
        return {"root": str(self.dir / "root.json"),
                "director_key": str(self.dir / "director.pub")}

    # -- TUF -----------------------------------------------------------------------------
    def add_target(self, sha256: str, length: int, path: str | None = None) -> str:
        path = path or f"packages/{sha256}.jfpkg"
        self.targets.signed.targets[path] = TargetFile(length, {"sha256": sha256}, path)
        return path

    def release(self, *, targets_signer: CryptoSigner | None = None) -> dict[str, bytes]:
        """New versions of targets, snapshot and timestamp; return their payloads."""
        for md, days in ((self.targets, 30), (self.snapshot, 7), (self.timestamp, 1)):
            md.signed.version += 1
            md.signed.expires = self._expiry(days)
            if md is self.targets:
                self.snapshot.signed.meta["targets.json"] = MetaFile(md.signed.version)
            if md is self.snapshot:
                self.timestamp.signed.snapshot_meta = MetaFile(md.signed.version)
            md.signatures.clear()
            signer = targets_signer if md is self.targets and targets_signer else (
                self.keys[md.signed.type])
            md.sign(signer)
        payloads = self.payloads()
        self.history.append(payloads)
        return payloads

    def payloads(self) -> dict[str, bytes]:
        roots = [r.decode() for r in self.roots]
        return {"root": canonical_json({"v": 1, "roots": roots}),
                "targets": self.targets.to_bytes(), "snapshot": self.snapshot.to_bytes(),
                "timestamp": self.timestamp.to_bytes()}

    # -- director ------------------------------------------------------------------------
    def sign(self, message: DesiredAssignment | Command,
             key: Ed25519PrivateKey | None = None) -> bytes:
        key = key or self.director
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        signed = message.model_copy(update={
            "signature": key.sign(message.signed_payload()).hex(),
            "keyid": hashlib.sha256(raw).hexdigest()})
        return signed.to_bytes()


def publish_tuf(client: Any, payloads: dict[str, bytes]) -> None:
    """Publish each role retained, as the server does (root first)."""
    for role in ("root", "targets", "snapshot", "timestamp"):
        client.publish(topics.tuf(role), payloads[role], qos=1, retain=True)
