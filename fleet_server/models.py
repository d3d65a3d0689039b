"""SQLModel tables and API schemas: ``XBase`` (shared fields), ``XCreate`` (request body),
``X`` (``table=True``), ``XPublic`` (response).

Times are float UNIX seconds, as in the protocol. JSON columns use SQLAlchemy's generic
``JSON`` type (SQLite and PostgreSQL alike); JSON values are replaced, never mutated in place.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, BigInteger, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from jetfleet.errors import TopicError
from jetfleet.messages import SHA256_PATTERN
from jetfleet.topics import validate_device_id

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"
TAG_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def _device_id(value: str) -> str:
    """``validate_device_id`` as a pydantic validator (a ValueError becomes a 422)."""
    try:
        return validate_device_id(value)
    except TopicError as exc:
        raise ValueError(str(exc)) from exc


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        if not re.match(TAG_KEY_PATTERN, key):
            raise ValueError(f"tag key {key!r} must be 1-63 letters, digits, '_', '.', '-'")
        if len(value) > 200:
            raise ValueError(f"tag {key!r} value is longer than 200 characters")
    return tags


# -- devices ---------------------------------------------------------------------------
class DeviceBase(SQLModel):
    tags: dict[str, str] = Field(default_factory=dict, sa_type=JSON)


class DeviceCreate(DeviceBase):
    id: str = Field(min_length=1, max_length=63)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _device_id(value)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_tags(value)


class Device(DeviceBase, table=True):
    __tablename__ = "devices"

    id: str = Field(primary_key=True, max_length=63)
    registered_at: float
    online: bool = Field(default=False, index=True)
    last_seen: float | None = None
    agent_version: str | None = None
    active_release: str | None = Field(default=None, index=True)
    active_sha256: str | None = None
    known_good_release: str | None = None
    known_good_sha256: str | None = None
    serving: bool | None = None
    backend: str | None = None
    profile: str | None = Field(default=None, max_length=200)
    profile_details: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    slots: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    assignment_sequence: int | None = None  # the last sequence the agent reported
    desired_sequence: int = 0  # the last sequence the server issued
    api_url: str | None = None
    telemetry_dropped: int = 0  # samples the agent reported it lost while offline


class DevicePublic(DeviceBase):
    id: str
    registered_at: float
    online: bool
    last_seen: float | None
    agent_version: str | None
    active_release: str | None
    active_sha256: str | None
    known_good_release: str | None
    known_good_sha256: str | None
    serving: bool | None
    backend: str | None
    profile: str | None
    profile_details: dict[str, str]
    slots: list[dict[str, Any]]
    assignment_sequence: int | None
    desired_sequence: int
    api_url: str | None
    telemetry_dropped: int


# -- packages --------------------------------------------------------------------------
class PackageBase(SQLModel):
    name: str
    version: str
    length: int = Field(sa_type=BigInteger)  # packages may reach 2 GiB, past int32
    card: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class Package(PackageBase, table=True):
    __tablename__ = "packages"

    sha256: str = Field(primary_key=True, max_length=64)
    created_at: float = Field(index=True)


class PackagePublic(PackageBase):
    sha256: str
    created_at: float


# -- releases --------------------------------------------------------------------------
class ReleaseBase(SQLModel):
    name: str = Field(min_length=1, max_length=128, schema_extra={"pattern": NAME_PATTERN})
    package_sha256: str = Field(
        max_length=64, foreign_key="packages.sha256", schema_extra={"pattern": SHA256_PATTERN}
    )
    notes: str = Field(default="", max_length=4000)


class ReleaseCreate(ReleaseBase):
    pass


class Release(ReleaseBase, table=True):
    __tablename__ = "releases"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True)
    created_at: float = Field(index=True)


class ReleasePublic(ReleaseBase):
    id: int
    created_at: float


# -- assignments -----------------------------------------------------------------------
class AssignmentBase(SQLModel):
    device_id: str = Field(foreign_key="devices.id", max_length=63)
    release: str = Field(max_length=128)
    sha256: str = Field(max_length=64)
    length: int = Field(sa_type=BigInteger)
    block_size: int
    sequence: int
    issued_at: float
    status: str = Field(default="issued", max_length=32)
    status_at: float | None = None


class AssignmentCreate(SQLModel):
    release: str = Field(min_length=1, max_length=128)
    device_ids: list[str] = Field(min_length=1, max_length=10_000)

    @field_validator("device_ids")
    @classmethod
    def _device_ids(cls, value: list[str]) -> list[str]:
        for device_id in value:
            _device_id(device_id)
        if len(set(value)) != len(value):
            raise ValueError("device_ids contains duplicates")
        return value


class Assignment(AssignmentBase, table=True):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("device_id", "sequence", name="uq_assignments_device_sequence"),
        Index("ix_assignments_sha256", "sha256"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # The exact DesiredAssignment bytes published, so a re-publish is byte-identical.
    payload: str


class AssignmentPublic(AssignmentBase):
    id: int


# -- events ----------------------------------------------------------------------------
class EventBase(SQLModel):
    event_id: str = Field(max_length=64)
    device_id: str = Field(foreign_key="devices.id", max_length=63)
    ts: float
    type: str = Field(max_length=64, index=True)
    release: str | None = None
    sha256: str | None = None
    sequence: int | None = None
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class Event(EventBase, table=True):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("device_id", "event_id", name="uq_events_device_event"),
        Index("ix_events_device_ts", "device_id", "ts"),
        Index("ix_events_ts", "ts"),
    )

    id: int | None = Field(default=None, primary_key=True)
    received_at: float


class EventPublic(EventBase):
    id: int
    received_at: float


# -- telemetry -------------------------------------------------------------------------
class TelemetryBase(SQLModel):
    device_id: str = Field(foreign_key="devices.id", max_length=63)
    ts: float
    seq: int = Field(sa_type=BigInteger)
    cpu_pct: float | None = None
    mem_used_mb: float | None = None
    mem_pct: float | None = None
    load1: float | None = None
    disk_pct: float | None = None
    agent_rss_mb: float | None = None
    gpu_source: str | None = None
    gpu_load_pct: float | None = None
    gpu_temp_c: float | None = None
    gpu_power_mw: float | None = None
    gpu_mem_used_mb: float | None = None
    inference_count: int = 0
    inference_errors: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    queue_depth: int | None = None
    release: str | None = None
    sha256: str | None = None


class Telemetry(TelemetryBase, table=True):
    __tablename__ = "telemetry"
    # (device, seq, ts) dedups re-sent samples; ts is in the key so an agent whose
    # counter restarts from zero after a reboot does not lose its new samples.
    __table_args__ = (
        UniqueConstraint("device_id", "seq", "ts", name="uq_telemetry_device_seq_ts"),
        Index("ix_telemetry_device_ts", "device_id", "ts"),
    )

    id: int | None = Field(default=None, primary_key=True)


class TelemetryPublic(TelemetryBase):
    id: int
