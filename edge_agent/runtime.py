"""Runtime backends: a small interface so the TensorRT backend (issue 6) slots in.

A backend names the package variant it runs (``variant``): ``onnxruntime`` picks the
U8S8 INT8 ONNX for CPU, ``tensorrt`` the S8S8 QDQ ONNX / a cached engine.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.errors import BackendError, BadRequest

logger = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class InputSpec:
    """One model input: ``shape`` entries are ints or ``None`` for a dynamic axis."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def check(self, array: np.ndarray) -> np.ndarray:
        """Return ``array`` in this input's dtype, or raise :class:`BadRequest`."""
        if array.ndim != len(self.shape):
            raise BadRequest(
                f"input {self.name!r} needs {len(self.shape)} dimensions "
                f"{_fmt(self.shape)}, got shape {list(array.shape)}"
            )
        for axis, (want, got) in enumerate(zip(self.shape, array.shape, strict=True)):
            if want is not None and want != got:
                raise BadRequest(
                    f"input {self.name!r} axis {axis} must be {want}, got {got} "
                    f"(expected shape {_fmt(self.shape)})"
                )
        if array.dtype == np.dtype(self.dtype):
            return array
        if array.dtype.kind in "OUSV":
            raise BadRequest(f"input {self.name!r} must be numeric ({self.dtype})")
        return array.astype(self.dtype)


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


class Backend(ABC):
    """A loaded model. ``run`` must be safe to call from many threads at once."""

    name: str = "abstract"
    variant: str = "abstract"  # the package variant this backend runs

    @abstractmethod
    def load(self, model: bytes, threads: int) -> None: ...

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @property
    @abstractmethod
    def inputs(self) -> list[InputSpec]: ...

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def close(self) -> None: ...


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPUExecutionProvider."""

    name = "onnxruntime"
    variant = "onnxruntime"

    def __init__(self) -> None:
        self._session: object | None = None
        self._inputs: list[InputSpec] = []
        self._outputs: list[str] = []
        self._lock = threading.Lock()

    def load(self, model: bytes, threads: int) -> None:
        ort = self._onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(model, options, providers=self._providers())
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BackendError(f"ONNX Runtime cannot load the model: {exc}") from exc
        specs = []
        for arg in session.get_inputs():
            shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
            specs.append(InputSpec(arg.name, shape, _ORT_DTYPES.get(arg.type, "float32")))
        with self._lock:
            self._session = session
            self._inputs = specs
            self._outputs = [o.name for o in session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise BackendError("ONNX Runtime backend has no model loaded")
        try:
            results = session.run(None, inputs)  # type: ignore[attr-defined]
        except Exception as exc:  # ORT's errors are not a public hierarchy
            raise BackendError(f"inference failed: {exc}") from exc
        pairs = zip(self._outputs, results, strict=False)
        return {name: np.asarray(value) for name, value in pairs}

    @property
    def inputs(self) -> list[InputSpec]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def close(self) -> None:
        with self._lock:
            self._session = None

    def _onnxruntime(self) -> Any:
        import onnxruntime  # imported here: the agent starts without a model

        return onnxruntime

    def _providers(self) -> list[Any]:
        """Execution providers, best first (the GPU backend in edge_agent.tensorrt adds some)."""
        return ["CPUExecutionProvider"]


BackendFactory = Callable[[], Backend]


def _tensorrt_backend() -> Backend:
    from edge_agent.tensorrt import TensorRTBackend  # needs tensorrt + pycuda only on load

    return TensorRTBackend()


def _onnxruntime_gpu_backend() -> Backend:
    from edge_agent.tensorrt import OnnxRuntimeGpuBackend

    return OnnxRuntimeGpuBackend()


BACKENDS: dict[str, BackendFactory] = {
    "onnxruntime": OnnxRuntimeBackend,
    "onnxruntime-gpu": _onnxruntime_gpu_backend,
    # runs engine plans: load_engine must hand it an engine (edge_agent.enginebuild)
    "tensorrt": _tensorrt_backend,
}


def backend_factory(name: str) -> BackendFactory:
    """The factory for a backend name."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise BackendError(
            f"backend {name!r} is not available on this agent (have: {', '.join(sorted(BACKENDS))})"
        )
    return factory
