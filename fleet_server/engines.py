"""TensorRT engines per hardware profile (DESIGN §4, issue 6).

A release holds its package (the portable QDQ ONNX) plus engines keyed by
``engine_key`` (``sm87-trt10.3``). An engine comes from the builder
(``POST /api/v1/releases/{name}/engines``, status ``verified``) or from the first device
of a profile that built one (``d/{id}/upload``, status ``candidate``). Either way the
assignment of a device of that profile names it (``DesiredAssignment.engine``), and the
device still runs the golden vectors before using it. Engines are stored in the
artifact store like packages and, with trust on, become TUF targets ``engines/{sha}.plan``.

:class:`EngineUploads` reassembles device uploads (JSON announce, then block frames) on
the gateway's ingest thread: one upload per device at a time, a bitmap of blocks, the
declared sha256/length checked before anything is registered.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import BigInteger, Index
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from fleet_server.artifacts import ArtifactStore
from fleet_server.errors import ArtifactError
from fleet_server.models import Assignment, Device, Release
from jetfleet.errors import FrameError, ProtocolError
from jetfleet.frames import MAGIC, decode_frame
from jetfleet.messages import MAX_BLOCK_SIZE, DesiredAssignment, EngineRef, EngineUpload, decode

logger = logging.getLogger(__name__)

ENGINE_SUFFIX = ".plan"
UPLOAD_TIMEOUT_S = 600.0
STATUSES = ("candidate", "verified")


class EnginePlan(SQLModel, table=True):
    """One serialized TensorRT engine of a release's package for one ``engine_key``."""

    __tablename__ = "engines"
    __table_args__ = (Index("ix_engines_package_key", "package_sha256", "engine_key"),)

    sha256: str = Field(primary_key=True, max_length=64)
    release: str = Field(max_length=128)
    package_sha256: str = Field(max_length=64, foreign_key="packages.sha256")
    engine_key: str = Field(max_length=64)
    length: int = Field(sa_type=BigInteger)
    source: str = Field(max_length=80)  # "builder" or "device:{id}"
    status: str = Field(default="candidate", max_length=16)
    created_at: float


class EnginePlanPublic(SQLModel):
    sha256: str
    release: str
    package_sha256: str
    engine_key: str
    length: int
    source: str
    status: str
    created_at: float
    target: str


def engine_target(sha256: str) -> str:
    return f"engines/{sha256}{ENGINE_SUFFIX}"


def public(plan: EnginePlan) -> EnginePlanPublic:
    return EnginePlanPublic(**plan.model_dump(), target=engine_target(plan.sha256))


def engine_for(session: Session, package_sha256: str, engine_key: str) -> EnginePlan | None:
    """The engine to assign: a verified one first, else the newest candidate."""
    plans = session.exec(
        select(EnginePlan).where(
            EnginePlan.package_sha256 == package_sha256, EnginePlan.engine_key == engine_key
        )
    ).all()
    if not plans:
        return None
    best: EnginePlan = max(plans, key=lambda p: (p.status == "verified", p.created_at))
    return best


def engine_ref(session: Session, device: Device, package_sha256: str) -> EngineRef | None:
    """The ``DesiredAssignment.engine`` for a device: its reported profile's engine."""
    key = device.profile_details.get("engine_key")
    if device.backend != "tensorrt" or not key:
        return None
    plan = engine_for(session, package_sha256, key)
    if plan is None:
        return None
    return EngineRef(engine_key=plan.engine_key, target=engine_target(plan.sha256),
                     sha256=plan.sha256, length=plan.length)


def assigned_length(assignment: Assignment, sha256: str) -> int | None:
    """Length of ``sha256`` if the assignment names it (its package or its engine)."""
    if assignment.sha256 == sha256:
        return assignment.length
    if '"engine"' not in assignment.payload:
        return None
    engine = DesiredAssignment.model_validate_json(assignment.payload).engine
    return engine.length if engine is not None and engine.sha256 == sha256 else None


def register_engine(
    session: Session, *, release: Release, sha256: str, length: int, engine_key: str,
    source: str, status: str, now: float,
) -> tuple[EnginePlan, bool]:
    """Record a stored engine; (the row, newly created). An existing sha256 is kept,
    promoted to ``verified`` when the builder uploads the same bytes."""
    existing = session.get(EnginePlan, sha256)
    if existing is not None:
        if status == "verified" and existing.status != "verified":
            existing.status = "verified"
            session.add(existing)
            session.commit()
            session.refresh(existing)
        return existing, False
    plan = EnginePlan(sha256=sha256, release=release.name, package_sha256=release.package_sha256,
                      engine_key=engine_key, length=length, source=source, status=status,
                      created_at=now)
    session.add(plan)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        winner = session.get(EnginePlan, sha256)
        if winner is None:
            raise
        return winner, False
    session.refresh(plan)
    return plan, True


# -- device uploads ---------------------------------------------------------------------
class UploadRefused(Exception):
    """A ``d/{id}/upload`` payload the server drops; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class _Upload:
    announce: EngineUpload
    tmp: Path
    started: float
    have: set[int] = field(default_factory=set)


AddTargets = Callable[[Iterable[tuple[str, str, int]]], None]


class EngineUploads:
    """Reassembles device engine uploads and registers them as candidates."""

    def __init__(
        self, engine: Engine, store: ArtifactStore, *, add_targets: AddTargets | None = None,
        max_bytes: int = 1024**3, clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.store = store
        self.add_targets = add_targets
        self.max_bytes = max_bytes
        self.clock = clock
        self.active: dict[str, _Upload] = {}
        self.registered: list[str] = []

    def handle(self, device_id: str, payload: bytes) -> EnginePlan | None:
        """One upload payload; the registered engine when it completes one."""
        self._expire()
        if payload.startswith(MAGIC):
            return self._frame(device_id, payload)
        try:
            announce = decode("upload", payload, EngineUpload)
        except ProtocolError as exc:
            raise UploadRefused("schema", str(exc)) from exc
        if announce.device_id != device_id:
            raise UploadRefused("device_mismatch", f"announce names {announce.device_id!r}")
        self._announce(device_id, announce)
        return None

    def _announce(self, device_id: str, a: EngineUpload) -> None:
        if a.length > self.max_bytes:
            raise UploadRefused("oversize", f"engine of {a.length} bytes > {self.max_bytes}")
        with Session(self.engine) as session:
            device = session.get(Device, device_id)
            reported = device.profile_details.get("engine_key") if device is not None else None
            if reported != a.engine_key:
                raise UploadRefused("wrong_profile", f"{device_id} reports engine key "
                                    f"{reported!r}, upload says {a.engine_key!r}")
            release = session.exec(select(Release).where(Release.name == a.release)).first()
            if release is None or release.package_sha256 != a.package_sha256:
                raise UploadRefused("unknown_release", f"release {a.release!r} with package "
                                    f"{a.package_sha256[:12]} does not exist")
            if session.get(EnginePlan, a.sha256) is not None:
                self._drop(device_id)
                return  # already known: nothing to receive
        self._drop(device_id)
        tmp = self.store.new_temp()
        with tmp.open("wb") as fh:
            fh.truncate(a.length)
        self.active[device_id] = _Upload(a, tmp, self.clock())

    def _frame(self, device_id: str, payload: bytes) -> EnginePlan | None:
        up = self.active.get(device_id)
        try:
            frame = decode_frame(payload, max_payload=MAX_BLOCK_SIZE)
        except FrameError as exc:
            raise UploadRefused("bad_frame", str(exc)) from exc
        if up is None or frame.sha256 != up.announce.sha256:
            raise UploadRefused("unannounced", f"frame of {frame.sha256[:12]} without announce")
        a = up.announce
        expected = min(a.block_size, a.length - frame.index * a.block_size)
        if (frame.count != a.block_count or frame.offset != frame.index * a.block_size
                or len(frame.payload) != expected):
            raise UploadRefused("bad_frame", f"block {frame.index} does not fit the announce")
        with up.tmp.open("r+b") as fh:
            fh.seek(frame.offset)
            fh.write(frame.payload)
        up.have.add(frame.index)
        if len(up.have) < a.block_count:
            return None
        return self._complete(device_id, up)

    def _complete(self, device_id: str, up: _Upload) -> EnginePlan:
        a = up.announce
        self.active.pop(device_id, None)
        digest = hashlib.sha256()
        with up.tmp.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != a.sha256 or up.tmp.stat().st_size != a.length:
            up.tmp.unlink(missing_ok=True)
            raise UploadRefused("hash_mismatch", f"upload of {a.sha256[:12]} does not match")
        try:
            self.store.adopt(up.tmp, a.sha256)
        except (ArtifactError, OSError) as exc:
            up.tmp.unlink(missing_ok=True)
            raise UploadRefused("store_failed", str(exc)) from exc
        with Session(self.engine) as session:
            release = session.exec(select(Release).where(Release.name == a.release)).first()
            if release is None:
                raise UploadRefused("unknown_release", f"release {a.release!r} is gone")
            plan, created = register_engine(
                session, release=release, sha256=a.sha256, length=a.length,
                engine_key=a.engine_key, source=f"device:{device_id}", status="candidate",
                now=self.clock())
        if created and self.add_targets is not None:
            self.add_targets([(engine_target(a.sha256), a.sha256, a.length)])
        self.registered.append(a.sha256)
        logger.info("registered candidate engine %s (%s) from %s", a.sha256[:12],
                    a.engine_key, device_id)
        return plan

    def _drop(self, device_id: str) -> None:
        old = self.active.pop(device_id, None)
        if old is not None:
            old.tmp.unlink(missing_ok=True)

    def _expire(self) -> None:
        now = self.clock()
        for device_id in [d for d, u in self.active.items()
                          if now - u.started > UPLOAD_TIMEOUT_S]:
            logger.info("engine upload from %s timed out", device_id)
            self._drop(device_id)


def list_engines(session: Session, release: Release) -> list[EnginePlan]:
    return list(session.exec(
        select(EnginePlan).where(EnginePlan.package_sha256 == release.package_sha256)
        .order_by(col(EnginePlan.created_at).desc())
    ).all())
