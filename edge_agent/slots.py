"""Slots: one directory per artifact, ``slots/{sha256}/``.

* ``package.partial`` — preallocated to the declared length; blocks land at their offset.
* ``blocks.bitmap``  — a 20-byte header (magic, block count, block size, length) and one
  bit per verified block.  A bit is written (one byte, in place) right after its block,
  so a killed agent resumes with every block it had verified.  Data and bitmap are
  fsynced together every :data:`SYNC_EVERY_S` seconds and before the final check.
* ``package.jfpkg``  — the partial file renamed after its whole-file sha256 and length
  matched the assignment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from edge_agent.errors import SlotError, TransferError
from jetfleet.fsutil import atomic_write, fsync_dir

logger = logging.getLogger(__name__)

PARTIAL = "package.partial"
BITMAP = "blocks.bitmap"
FINAL = "package.jfpkg"
_HEADER = struct.Struct(">4sIIQ")
_MAGIC = b"JFBM"
SYNC_EVERY_S = 1.0


class Slot:
    """The on-disk download of one artifact (single writer: the agent's main loop)."""

    def __init__(self, root: Path, sha256: str, length: int, block_size: int) -> None:
        if length <= 0 or block_size <= 0:
            raise SlotError(f"slot {sha256[:12]}: length and block size must be positive")
        self.sha256 = sha256
        self.length = length
        self.block_size = block_size
        self.block_count = -(-length // block_size)
        self.dir = Path(root) / sha256
        self.partial = self.dir / PARTIAL
        self.bitmap_path = self.dir / BITMAP
        self.final = self.dir / FINAL
        self._bits = bytearray((self.block_count + 7) // 8)
        self._verified = 0
        self._data_fd: int | None = None
        self._map_fd: int | None = None
        self._last_sync = 0.0
        self._dirty = False

    # -- lifecycle ---------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.final.is_file() and self.final.stat().st_size == self.length

    def open(self) -> int:
        """Open (or create) the partial file and bitmap; return blocks already verified."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            resumed = self._load_bitmap()
            exists = self.partial.is_file() and self.partial.stat().st_size == self.length
            if not exists:
                resumed = False
            self._data_fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
            if not exists:
                self._bits = bytearray(len(self._bits))
                self._verified = 0
                os.ftruncate(self._data_fd, 0)
                _preallocate(self._data_fd, self.length)
            if not resumed:
                self._write_bitmap_file()
            self._map_fd = os.open(self.bitmap_path, os.O_RDWR)
        except OSError as exc:
            self.close()
            raise SlotError(f"slot {self.sha256[:12]}: {exc.strerror or exc}") from exc
        return self._verified

    def close(self) -> None:
        for fd in (self._data_fd, self._map_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as exc:
                    logger.warning("closing slot file failed: %s", exc)
        self._data_fd = self._map_fd = None

    def reset(self) -> None:
        """Forget every verified block (a resumed transfer whose whole-file check failed)."""
        self._bits = bytearray(len(self._bits))
        self._verified = 0
        if self._map_fd is not None:
            os.pwrite(self._map_fd, bytes(self._bits), _HEADER.size)
            os.fsync(self._map_fd)

    # -- blocks ------------------------------------------------------------------
    @property
    def verified_count(self) -> int:
        return self._verified

    @property
    def done(self) -> bool:
        return self._verified == self.block_count

    def has(self, index: int) -> bool:
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def missing(self) -> list[int]:
        return [i for i in range(self.block_count) if not self.has(i)]

    def block_length(self, index: int) -> int:
        return min(self.block_size, self.length - index * self.block_size)

    def write_block(self, index: int, offset: int, payload: bytes, *, now: float) -> bool:
        """Store one verified block; ``False`` if it was already there.

        Refuses anything that would write outside the declared length.
        """
        if self._data_fd is None or self._map_fd is None:
            raise SlotError(f"slot {self.sha256[:12]} is not open")
        if not 0 <= index < self.block_count:
            raise TransferError(f"block {index} outside 0..{self.block_count - 1}")
        if offset != index * self.block_size:
            raise TransferError(
                f"block {index} has offset {offset}, expected {index * self.block_size}"
            )
        if len(payload) != self.block_length(index):
            raise TransferError(
                f"block {index} carries {len(payload)} bytes, expected {self.block_length(index)}"
            )
        if self.has(index):
            return False
        try:
            view = memoryview(payload)
            pos = offset
            while view:
                n = os.pwrite(self._data_fd, view, pos)
                view, pos = view[n:], pos + n
            self._bits[index >> 3] |= 1 << (index & 7)
            os.pwrite(self._map_fd, bytes((self._bits[index >> 3],)), _HEADER.size + (index >> 3))
        except OSError as exc:
            raise SlotError(f"slot {self.sha256[:12]}: writing block {index}: {exc}") from exc
        self._verified += 1
        self._dirty = True
        if now - self._last_sync >= SYNC_EVERY_S:
            self.sync(now)
        return True

    def sync(self, now: float | None = None) -> None:
        """fsync the data, then the bitmap (a bit is durable only after its block)."""
        if self._data_fd is None or self._map_fd is None or not self._dirty:
            return
        os.fsync(self._data_fd)
        os.fsync(self._map_fd)
        self._dirty = False
        self._last_sync = time.monotonic() if now is None else now

    def finalize(self) -> Path:
        """Check whole-file sha256 and length, then rename to ``package.jfpkg``."""
        if not self.done:
            missing = self.block_count - self._verified
            raise TransferError(f"slot {self.sha256[:12]}: {missing} blocks missing")
        self.sync()
        size = self.partial.stat().st_size
        if size != self.length:
            raise TransferError(f"package is {size} bytes, assignment says {self.length}")
        digest = hashlib.sha256()
        with self.partial.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1024 * 1024), b""):
                digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise TransferError(
                f"package sha256 {digest.hexdigest()} does not match the assignment's {self.sha256}"
            )
        self.close()
        os.replace(self.partial, self.final)
        fsync_dir(self.dir)
        self.bitmap_path.unlink(missing_ok=True)
        return self.final

    # -- bitmap file ---------------------------------------------------------------
    def _load_bitmap(self) -> bool:
        try:
            raw = self.bitmap_path.read_bytes()
        except FileNotFoundError:
            return False
        want = _HEADER.size + len(self._bits)
        if len(raw) != want:
            logger.warning("bitmap of %s has the wrong size; starting over", self.sha256[:12])
            return False
        magic, count, block_size, length = _HEADER.unpack_from(raw)
        want_header = (_MAGIC, self.block_count, self.block_size, self.length)
        if (magic, count, block_size, length) != want_header:
            logger.warning("bitmap of %s is for another layout; starting over", self.sha256[:12])
            return False
        self._bits = bytearray(raw[_HEADER.size :])
        extra = self.block_count % 8
        if extra:
            self._bits[-1] &= (1 << extra) - 1
        self._verified = sum(bin(b).count("1") for b in self._bits)
        return True

    def _write_bitmap_file(self) -> None:
        header = _HEADER.pack(_MAGIC, self.block_count, self.block_size, self.length)
        atomic_write(self.bitmap_path, header + bytes(self._bits))


def _preallocate(fd: int, length: int) -> None:
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, length)
            return
        except OSError as exc:
            if exc.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: fall back to truncate
                raise
    os.ftruncate(fd, length)


class SlotStore:
    """The ``slots/`` directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def slot(self, sha256: str, length: int, block_size: int) -> Slot:
        return Slot(self.root, sha256, length, block_size)

    def package_path(self, sha256: str) -> Path | None:
        path = self.root / sha256 / FINAL
        return path if path.is_file() else None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def cleanup(self, keep: Iterable[str | None]) -> list[str]:
        """Remove every slot not in ``keep`` (active, known-good, current download)."""
        keep_set = {k for k in keep if k}
        removed = []
        for name in self.names():
            if name not in keep_set:
                shutil.rmtree(self.root / name, ignore_errors=True)
                removed.append(name)
        if removed:
            logger.info("removed old slots: %s", ", ".join(n[:12] for n in removed))
        return removed
