"""Content-addressed artifact store: ``{root}/sha256/ab/<sha256>``.

Files are written to ``{root}/tmp`` first, fsynced, then renamed into place, so a
reader never sees a partial artifact.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from fleet_server.errors import ArtifactError
from jetfleet.fsutil import fsync_dir

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"

    def ensure(self) -> None:
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ArtifactError(f"invalid sha256 {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def length(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except OSError as exc:
            raise ArtifactError(f"artifact {sha256[:12]} is not in the store") from exc

    def new_temp(self) -> Path:
        """A fresh temporary path inside the store (same filesystem as the final place)."""
        self.ensure()
        return self.tmp_dir / f"upload-{os.getpid()}-{os.urandom(8).hex()}"

    def adopt(self, tmp: Path, sha256: str) -> Path:
        """Move a fsynced temporary file whose digest is ``sha256`` into place."""
        dest = self.path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file():  # same content already stored
            tmp.unlink(missing_ok=True)
            return dest
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return dest

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        tmp = self.new_temp()
        try:
            tmp.write_bytes(data)
            self.adopt(tmp, sha256)
        finally:
            tmp.unlink(missing_ok=True)
        return sha256

    def read_block(self, sha256: str, index: int, block_size: int) -> bytes:
        return next(self.read_blocks(sha256, [index], block_size))

    def read_blocks(self, sha256: str, indices: Iterable[int], block_size: int) -> Iterator[bytes]:
        """Yield block ``i`` (bytes ``[i*block_size, (i+1)*block_size)``) for each index."""
        if block_size <= 0:
            raise ArtifactError(f"block size {block_size} must be positive")
        path = self.path(sha256)
        try:
            with path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                count = -(-size // block_size)
                for index in indices:
                    if not 0 <= index < count:
                        raise ArtifactError(
                            f"block {index} outside 0..{count - 1} of {sha256[:12]}"
                        )
                    fh.seek(index * block_size)
                    yield fh.read(block_size)
        except OSError as exc:
            raise ArtifactError(f"cannot read artifact {sha256[:12]}: {exc}") from exc
