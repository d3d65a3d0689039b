"""``agent.yaml``: the agent's configuration (:class:`AgentConfig`, :func:`load_config`).

Relative paths (``state_dir``, ``replay.file``, TLS files) are resolved against the
directory of the config file, so a systemd unit and a shell give the same result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.errors import ConfigError
from edge_agent.rules import ServingConfig, WatchdogConfig
from edge_agent.trust import TrustConfig
from jetfleet.errors import MqttError, TopicError
from jetfleet.mqtt import BrokerAddress
from jetfleet.topics import validate_device_id

BACKENDS = ("onnxruntime", "onnxruntime-gpu", "tensorrt")


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path
    rate_hz: float = Field(default=5.0, gt=0, le=10_000)


class AgentConfig(BaseModel):
    """Validated ``agent.yaml``; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    broker_url: str = "mqtt://127.0.0.1:1883"
    tls: TlsConfig | None = None
    state_dir: Path
    tags: dict[str, str] = Field(default_factory=dict)
    telemetry_interval_s: float = Field(default=5.0, gt=0, le=3600)
    telemetry_buffer_max: int = Field(default=10_000, ge=1, le=10_000_000)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8470, ge=0, le=65535)
    backend: str = "onnxruntime"
    intra_op_threads: int = Field(default=1, ge=0, le=256)
    # backend tensorrt: on-device engine builds (edge_agent.enginebuild)
    engine_workspace_mb: int = Field(default=1024, ge=16, le=65536)
    engine_max_batch: int = Field(default=8, ge=1, le=4096)
    bake_s: float = Field(default=30.0, ge=0)
    fetch_window_blocks: int = Field(default=32, ge=1, le=256)
    fetch_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # A transfer must finish within floor + length / min rate, however it trickles in.
    download_deadline_floor_s: float = Field(default=300.0, gt=0, le=86_400)
    download_min_rate_kib_s: float = Field(default=32.0, gt=0, le=1_000_000)
    replay: ReplayConfig | None = None
    serving: ServingConfig = Field(default_factory=ServingConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    # None: unsigned assignments and packages are accepted (logged as a warning).
    trust: TrustConfig | None = None

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        try:
            return validate_device_id(value)
        except TopicError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        try:
            BrokerAddress.from_url(value)
        except MqttError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; expected one of {', '.join(BACKENDS)}")
        return value

    def broker_address(self) -> BrokerAddress:
        addr = BrokerAddress.from_url(self.broker_url)
        if self.tls is None:
            return addr
        return BrokerAddress(
            host=addr.host,
            port=addr.port,
            ca_file=str(self.tls.ca_file),
            cert_file=str(self.tls.cert_file) if self.tls.cert_file else None,
            key_file=str(self.tls.key_file) if self.tls.key_file else None,
        )

    def resolved(self, base: Path) -> AgentConfig:
        """A copy with relative paths made absolute against ``base``."""

        def fix(path: Path) -> Path:
            return path if path.is_absolute() else (base / path).resolve()

        update: dict[str, Any] = {"state_dir": fix(self.state_dir)}
        if self.replay is not None:
            update["replay"] = self.replay.model_copy(update={"file": fix(self.replay.file)})
        if self.tls is not None:
            update["tls"] = self.tls.model_copy(
                update={
                    "ca_file": fix(self.tls.ca_file),
                    "cert_file": fix(self.tls.cert_file) if self.tls.cert_file else None,
                    "key_file": fix(self.tls.key_file) if self.tls.key_file else None,
                }
            )
        if self.trust is not None:
            update["trust"] = self.trust.model_copy(
                update={"root": fix(self.trust.root),
                        "director_key": fix(self.trust.director_key)}
            )
        return self.model_copy(update=update)


def parse_config(data: Any, source: str = "agent.yaml") -> AgentConfig:
    """Validate a mapping; raise :class:`ConfigError` naming the first bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs for the accepted keys)"
        elif first["type"] == "missing":
            msg = "is required"
        raise ConfigError(f"{source}: field {where!r}: {msg}") from exc


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Load and validate ``agent.yaml``; relative paths resolve against its directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, str(path)).resolved(path.parent.resolve())
