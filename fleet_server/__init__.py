"""jetfleet fleet server: REST API, SQLModel database, MQTT gateway, artifact store."""

from fleet_server.app import create_app
from fleet_server.artifacts import ArtifactStore
from fleet_server.broker import EmbeddedBroker
from fleet_server.errors import (
    ArtifactError,
    BrokerError,
    ConflictError,
    FleetServerError,
    InvalidInputError,
    InvalidPackageError,
    NotFoundError,
    TooLargeError,
)
from fleet_server.gateway import Gateway
from fleet_server.metrics import ServerMetrics
from fleet_server.server import run_server
from fleet_server.settings import Settings, get_settings

__all__ = [
    "ArtifactError",
    "ArtifactStore",
    "BrokerError",
    "ConflictError",
    "EmbeddedBroker",
    "FleetServerError",
    "Gateway",
    "InvalidInputError",
    "InvalidPackageError",
    "NotFoundError",
    "ServerMetrics",
    "Settings",
    "TooLargeError",
    "create_app",
    "get_settings",
    "run_server",
]
