"""Exception tree of the fleet server.

FleetServerError
├── NotFoundError        an id the caller named does not exist (HTTP 404)
├── ConflictError        a unique name taken, or a concurrent change (HTTP 409)
├── InvalidInputError    a request that is well-formed JSON but wrong (HTTP 422)
│   └── InvalidPackageError   an uploaded package that fails validation
├── TooLargeError        an upload over the configured cap (HTTP 413)
├── ArtifactError        the artifact store cannot read or write an artifact
├── BrokerError          the embedded MQTT broker cannot start or stop
├── StorageError         the database refused a write the server cannot recover from
└── TrustError           a TUF or director key or metadata that cannot be used
"""

from __future__ import annotations


class FleetServerError(Exception):
    """Base of every error raised by the fleet server."""


class NotFoundError(FleetServerError):
    """An id named by the caller does not exist."""


class ConflictError(FleetServerError):
    """A unique name is taken, or a concurrent change won a race."""


class InvalidInputError(FleetServerError):
    """A request whose content is wrong (beyond its schema)."""


class InvalidPackageError(InvalidInputError):
    """An uploaded model package that fails ``jetfleet.package.read_package``."""


class TooLargeError(FleetServerError):
    """An upload over the configured size cap."""


class ArtifactError(FleetServerError):
    """The artifact store cannot read or write an artifact."""


class BrokerError(FleetServerError):
    """The embedded MQTT broker failed to start or stop."""


class TrustError(FleetServerError):
    """A TUF or director key, or TUF metadata, that cannot be read, written or used."""
