"""Versioned message schemas of the MQTT protocol (DESIGN §3).

Every JSON message carries ``"v"``, the schema version of its topic kind.

Versioning policy (deliberate, and tested):

* ``v`` missing or not an integer → :class:`SchemaError`.
* ``v`` newer than :data:`PROTOCOL_VERSION` → :class:`VersionError`: a newer
  major version may change meaning, so it is refused, counted and dropped.
* Unknown *fields* within a known version are ignored: a newer agent or server may
  add optional fields (a minor change) without breaking older peers.  Signed
  messages are verified over the raw JSON, so ignored fields stay covered.
* Payloads over the per-kind size limit are refused before they are parsed.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jetfleet.canonical import canonical_json
from jetfleet.errors import PayloadTooLarge, SchemaError, TopicError, VersionError
from jetfleet.topics import validate_device_id

PROTOCOL_VERSION = 1
MAX_PACKAGE_BYTES = 2 * 1024**3
MAX_ENGINE_BYTES = 1024**3
MAX_BLOCK_SIZE = 1024 * 1024
DEFAULT_BLOCK_SIZE = 64 * 1024
SHA256_PATTERN = r"^[0-9a-f]{64}$"

# Size limits per topic kind, in bytes, checked before parsing.
MAX_PAYLOAD: dict[str, int] = {
    "state": 64 * 1024,
    "telemetry": 1024 * 1024,
    "events": 64 * 1024,
    "desired": 16 * 1024,
    "cmd": 16 * 1024,
    "fetch": 16 * 1024,
    "blocks": MAX_BLOCK_SIZE + 1024,
    "tuf": 1024 * 1024,
    "upload": MAX_BLOCK_SIZE + 1024,  # an EngineUpload announce or one block frame
}


class Message(BaseModel):
    """Base of every JSON message: frozen, versioned, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = PROTOCOL_VERSION

    def to_bytes(self) -> bytes:
        """Canonical JSON of this message (``None`` fields dropped)."""
        return canonical_json(self.model_dump(mode="json", exclude_none=True))


class DeviceMessage(Message):
    device_id: str

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        try:
            return validate_device_id(value)
        except TopicError as exc:
            raise ValueError(str(exc)) from exc


class SlotStatus(str, Enum):
    """Per-assignment states of an agent slot (DESIGN §6)."""

    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    TESTING = "testing"
    TRIAL = "trial"
    COMMITTED = "committed"
    FAILED = "failed"
    REVERTED = "reverted"


class SlotState(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sha256: str = Field(pattern=SHA256_PATTERN)
    release: str | None = None
    status: SlotStatus
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    reason: str | None = None


class StateMessage(DeviceMessage):
    """Retained ``d/{device}/state``. The LWT is the same message with ``online=False``."""

    online: bool
    ts: float | None = None
    agent_version: str | None = None
    active_release: str | None = None
    active_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    known_good_release: str | None = None
    known_good_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    serving: bool | None = None
    backend: str | None = None
    assignment_sequence: int | None = Field(default=None, ge=0)
    slots: list[SlotState] = Field(default_factory=list, max_length=64)
    profile: str | None = Field(default=None, max_length=200)
    profile_details: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    api_url: str | None = None


class SystemMetrics(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    cpu_pct: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    mem_pct: float | None = None
    load1: float | None = None
    agent_rss_mb: float | None = None
    disk_pct: float | None = None


class GpuMetrics(BaseModel):
    """GPU sample. Absent (``None`` on the sample) on a host without a GPU: never faked."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    source: str  # "tegrastats", "sysfs", "nvml"
    load_pct: float | None = None
    temp_c: float | None = None
    power_mw: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    freq_mhz: float | None = None


class InferenceMetrics(BaseModel):
    """Inference counters over the sample's interval."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    count: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    queue_depth: int | None = None
    release: str | None = None
    sha256: str | None = None


class TelemetrySample(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    ts: float
    seq: int = Field(ge=0)
    system: SystemMetrics = Field(default_factory=SystemMetrics)
    gpu: GpuMetrics | None = None
    inference: InferenceMetrics = Field(default_factory=InferenceMetrics)


class TelemetryBatch(DeviceMessage):
    """``d/{device}/telemetry``: samples in order; ``dropped`` counts samples lost offline."""

    samples: list[TelemetrySample] = Field(min_length=1, max_length=2000)
    dropped: int = Field(default=0, ge=0)


class EventType(str, Enum):
    """Known event types; unknown ones from newer agents are stored as they are."""

    AGENT_STARTED = "agent.started"
    OTA_STARTED = "ota.started"
    OTA_PROGRESS = "ota.progress"
    OTA_RESUMED = "ota.resumed"
    OTA_VERIFIED = "ota.verified"
    OTA_FAILED = "ota.failed"
    STAGED = "activation.staged"
    TESTING = "activation.testing"
    TRIAL = "activation.trial"
    COMMITTED = "activation.committed"
    ACTIVATION_FAILED = "activation.failed"
    REVERTED = "activation.reverted"
    SELF_HEAL = "selfheal.action"
    ENGINE_BUILT = "engine.built"  # data: source, seconds, plan_sha256, engine_key
    ENGINE_REFUSED = "engine.refused"
    ENGINE_UPLOADED = "engine.uploaded"
    REJECTED = "security.rejected"
    BAD_MESSAGE = "protocol.bad_message"


class EventMessage(DeviceMessage):
    """``d/{device}/events``: one event."""

    id: str = Field(min_length=1, max_length=64)
    ts: float
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$", max_length=64)
    release: str | None = None
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    sequence: int | None = None
    message: str = Field(default="", max_length=2000)
    data: dict[str, Any] = Field(default_factory=dict)


ENGINE_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class EngineRef(BaseModel):
    """A TensorRT engine for one hardware profile (``engine_key``, e.g. ``sm87-trt10.3``),
    built from the assignment's package; fetched with the same block transfer."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    engine_key: str = Field(pattern=ENGINE_KEY_PATTERN)
    target: str = Field(min_length=1, max_length=256)
    sha256: str = Field(pattern=SHA256_PATTERN)
    length: int = Field(gt=0, le=MAX_ENGINE_BYTES)


class DesiredAssignment(DeviceMessage):
    """Retained ``d/{device}/desired``: what the device should run.

    ``signature``/``keyid`` are filled in by the director (trust issue); ``sequence``
    only increases per device, so an operator rollback is a new, higher sequence.
    """

    release: str = Field(min_length=1, max_length=128)
    target: str = Field(min_length=1, max_length=256)
    sha256: str = Field(pattern=SHA256_PATTERN)
    length: int = Field(gt=0, le=MAX_PACKAGE_BYTES)
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, gt=0, le=MAX_BLOCK_SIZE)
    sequence: int = Field(ge=1)
    issued_at: float
    # Optional (absent for onnxruntime devices and when no engine for the profile exists
    # yet); covered by the director signature like every other field.
    engine: EngineRef | None = None
    signature: str | None = None
    keyid: str | None = None

    def signed_payload(self) -> bytes:
        """The bytes a director signature covers: canonical JSON without the signature."""
        return canonical_json(
            self.model_dump(mode="json", exclude_none=True, exclude={"signature", "keyid"})
        )

    @property
    def block_count(self) -> int:
        return -(-self.length // self.block_size)


class Command(DeviceMessage):
    """``d/{device}/cmd``: operator commands, director-signed like assignments."""

    command: Literal["rollback", "restart-runtime", "resync"]
    sequence: int = Field(ge=1)
    issued_at: float
    args: dict[str, Any] = Field(default_factory=dict)
    signature: str | None = None
    keyid: str | None = None

    def signed_payload(self) -> bytes:
        """The bytes a director signature covers: canonical JSON without the signature."""
        return canonical_json(
            self.model_dump(mode="json", exclude_none=True, exclude={"signature", "keyid"})
        )


class FetchRequest(DeviceMessage):
    """``d/{device}/fetch``: ask for block ranges ``[start, end)`` of one artifact."""

    sha256: str = Field(pattern=SHA256_PATTERN)
    ranges: list[tuple[int, int]] = Field(min_length=1, max_length=256)

    @field_validator("ranges")
    @classmethod
    def _ranges(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for start, end in value:
            if start < 0 or end <= start:
                raise ValueError(f"range [{start}, {end}) is empty or negative")
        return value


class EngineUpload(DeviceMessage):
    """``d/{device}/upload`` JSON announce: the block frames of this engine follow on the
    same topic (a payload that starts with the frame magic is a frame, else an announce)."""

    release: str = Field(min_length=1, max_length=128)
    package_sha256: str = Field(pattern=SHA256_PATTERN)
    engine_key: str = Field(pattern=ENGINE_KEY_PATTERN)
    sha256: str = Field(pattern=SHA256_PATTERN)
    length: int = Field(gt=0, le=MAX_ENGINE_BYTES)
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, gt=0, le=MAX_BLOCK_SIZE)

    @property
    def block_count(self) -> int:
        return -(-self.length // self.block_size)


MESSAGE_TYPES: dict[str, type[Message]] = {
    "state": StateMessage,
    "telemetry": TelemetryBatch,
    "events": EventMessage,
    "desired": DesiredAssignment,
    "cmd": Command,
    "fetch": FetchRequest,
    "upload": EngineUpload,
}

M = TypeVar("M", bound=Message)


def decode_json(kind: str, payload: bytes) -> dict[str, Any]:
    """Size-check and JSON-parse a payload of topic ``kind`` into a dict with a known ``v``."""
    limit = MAX_PAYLOAD.get(kind, 64 * 1024)
    if len(payload) > limit:
        raise PayloadTooLarge(f"{kind} payload of {len(payload)} bytes exceeds {limit} bytes")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{kind} payload is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaError(f"{kind} payload must be a JSON object, got {type(data).__name__}")
    version = data.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SchemaError(f"{kind} payload has no integer 'v' (protocol version)")
    if version > PROTOCOL_VERSION or version < 1:
        raise VersionError(
            f"{kind} payload has protocol version {version}; this side speaks {PROTOCOL_VERSION}"
        )
    return data


def decode(kind: str, payload: bytes, model: type[M] | None = None) -> M:
    """Validate a payload of topic ``kind``; raise a :class:`ProtocolError` subclass if bad."""
    data = decode_json(kind, payload)
    cls = model or MESSAGE_TYPES.get(kind)
    if cls is None:
        raise SchemaError(f"no JSON schema for topic kind {kind!r}")
    try:
        return cls.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise SchemaError(f"{kind} payload invalid at {where}: {first['msg']}") from exc
