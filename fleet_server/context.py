"""The parts of one running server, built by ``create_app`` and shared by its routes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from fleet_server.artifacts import ArtifactStore
from fleet_server.broker import EmbeddedBroker
from fleet_server.commands import Commands
from fleet_server.gateway import Gateway
from fleet_server.metrics import ServerMetrics
from fleet_server.settings import Settings
from fleet_server.tufrepo import TufService


@dataclass
class ServerContext:
    settings: Settings
    engine: Engine
    store: ArtifactStore
    metrics: ServerMetrics
    gateway: Gateway
    broker: EmbeddedBroker | None = None
    tuf: TufService | None = None  # None: trust not configured (JETFLEET_KEYS_DIR unset)
    commands: Commands | None = None  # set by build_context
    # Serializes "read sequence, write sequence + 1" per process (see assignments.py).
    assign_lock: threading.Lock = field(default_factory=threading.Lock)
