"""Device-side trust (DESIGN §5): director signatures and TUF, via python-tuf's ngclient.

:class:`DeviceTrust` checks that a ``desired`` or ``cmd`` message carries a valid
director signature, that an assignment's sha256 and length are those of its TUF
target, and that a downloaded package matches that target before it is staged.

TUF metadata arrives retained on ``jetfleet/v1/tuf/{role}`` (or, optionally, over HTTP
from the server's ``/tuf/``). :class:`ReceivedFetcher` serves it to ngclient, which
keeps the *trusted* metadata under ``{state_dir}/tuf`` across restarts, so rollback
and freeze checks hold across reboots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field
from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater

from edge_agent.errors import TrustRefused
from jetfleet.canonical import canonical_json
from jetfleet.messages import MAX_PAYLOAD, Command, DesiredAssignment

logger = logging.getLogger(__name__)

METADATA_BASE = "jetfleet-tuf:/"
MAX_ROOT_VERSIONS = 64


class TrustConfig(BaseModel):
    """``trust:`` in agent.yaml. Absent (``null``): unsigned assignments are accepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path  # the first trusted root.json (``metadata/1.root.json`` from `keys init`)
    director_key: Path  # ``director.pub``
    metadata_url: str | None = Field(default=None, pattern=r"^https?://")  # e.g. .../tuf/
    http_timeout_s: float = Field(default=10.0, gt=0, le=120)


class ReceivedFetcher(FetcherInterface):
    """ngclient's fetcher: metadata from what MQTT delivered, else from HTTP (if set)."""

    def __init__(self, metadata_url: str | None = None, timeout: float = 10.0) -> None:
        self.roots: dict[int, bytes] = {}
        self.latest: dict[str, bytes] = {}
        self.metadata_url = metadata_url.rstrip("/") + "/" if metadata_url else None
        self.timeout = timeout

    def put(self, role: str, payload: bytes) -> None:
        """Keep what arrived on ``tuf/{role}``; ngclient judges it later."""
        if len(payload) > MAX_PAYLOAD["tuf"]:
            raise TrustRefused("tuf_bad_message", f"tuf/{role} payload of {len(payload)} bytes")
        try:
            data = json.loads(payload)
            if role == "root":
                roots = {_version(r.encode()): r.encode() for r in data["roots"]}
            else:
                _version(payload)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrustRefused("tuf_bad_message", f"tuf/{role} is not TUF metadata: {exc}") from exc
        if role == "root":
            self.roots = dict(sorted(roots.items())[-MAX_ROOT_VERSIONS:])
        else:
            self.latest[role] = payload

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.rsplit("/", 1)[-1]
        data = self._received(name)
        if data is None and self.metadata_url is not None:
            data = self._http(name)
        if data is None:
            raise exceptions.DownloadHTTPError(f"{name} has not been received", 404)
        return iter((data,))

    def _received(self, name: str) -> bytes | None:
        parts = name.split(".")
        if name == "timestamp.json":
            return self.latest.get("timestamp")
        if len(parts) == 3 and parts[0].isdigit() and parts[2] == "json":
            version, role = int(parts[0]), parts[1]
            if role == "root":
                return self.roots.get(version)
            data = self.latest.get(role)
            if data is not None and _version(data) == version:
                return data
        return None

    def _http(self, name: str) -> bytes | None:
        assert self.metadata_url is not None
        try:
            with urllib.request.urlopen(self.metadata_url + name, timeout=self.timeout) as resp:  # noqa: S310 (the URL is https?:// by the config's pattern)
                return bytes(resp.read(MAX_PAYLOAD["tuf"] + 1))
        except OSError as exc:
            code = getattr(exc, "code", None)
            if code in (403, 404):
                return None
            raise exceptions.DownloadError(f"{name}: {exc}") from exc


def _version(payload: bytes) -> int:
    version = json.loads(payload)["signed"]["version"]
    if not isinstance(version, int):
        raise ValueError("signed.version is not an integer")
    return version


def _classify(exc: Exception) -> str:
    if isinstance(exc, (exceptions.BadVersionNumberError, exceptions.EqualVersionNumberError)):
        return "tuf_rollback"
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return "tuf_expired"
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return "tuf_bad_signature"
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return "target_hash_mismatch"
    if isinstance(exc, exceptions.DownloadHTTPError):
        return "tuf_metadata_missing"
    return "tuf_invalid"


class DeviceTrust:
    def __init__(self, config: TrustConfig, metadata_dir: Path) -> None:
        self.config = config
        self.metadata_dir = Path(metadata_dir)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._bootstrap = config.root.read_bytes()
            public = serialization.load_pem_public_key(config.director_key.read_bytes())
        except (OSError, ValueError) as exc:
            raise TrustRefused("config", f"cannot load trust files: {exc}") from exc
        if not isinstance(public, Ed25519PublicKey):
            raise TrustRefused("config", f"{config.director_key} is not an Ed25519 public key")
        self._director = public
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.director_keyid = hashlib.sha256(raw).hexdigest()
        self.fetcher = ReceivedFetcher(config.metadata_url, config.http_timeout_s)

    # -- director --------------------------------------------------------------------
    def check_signed(self, message: DesiredAssignment | Command, raw: bytes) -> None:
        """Refuse a message without a valid director signature over its raw JSON.

        The signature covers the received JSON minus ``signature``/``keyid``, so fields
        this agent does not know are covered too.
        """
        if not message.signature or not message.keyid:
            raise TrustRefused("unsigned", "message carries no director signature")
        if message.keyid != self.director_keyid:
            raise TrustRefused("unknown_key", f"signed by unknown key {message.keyid[:16]}")
        try:
            signature = bytes.fromhex(message.signature)
            data = json.loads(raw)
            covered = canonical_json({k: v for k, v in data.items()
                                      if k not in ("signature", "keyid")})
            self._director.verify(signature, covered)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise TrustRefused("bad_signature", "director signature does not verify") from exc

    # -- TUF ---------------------------------------------------------------------------
    def on_metadata(self, role: str, payload: bytes) -> None:
        self.fetcher.put(role, payload)

    def _updater(self) -> Updater:
        first = not (self.metadata_dir / "root.json").exists()
        return Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=METADATA_BASE,
            fetcher=self.fetcher,
            bootstrap=self._bootstrap if first else None,
        )

    def refresh(self) -> None:
        """Bring the trusted metadata up to what arrived (rollback/freeze checks run here)."""
        self._run(None)

    def target(self, path: str) -> TargetFile:
        """Refresh the trusted metadata from what arrived; the target's info or refuse."""
        info = self._run(path)
        if info is None:
            raise TrustRefused("target_unknown", f"{path} is not a TUF target")
        return info

    def _run(self, path: str | None) -> TargetFile | None:
        try:
            updater = self._updater()
            updater.refresh()
            return updater.get_targetinfo(path) if path is not None else None
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            raise TrustRefused(_classify(exc), f"TUF: {type(exc).__name__}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise TrustRefused("tuf_invalid", f"TUF metadata unusable: {exc}") from exc

    def check_assignment(self, assignment: DesiredAssignment) -> None:
        """Mix-and-match: the assignment must name a TUF target with its exact hash/length."""
        info = self.target(assignment.target)
        if info.length != assignment.length or info.hashes.get("sha256") != assignment.sha256:
            raise TrustRefused(
                "target_mismatch",
                f"assignment says sha256 {assignment.sha256[:12]}, {assignment.length} bytes; "
                f"TUF target {assignment.target} has {info.hashes.get('sha256', '?')[:12]}, "
                f"{info.length} bytes",
            )

    def verify_file(self, assignment: DesiredAssignment, path: Path) -> None:
        """A downloaded package must be exactly the TUF target before it is staged."""
        info = self.target(assignment.target)
        try:
            with path.open("rb") as fh:
                info.verify_length_and_hashes(fh)
        except exceptions.LengthOrHashMismatchError as exc:
            raise TrustRefused("target_hash_mismatch", f"package differs from TUF: {exc}") from exc
        except OSError as exc:
            raise TrustRefused("target_unreadable", f"cannot read {path}: {exc}") from exc

    def describe(self) -> dict[str, Any]:
        return {"director_keyid": self.director_keyid, "metadata_dir": str(self.metadata_dir)}
