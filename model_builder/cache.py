"""Stage cache: each stage's outputs stored under the sha256 of its inputs.

A key covers everything a stage's output depends on (upstream key, settings, data
hashes, builder version), so changing only INT8 settings re-runs only quantization.
Entries are directories written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ENV_VAR = "JETFLEET_BUILDER_CACHE"


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jetfleet" / "builder"


def stage_key(stage: str, *parts: Any) -> str:
    blob = json.dumps([stage, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class StageCache:
    """Directory-per-entry cache. ``root=None`` disables caching (nothing is stored)."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def get(self, stage: str, key: str) -> Path | None:
        if self.root is None:
            return None
        path = self.root / stage / key
        return path if (path / ".complete").is_file() else None

    def put(self, stage: str, key: str, files: dict[str, bytes]) -> Path | None:
        if self.root is None:
            return None
        final = self.root / stage / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            (tmp / ".complete").write_bytes(b"")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
