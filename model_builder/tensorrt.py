"""TensorRT 10 engine build from the QDQ ONNX (explicit quantization), per hardware profile.

An engine runs only on the GPU (SM) and TensorRT version it was built for, so it is
saved with its profile, e.g. ``sm87-trt10.3``. Without the ``tensorrt`` module or a CUDA
GPU every entry point raises :class:`TensorRTUnavailable`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from jetfleet.fsutil import atomic_write
from model_builder.errors import TensorRTError, TensorRTUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engine:
    engine: bytes
    profile: str
    sm: str
    trt_version: str
    fp16: bool


def _import_trt() -> ModuleType:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed (pip install 'jetfleet[jetson]' on a machine with an "
            "NVIDIA GPU, or use JetPack's python3-libnvinfer)"
        ) from exc
    return trt  # type: ignore[no-any-return]


def gpu_capability() -> tuple[int, int]:
    """(major, minor) compute capability of GPU 0, via torch.cuda or pycuda."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return int(major), int(minor)
    except ImportError:
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        major, minor = cuda.Device(0).compute_capability()
        return int(major), int(minor)
    except Exception as exc:  # pycuda missing, or no CUDA device / driver
        raise TensorRTUnavailable(f"no CUDA GPU available for TensorRT: {exc}") from exc


def hardware_profile(trt_version: str | None = None) -> str:
    """``sm{major}{minor}-trt{major}.{minor}`` for this machine, e.g. ``sm87-trt10.3``."""
    version = trt_version or str(_import_trt().__version__)
    major, minor = gpu_capability()
    return f"sm{major}{minor}-trt{'.'.join(version.split('.')[:2])}"


def build_engine(onnx_model: bytes, *, fp16: bool = False, workspace_mib: int = 1024) -> Engine:
    """Parse the (QDQ INT8) ONNX and build a serialized engine; checks it deserializes."""
    trt = _import_trt()
    profile = hardware_profile(str(trt.__version__))
    from jetson.engine import build_serialized_engine
    from jetson.errors import EngineBuildError

    try:
        serialized = build_serialized_engine(onnx_model, trt, fp16=fp16, workspace_mb=workspace_mib)
    except EngineBuildError as exc:
        raise TensorRTError(str(exc)) from exc
    data = bytes(serialized)
    check_engine(data)
    major_minor = profile.split("-")[0]
    return Engine(
        engine=data, profile=profile, sm=major_minor, trt_version=str(trt.__version__), fp16=fp16
    )


def check_engine(engine: bytes) -> None:
    """Deserialize ``engine`` with ``trt.Runtime``; raise if this GPU cannot load it."""
    trt = _import_trt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if runtime.deserialize_cuda_engine(engine) is None:
        raise TensorRTError("the engine does not deserialize on this GPU / TensorRT version")


def save_engine(path: Path, engine: bytes) -> Path:
    """Write ``engine`` atomically (tmp, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, engine)
    return path
