"""On-device TensorRT engine build and cache (DESIGN §4, issue 6).

An engine runs only on the GPU and TensorRT version it was built for (the profile's
``engine_key``, e.g. ``sm87-trt10.3``). A device whose assignment carries no engine for
its profile builds one from the package's S8S8 QDQ ONNX (the ``tensorrt`` variant) and
caches it under ``{state_dir}/engines/{onnx_sha256}/{engine_key}.plan``.

Every engine — assigned by the server, found in the cache or just built — is deserialized
and run on the package's golden vectors before it is used. One that fails is never
activated: its cache entry is removed, and a cached one is rebuilt once.

The ``tensorrt`` / ``pycuda.driver`` modules are injected (default: imported lazily).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.engine import Engine
from edge_agent.errors import ActivationError, BackendError, BadRequest, EngineError
from edge_agent.tensorrt import TensorRTBackend, import_cuda, import_tensorrt
from jetfleet.errors import PackageError
from jetfleet.fsutil import atomic_write
from jetfleet.package import Golden, read_package

logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MB = 1024
DEFAULT_MAX_BATCH = 8
PLAN_SUFFIX = ".plan"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENGINE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Builder = Callable[..., bytes]


def build_engine(
    onnx_bytes: bytes,
    trt_module: Any,
    fp16: bool = False,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> bytes:
    """Build a serialized engine from (QDQ INT8) ONNX; :class:`EngineError` if TensorRT can't.

    The build itself is ``jetson.engine.build_serialized_engine`` (shared with the
    model builder).
    """
    from jetson.engine import build_serialized_engine
    from jetson.errors import EngineBuildError

    try:
        return build_serialized_engine(
            onnx_bytes, trt_module, fp16=fp16, workspace_mb=workspace_mb, max_batch=max_batch
        )
    except EngineBuildError as exc:
        raise EngineError(str(exc)) from exc


def gpu_engine_key(trt_module: Any, cuda_module: Any, device: int = 0) -> str:
    """``sm{major}{minor}-trt{major}.{minor}`` from the GPU itself (discrete-GPU hosts;
    a Jetson uses ``jetson.profile.detect_profile().engine_key``, which agrees)."""
    cuda_module.init()
    major, minor = cuda_module.Device(device).compute_capability()
    version = ".".join(str(trt_module.__version__).split(".")[:2])
    return f"sm{int(major)}{int(minor)}-trt{version}"


@dataclass(frozen=True)
class CachedEngine:
    """A loaded engine that passed its golden vectors, and where it came from."""

    backend: TensorRTBackend
    path: Path
    source: str  # "assigned" | "cache" | "built"
    golden_max_error: float


@dataclass(frozen=True)
class EngineLoaded:
    """What :meth:`EngineCache.load_package_engine` did, for events and uploads."""

    package_sha256: str
    release: str | None
    onnx_sha256: str
    engine_key: str
    source: str  # "assigned" | "cache" | "built"
    path: Path
    plan_sha256: str
    seconds: float
    assigned_refused: bool  # an assigned plan was given but failed (deserialize/golden)


class EngineCache:
    """Engines by (ONNX sha256, engine key) under ``root`` (``{state_dir}/engines``).

    ``on_loaded`` (optional) is called after every successful
    :meth:`load_package_engine`, on the caller's thread.
    """

    def __init__(
        self,
        root: Path,
        engine_key: str,
        *,
        trt_module: Any = None,
        cuda_module: Any = None,
        fp16: bool = False,
        workspace_mb: int = DEFAULT_WORKSPACE_MB,
        max_batch: int = DEFAULT_MAX_BATCH,
        builder: Builder = build_engine,
        on_loaded: Callable[[EngineLoaded], None] | None = None,
    ) -> None:
        if not _ENGINE_KEY.match(engine_key):
            raise EngineError(f"invalid engine key {engine_key!r} (expected e.g. sm87-trt10.3)")
        self.root = Path(root)
        self.engine_key = engine_key
        self.fp16 = fp16
        self.workspace_mb = workspace_mb
        self.max_batch = max_batch
        self._trt = trt_module
        self._cuda = cuda_module
        self._builder = builder
        self._lock = threading.Lock()
        self.on_loaded = on_loaded
        self.onnx_of: dict[str, str] = {}  # package sha256 → its tensorrt ONNX's sha256

    # -- the files -------------------------------------------------------------------------
    def path(self, onnx_sha256: str) -> Path:
        if not _SHA256.match(onnx_sha256):
            raise EngineError(f"invalid ONNX sha256 {onnx_sha256!r}")
        return self.root / onnx_sha256 / f"{self.engine_key}{PLAN_SUFFIX}"

    def lookup(self, onnx_sha256: str) -> bytes | None:
        """The cached plan for this ONNX on this profile, or None (unchecked bytes)."""
        try:
            return self.path(onnx_sha256).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cached engine for %s is unreadable: %s", onnx_sha256[:12], exc)
            return None

    def store(self, onnx_sha256: str, plan: bytes) -> Path:
        """Write ``plan`` atomically (tmp file, fsync, rename)."""
        path = self.path(onnx_sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, plan)
        return path

    def remove(self, onnx_sha256: str) -> None:
        path = self.path(onnx_sha256)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder goes once no profile's engine is left
            path.parent.rmdir()

    def prune(self, keep: set[str]) -> list[str]:
        """Remove this profile's engines for ONNX sha256s not in ``keep``; return them."""
        removed = []
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                plan = entry / f"{self.engine_key}{PLAN_SUFFIX}"
                if _SHA256.match(entry.name) and entry.name not in keep and plan.exists():
                    self.remove(entry.name)
                    removed.append(entry.name)
        return removed

    # -- build, check, load ----------------------------------------------------------------
    def build_or_load(
        self, onnx_bytes: bytes, golden: Golden, *, assigned: bytes | None = None
    ) -> CachedEngine:
        """A golden-checked engine for ``onnx_bytes``: the server's ``assigned`` plan, the
        cached one, or one built here — in that order. :class:`EngineError` if none works."""
        sha = hashlib.sha256(onnx_bytes).hexdigest()
        with self._lock:
            if assigned is not None:
                try:
                    backend, error = self._check(assigned, golden)
                except EngineError as exc:
                    logger.warning("assigned engine for %s refused: %s", sha[:12], exc)
                else:
                    return CachedEngine(backend, self.store(sha, assigned), "assigned", error)
            plan = self.lookup(sha)
            if plan is not None:
                try:
                    backend, error = self._check(plan, golden)
                except EngineError as exc:
                    logger.warning(
                        "cached engine %s is unusable (%s); removing and rebuilding",
                        self.path(sha),
                        exc,
                    )
                    self.remove(sha)
                else:
                    return CachedEngine(backend, self.path(sha), "cache", error)
            logger.info("building a TensorRT engine for %s on %s", sha[:12], self.engine_key)
            plan = self._builder(
                onnx_bytes,
                self._trt_module(),
                fp16=self.fp16,
                workspace_mb=self.workspace_mb,
                max_batch=max(self.max_batch, _batch(golden)),
            )
            try:
                backend, error = self._check(plan, golden)
            except EngineError:
                self.remove(sha)
                raise
            return CachedEngine(backend, self.store(sha, plan), "built", error)

    def load_package_engine(
        self,
        package_path: Path,
        sha256: str,
        release: str | None,
        *,
        assigned: bytes | None = None,
    ) -> Engine:
        """:func:`edge_agent.engine.load_engine` for ``backend: tensorrt``: the package's
        ``tensorrt`` variant through this cache. :class:`ActivationError` on failure."""
        try:
            package = read_package(package_path, expected_sha256=sha256)
            onnx = package.variant("tensorrt")
            golden = package.golden()
        except PackageError as exc:
            raise ActivationError(f"package {sha256[:12]} is unusable: {exc}") from exc
        started = time.monotonic()
        try:
            cached = self.build_or_load(onnx, golden, assigned=assigned)
        except BackendError as exc:
            raise ActivationError(str(exc)) from exc
        onnx_sha = hashlib.sha256(onnx).hexdigest()
        self.onnx_of[sha256] = onnx_sha
        if self.on_loaded is not None:
            self.on_loaded(
                EngineLoaded(
                    package_sha256=sha256,
                    release=release,
                    onnx_sha256=onnx_sha,
                    engine_key=self.engine_key,
                    source=cached.source,
                    path=cached.path,
                    plan_sha256=_file_sha256(cached.path),
                    seconds=time.monotonic() - started,
                    assigned_refused=assigned is not None and cached.source != "assigned",
                )
            )
        return Engine(
            cached.backend, sha256=sha256, release=release, golden=golden, card=package.card
        )

    def _trt_module(self) -> Any:
        if self._trt is None:
            self._trt = import_tensorrt()
        return self._trt

    def _check(self, plan: bytes, golden: Golden) -> tuple[TensorRTBackend, float]:
        """Deserialize and run the golden vectors; the backend stays loaded on success."""
        cuda = self._cuda if self._cuda is not None else import_cuda()
        backend = TensorRTBackend(trt_module=self._trt_module(), cuda_module=cuda)
        try:
            backend.load(plan, threads=1)
            specs = {s.name: s for s in backend.inputs}
            if set(specs) != set(golden.inputs):
                raise EngineError(
                    f"engine inputs {sorted(specs)} are not the golden "
                    f"vectors' {sorted(golden.inputs)}"
                )
            inputs = {n: specs[n].check(np.asarray(v)) for n, v in golden.inputs.items()}
            result = golden.compare(backend.run(inputs))
        except EngineError:
            backend.close()
            raise
        except (BadRequest, BackendError) as exc:
            backend.close()
            raise EngineError(f"golden vectors do not run on the engine: {exc}") from exc
        if not result.ok:
            backend.close()
            raise EngineError("engine fails its golden vectors: " + "; ".join(result.failures))
        return backend, result.max_abs_error


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _batch(golden: Golden) -> int:
    return max((a.shape[0] for a in golden.inputs.values() if a.ndim), default=1)
