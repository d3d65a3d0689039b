"""jetfleet: the shared protocol, package format and CLI of the jetfleet fleet manager."""

from jetfleet import topics
from jetfleet.canonical import canonical_json
from jetfleet.errors import (
    FrameError,
    JetfleetError,
    MqttError,
    PackageError,
    PayloadTooLarge,
    ProtocolError,
    SchemaError,
    TopicError,
    VersionError,
)
from jetfleet.frames import BlockFrame, BlockHashMismatch, decode_frame, encode_frame
from jetfleet.messages import (
    PROTOCOL_VERSION,
    Command,
    DesiredAssignment,
    EngineRef,
    EngineUpload,
    EventMessage,
    EventType,
    FetchRequest,
    SlotState,
    SlotStatus,
    StateMessage,
    TelemetryBatch,
    TelemetrySample,
    decode,
)
from jetfleet.package import (
    Golden,
    ModelCard,
    ModelPackage,
    PackageInfo,
    TensorSpec,
    read_package,
    write_package,
)

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "BlockFrame",
    "BlockHashMismatch",
    "Command",
    "DesiredAssignment",
    "EngineRef",
    "EngineUpload",
    "EventMessage",
    "EventType",
    "FetchRequest",
    "FrameError",
    "Golden",
    "JetfleetError",
    "ModelCard",
    "ModelPackage",
    "MqttError",
    "PackageError",
    "PackageInfo",
    "PayloadTooLarge",
    "ProtocolError",
    "SchemaError",
    "SlotState",
    "SlotStatus",
    "StateMessage",
    "TelemetryBatch",
    "TelemetrySample",
    "TensorSpec",
    "TopicError",
    "VersionError",
    "__version__",
    "canonical_json",
    "decode",
    "decode_frame",
    "encode_frame",
    "read_package",
    "topics",
    "write_package",
]
