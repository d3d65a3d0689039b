"""Validation of every inbound MQTT message (DESIGN §3, docs/PROTOCOL.md "Bad messages").

:class:`InboundValidator` turns an :class:`~jetfleet.mqtt.Inbound` into a typed message or
a :class:`Rejected` with a reason.  Rejections are counted per reason, logged once per
(topic kind, reason), and never touch state.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass

from jetfleet import topics
from jetfleet.errors import (
    FrameError,
    PayloadTooLarge,
    ProtocolError,
    SchemaError,
    TopicError,
    VersionError,
)
from jetfleet.frames import BlockFrame, BlockHashMismatch, decode_frame
from jetfleet.messages import (
    MAX_BLOCK_SIZE,
    MAX_PAYLOAD,
    Command,
    DesiredAssignment,
    Message,
    decode,
)
from jetfleet.mqtt import Inbound

logger = logging.getLogger(__name__)

REASONS = (
    "too_large", "invalid_json", "schema", "version", "device_mismatch",
    "bad_frame", "block_hash", "bad_topic", "empty",
)


@dataclass(frozen=True)
class Rejected:
    kind: str
    reason: str
    detail: str
    first: bool  # first time this (kind, reason) was seen: worth an event


@dataclass(frozen=True)
class BadBlock:
    """A frame that failed its digest: the block must be asked for again."""

    sha256: str
    index: int


@dataclass(frozen=True)
class TufPayload:
    """TUF metadata from ``tuf/{role}``: judged by :mod:`edge_agent.trust`, not here."""

    role: str
    payload: bytes


Accepted = DesiredAssignment | Command | BlockFrame | BadBlock | TufPayload


@dataclass(frozen=True)
class Valid:
    kind: str
    message: Accepted
    raw: bytes
    retained: bool


class InboundValidator:
    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def by_reason(self) -> dict[str, int]:
        with self._lock:
            totals: Counter[str] = Counter()
            for (_, reason), n in self.counts.items():
                totals[reason] += n
        return dict(totals)

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.counts)

    def check(self, msg: Inbound) -> Valid | Rejected:
        try:
            parsed = topics.parse(msg.topic)
        except TopicError as exc:
            return self.reject("unknown", "bad_topic", str(exc))
        kind = parsed.kind
        if parsed.scope == "d" and parsed.device_id != self.device_id:
            return self.reject(kind, "device_mismatch", f"topic is for {parsed.device_id}")
        if kind == "blocks":
            return self._frame(msg, parsed.sha256)
        if kind == "tuf" and parsed.role is not None:
            if not msg.payload or len(msg.payload) > MAX_PAYLOAD["tuf"]:
                return self.reject(kind, "too_large" if msg.payload else "empty",
                                   f"tuf/{parsed.role} payload of {len(msg.payload)} bytes")
            return Valid(kind, TufPayload(parsed.role, msg.payload), msg.payload, msg.retain)
        if kind not in ("desired", "cmd"):
            return self.reject(kind, "bad_topic", f"agent does not take {kind!r} messages")
        if not msg.payload:
            return self.reject(kind, "empty", "empty payload (a cleared retained message)")
        try:
            message: Message = decode(kind, msg.payload)
        except PayloadTooLarge as exc:
            return self.reject(kind, "too_large", str(exc))
        except VersionError as exc:
            return self.reject(kind, "version", str(exc))
        except SchemaError as exc:
            invalid_json = isinstance(exc.__cause__, (json.JSONDecodeError, UnicodeDecodeError))
            return self.reject(kind, "invalid_json" if invalid_json else "schema", str(exc))
        except ProtocolError as exc:
            return self.reject(kind, "schema", str(exc))
        if not isinstance(message, (DesiredAssignment, Command)):
            return self.reject(kind, "schema", f"unexpected {type(message).__name__}")
        if message.device_id != self.device_id:
            return self.reject(
                kind, "device_mismatch", f"message names device {message.device_id!r}"
            )
        return Valid(kind, message, msg.payload, msg.retain)

    def _frame(self, msg: Inbound, topic_sha: str | None) -> Valid | Rejected:
        if len(msg.payload) > MAX_PAYLOAD["blocks"]:
            return self.reject("blocks", "too_large", f"frame of {len(msg.payload)} bytes")
        try:
            frame = decode_frame(msg.payload, max_payload=MAX_BLOCK_SIZE)
        except BlockHashMismatch as exc:
            if topic_sha is not None and exc.sha256 != topic_sha:
                return self.reject("blocks", "bad_frame", "frame sha256 differs from its topic")
            self.reject("blocks", "block_hash", str(exc))
            return Valid("blocks", BadBlock(exc.sha256, exc.index), msg.payload, msg.retain)
        except FrameError as exc:
            return self.reject("blocks", "bad_frame", str(exc))
        if topic_sha is not None and frame.sha256 != topic_sha:
            return self.reject("blocks", "bad_frame", "frame sha256 differs from its topic")
        return Valid("blocks", frame, msg.payload, msg.retain)

    def reject(self, kind: str, reason: str, detail: str) -> Rejected:
        with self._lock:
            first = self.counts[(kind, reason)] == 0
            self.counts[(kind, reason)] += 1
        if first:
            logger.warning("dropped bad %s message (%s): %s", kind, reason, detail)
        return Rejected(kind, reason, detail, first)
