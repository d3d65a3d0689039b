"""Exception tree of the shared ``jetfleet`` package.

JetfleetError
├── ProtocolError      a message or topic that does not follow the protocol
│   ├── TopicError     a topic outside ``jetfleet/v1`` or with a bad device id
│   ├── PayloadTooLarge
│   ├── SchemaError    JSON that is not valid for its schema (or not JSON)
│   ├── VersionError   a message version this code does not speak
│   └── FrameError     a binary block frame that is malformed
├── PackageError       a model package that is malformed or fails its hash
└── MqttError          a paho return code that is not success
"""

from __future__ import annotations


class JetfleetError(Exception):
    """Base of every error raised by the shared jetfleet package."""


class ProtocolError(JetfleetError):
    """A message or topic that does not follow the jetfleet protocol."""


class TopicError(ProtocolError):
    """A topic that is not a jetfleet/v1 topic, or names an invalid device id."""


class PayloadTooLarge(ProtocolError):
    """A payload over the size limit of its topic."""


class SchemaError(ProtocolError):
    """A payload that is not valid JSON or not valid for its schema."""


class VersionError(ProtocolError):
    """A message whose version this code does not understand."""


class FrameError(ProtocolError):
    """A binary block frame that is truncated, has a bad magic or a bad hash."""


class PackageError(JetfleetError):
    """A model package that is malformed, incomplete, or fails its sha256."""


class MqttError(JetfleetError):
    """An MQTT operation that paho reported as failed."""

    def __init__(self, message: str, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc
