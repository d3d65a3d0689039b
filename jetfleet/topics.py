"""MQTT topic builders and parser (DESIGN §3). Prefix: ``jetfleet/v1``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from jetfleet.errors import TopicError

PREFIX = "jetfleet/v1"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
TUF_ROLES = ("root", "timestamp", "snapshot", "targets")


class DeviceTopic(str, Enum):
    """The per-device topic kinds, ``jetfleet/v1/d/{device}/{kind}``."""

    STATE = "state"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    DESIRED = "desired"
    CMD = "cmd"
    FETCH = "fetch"
    BLOCKS = "blocks"
    UPLOAD = "upload"  # device → server: a built engine (JSON announce + block frames)


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is a legal id (no MQTT wildcards, no slashes)."""
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise TopicError(
            f"invalid device id {device_id!r}: use 1-63 characters of letters, digits, "
            "'_', '.', '-', starting with a letter or digit"
        )
    return device_id


def device_topic(device_id: str, kind: DeviceTopic | str) -> str:
    kind = DeviceTopic(kind)
    return f"{PREFIX}/d/{validate_device_id(device_id)}/{kind.value}"


def state(device_id: str) -> str:
    return device_topic(device_id, DeviceTopic.STATE)


def telemetry(device_id: str) -> str:
    return device_topic(device_id, DeviceTopic.TELEMETRY)


def events(device_id: str) -> str:
    return device_topic(device_id, DeviceTopic.EVENTS)


def desired(device_id: str) -> str:
    return device_topic(device_id, DeviceTopic.DESIRED)


def cmd(device_id: str) -> str:
    return device_topic(device_id, DeviceTopic.CMD)


def fetch(device_id: str) -> str:
    return device_topic(device_id, DeviceTopic.FETCH)


def blocks(device_id: str) -> str:
    return device_topic(device_id, DeviceTopic.BLOCKS)


def upload(device_id: str) -> str:
    return device_topic(device_id, DeviceTopic.UPLOAD)


def artifact_blocks(sha256: str) -> str:
    """Broadcast block topic of one artifact, shared by every device of a wave."""
    if not _SHA256.match(sha256):
        raise TopicError(f"invalid sha256 {sha256!r}: expected 64 lowercase hex digits")
    return f"{PREFIX}/a/{sha256}/blocks"


def tuf(role: str) -> str:
    if role not in TUF_ROLES:
        raise TopicError(f"unknown TUF role {role!r}; expected one of {TUF_ROLES}")
    return f"{PREFIX}/tuf/{role}"


def subscription(kind: DeviceTopic | str, *, shared_group: str | None = None) -> str:
    """Wildcard subscription over all devices for one kind, optionally an MQTT 5 shared one."""
    topic = f"{PREFIX}/d/+/{DeviceTopic(kind).value}"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


@dataclass(frozen=True)
class ParsedTopic:
    """A parsed jetfleet topic: ``scope`` is ``d``, ``a`` or ``tuf``."""

    scope: str
    kind: str
    device_id: str | None = None
    sha256: str | None = None
    role: str | None = None


def parse(topic: str) -> ParsedTopic:
    """Parse a concrete topic; raise :class:`TopicError` for anything else."""
    if not topic.startswith(PREFIX + "/"):
        raise TopicError(f"topic {topic!r} is not under {PREFIX}/")
    parts = topic[len(PREFIX) + 1 :].split("/")
    if len(parts) == 3 and parts[0] == "d":
        device_id = validate_device_id(parts[1])
        try:
            kind = DeviceTopic(parts[2])
        except ValueError as exc:
            raise TopicError(f"unknown device topic kind {parts[2]!r} in {topic!r}") from exc
        return ParsedTopic(scope="d", kind=kind.value, device_id=device_id)
    if len(parts) == 3 and parts[0] == "a" and parts[2] == "blocks":
        if not _SHA256.match(parts[1]):
            raise TopicError(f"invalid sha256 in topic {topic!r}")
        return ParsedTopic(scope="a", kind="blocks", sha256=parts[1])
    if len(parts) == 2 and parts[0] == "tuf" and parts[1] in TUF_ROLES:
        return ParsedTopic(scope="tuf", kind="tuf", role=parts[1])
    raise TopicError(f"topic {topic!r} is not a jetfleet/v1 topic")
