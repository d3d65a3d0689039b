"""Binary block frames: how package bytes travel over MQTT.

Layout (big-endian), 88-byte header then the payload::

    magic   4s   b"JFB1"
    sha256  32s  digest of the whole artifact
    index   I    block index
    count   I    number of blocks in the artifact
    offset  Q    byte offset of this block (index * block_size)
    length  I    payload length
    digest  32s  sha256 of the payload (detects a corrupted block)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from jetfleet.errors import FrameError

MAGIC = b"JFB1"
_HEADER = struct.Struct(">4s32sIIQI32s")
HEADER_SIZE = _HEADER.size


class BlockHashMismatch(FrameError):
    """A frame whose payload does not match its digest; ``index`` says which block."""

    def __init__(self, message: str, sha256: str, index: int) -> None:
        super().__init__(message)
        self.sha256 = sha256
        self.index = index


@dataclass(frozen=True)
class BlockFrame:
    sha256: str
    index: int
    count: int
    offset: int
    payload: bytes


def encode_frame(sha256: str, index: int, count: int, offset: int, payload: bytes) -> bytes:
    if not 0 <= index < count:
        raise FrameError(f"block index {index} outside 0..{count - 1}")
    try:
        digest = bytes.fromhex(sha256)
    except ValueError as exc:
        raise FrameError(f"invalid artifact sha256 {sha256!r}") from exc
    if len(digest) != 32:
        raise FrameError(f"invalid artifact sha256 {sha256!r}")
    header = _HEADER.pack(
        MAGIC, digest, index, count, offset, len(payload), hashlib.sha256(payload).digest()
    )
    return header + payload


def decode_frame(data: bytes, *, max_payload: int = 1024 * 1024) -> BlockFrame:
    """Parse and check one frame. Raises :class:`FrameError` / :class:`BlockHashMismatch`."""
    if len(data) < HEADER_SIZE:
        raise FrameError(
            f"frame of {len(data)} bytes is shorter than its {HEADER_SIZE}-byte header"
        )
    magic, digest, index, count, offset, length, payload_digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic!r}")
    sha256 = digest.hex()
    if count == 0 or index >= count:
        raise FrameError(f"block index {index} outside 0..{count - 1} of {sha256[:12]}")
    if length > max_payload:
        raise FrameError(f"block payload of {length} bytes exceeds {max_payload}")
    payload = data[HEADER_SIZE:]
    if len(payload) != length:
        raise FrameError(f"block {index} declares {length} bytes but carries {len(payload)}")
    if hashlib.sha256(payload).digest() != payload_digest:
        raise BlockHashMismatch(f"block {index} of {sha256[:12]} fails its digest", sha256, index)
    return BlockFrame(sha256=sha256, index=index, count=count, offset=offset, payload=payload)
