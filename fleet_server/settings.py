"""Server configuration (pydantic-settings, ``JETFLEET_`` prefix), built by :func:`get_settings`."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jetfleet.messages import DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MAX_PACKAGE_BYTES


class Settings(BaseSettings):
    """Every knob of the fleet server. ``create_app`` takes one explicitly."""

    model_config = SettingsConfigDict(env_prefix="JETFLEET_", extra="ignore")

    data_dir: Path = Path("./var/server")
    # None → SQLite file ``{data_dir}/fleet.db`` (WAL). PostgreSQL:
    # ``postgresql+psycopg://user:pass@host/db``.
    database_url: str | None = None

    # None → an embedded amqtt broker in this process (plain MQTT on loopback, demos only).
    broker_url: str | None = None
    broker_ca_file: str | None = None
    broker_cert_file: str | None = None
    broker_key_file: str | None = None
    broker_username: str | None = None
    broker_password: str | None = None
    embedded_broker_host: str = "127.0.0.1"
    embedded_broker_port: int = Field(default=1883, ge=1, le=65535)
    # None → ``jetfleet-server-{hostname}-{pid}``: every replica needs its own client id.
    client_id: str | None = Field(default=None, min_length=1, max_length=64)

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8400, ge=0, le=65535)
    # False: REST API and console open to anyone (tests, the demo). Never in production.
    auth_enabled: bool = True

    # Trust (docs/trust.md): a directory made by `jetfleet keys init`. None → assignments
    # go out unsigned and no TUF metadata is published (logged as a warning).
    keys_dir: Path | None = None
    tuf_refresh_interval: float = Field(default=600.0, gt=0, le=86_400)

    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, gt=0, le=MAX_BLOCK_SIZE)
    max_package_bytes: int = Field(default=MAX_PACKAGE_BYTES, gt=0)

    ingest_batch_size: int = Field(default=500, ge=1, le=100_000)
    ingest_batch_interval: float = Field(default=0.2, gt=0, le=60)
    inbox_limit: int = Field(default=20_000, ge=10)
    inbox_put_timeout: float = Field(default=10.0, ge=0)
    fetch_queue_limit: int = Field(default=1_000, ge=1)
    desired_reconcile_delay: float = Field(default=1.0, ge=0)
    rollout_tick_interval: float = Field(default=2.0, gt=0, le=600)

    # Scale-out (docs/ARCHITECTURE.md "Replicas"). Shared subscriptions need a broker that
    # has them (Mosquitto 2, EMQX, HiveMQ); amqtt, the embedded demo broker, does not.
    shared_subscriptions: bool = False
    shared_group: str = Field(default="jetfleet", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    lease_ttl: float = Field(default=15.0, gt=0, le=3600)
    # OTA fan-out (fleet_server/broadcast.py): one broadcast per artifact per wave.
    ota_broadcast: bool = False
    ota_broadcast_window: float = Field(default=1.0, ge=0, le=60)
    ota_broadcast_min_devices: int = Field(default=2, ge=1)
    ota_broadcast_cooldown: float = Field(default=30.0, ge=0, le=86_400)
    # Telemetry retention (fleet_server/retention.py): raw samples for this long, then
    # 5-minute rollups, kept this long; the job runs every interval on one replica.
    telemetry_raw_retention_s: float = Field(default=172_800.0, gt=0)
    telemetry_rollup_retention_s: float = Field(default=90 * 86_400.0, gt=0)
    telemetry_retention_interval: float = Field(default=600.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'fleet.db'}"
        return self

    @model_validator(mode="after")
    def _shared_needs_external_broker(self) -> Settings:
        if self.shared_subscriptions and self.broker_url is None:
            raise ValueError(
                "JETFLEET_SHARED_SUBSCRIPTIONS needs JETFLEET_BROKER_URL: the embedded amqtt "
                "broker has no shared subscriptions ($share/...)"
            )
        return self

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL (the SQLite default already filled in)."""
        assert self.database_url is not None  # set by the validator
        return self.database_url

    @property
    def mqtt_client_id(self) -> str:
        """The configured client id, or one unique to this host and process."""
        if self.client_id is not None:
            return self.client_id
        return f"jetfleet-server-{socket.gethostname()[:30]}-{os.getpid()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached; tests build their own)."""
    return Settings()
