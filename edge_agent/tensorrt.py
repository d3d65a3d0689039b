"""GPU backends (issue 6): TensorRT engines, and ONNX Runtime's GPU execution providers.

* :class:`TensorRTBackend` runs a serialized TensorRT engine (a ``.plan``, built for this
  device's profile, see :mod:`edge_agent.enginebuild`) with the TensorRT 10 Python API and
  pycuda: device buffers plus page-locked host buffers (grown when a dynamic input grows),
  tensor addresses, ``execute_async_v3`` on a CUDA stream, ``set_input_shape`` per call
  within the engine's optimization profile.
* :class:`OnnxRuntimeGpuBackend` is ONNX Runtime with ``TensorrtExecutionProvider`` /
  ``CUDAExecutionProvider`` when onnxruntime-gpu has them, else the CPU (logged).

The ``tensorrt`` and ``pycuda.driver`` modules are constructor arguments, imported lazily
when not given: the agent starts without them, and tests pass stand-ins for the GPU that
implement the same documented names (``tests/support/fakegpu.py``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import BackendError, BadRequest, EngineError
from edge_agent.runtime import Backend, InputSpec, OnnxRuntimeBackend

logger = logging.getLogger(__name__)

# TensorRT DataType names -> numpy dtypes (BF16, FP8, INT4 have no numpy equivalent).
_NUMPY_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`BackendError` saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(
            "TensorRT is not installed (JetPack's python3-libnvinfer, or "
            "pip install 'jetfleet[jetson]' on a machine with an NVIDIA GPU)"
        ) from exc
    return tensorrt


def import_cuda() -> Any:
    """``pycuda.driver``, or :class:`BackendError` saying how to get it."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendError("pycuda is not installed (pip install 'jetfleet[jetson]')") from exc
    return cuda


def numpy_dtype(trt_dtype: Any) -> np.dtype[Any]:
    """The numpy dtype for a ``trt.DataType``; :class:`BackendError` when numpy has none."""
    name = str(getattr(trt_dtype, "name", trt_dtype)).rsplit(".", 1)[-1].upper()
    numpy_name = _NUMPY_DTYPES.get(name)
    if numpy_name is None:
        raise BackendError(f"TensorRT tensor type {name} has no numpy equivalent")
    return np.dtype(numpy_name)


@dataclass
class _Buffer:
    """A device allocation and its page-locked host twin, ``capacity`` elements each."""

    device: Any
    host: np.ndarray
    capacity: int


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]  # -1 for a dynamic axis
    dtype: np.dtype[Any]
    is_input: bool
    profile: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (min, max), dynamic inputs


class TensorRTBackend(Backend):
    """A deserialized TensorRT engine on one GPU. ``run`` serializes calls (one context)."""

    name = "tensorrt"
    variant = "tensorrt"

    def __init__(
        self, *, trt_module: Any = None, cuda_module: Any = None, device: int = 0
    ) -> None:
        self._trt = trt_module
        self._cuda = cuda_module
        self._device = device
        self._lock = threading.Lock()
        self._ctx: Any = None  # the CUDA primary context, pushed around every GPU call
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._in: list[_Tensor] = []
        self._out: list[_Tensor] = []
        self._buffers: dict[str, _Buffer] = {}

    # -- Backend -------------------------------------------------------------------------
    def load(self, model: bytes, threads: int) -> None:
        """Deserialize ``model`` (engine plan bytes); :class:`EngineError` if it does not."""
        trt = self._trt if self._trt is not None else import_tensorrt()
        cuda = self._cuda if self._cuda is not None else import_cuda()
        self._trt, self._cuda = trt, cuda
        try:
            cuda.init()
            ctx = cuda.Device(self._device).retain_primary_context()
        except Exception as exc:  # pycuda raises cuda.Error / LogicError subclasses
            raise BackendError(f"no usable CUDA device {self._device}: {exc}") from exc
        ctx.push()
        try:
            engine = self._deserialize(trt, model)
            context = engine.create_execution_context()
            if context is None:
                raise EngineError("TensorRT cannot create an execution context (GPU memory?)")
            tensors = [self._describe(trt, engine, engine.get_tensor_name(i))
                       for i in range(engine.num_io_tensors)]
            stream = cuda.Stream()
        finally:
            ctx.pop()
        with self._lock:
            self._release_locked()
            self._ctx, self._engine, self._context, self._stream = ctx, engine, context, stream
            self._in = [t for t in tensors if t.is_input]
            self._out = [t for t in tensors if not t.is_input]
        logger.info("TensorRT engine loaded: inputs %s, outputs %s",
                    [t.name for t in self._in], [t.name for t in self._out])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._context is None:
                raise BackendError("TensorRT backend has no engine loaded")
            arrays = self._check_inputs(inputs)
            with self._pushed():
                try:
                    return self._execute(arrays)
                except (BadRequest, BackendError):
                    raise
                except Exception as exc:  # pycuda / TensorRT runtime errors
                    raise BackendError(f"TensorRT inference failed: {exc}") from exc

    @property
    def inputs(self) -> list[InputSpec]:
        return [
            InputSpec(t.name, tuple(None if d < 0 else d for d in t.shape), t.dtype.name)
            for t in self._in
        ]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self._out]

    def close(self) -> None:
        with self._lock:
            self._release_locked()

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _deserialize(trt: Any, model: bytes) -> Any:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        try:
            engine = runtime.deserialize_cuda_engine(model)
        except Exception as exc:  # some TensorRT versions raise instead of returning None
            raise EngineError(f"TensorRT cannot deserialize the engine: {exc}") from exc
        if engine is None:
            raise EngineError(
                "TensorRT cannot deserialize the engine: it is corrupt, not an engine plan "
                "(an ONNX model?), or built for another GPU or TensorRT version"
            )
        return engine

    @staticmethod
    def _describe(trt: Any, engine: Any, name: str) -> _Tensor:
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        dtype = numpy_dtype(engine.get_tensor_dtype(name))
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            return _Tensor(name, shape, dtype, is_input=False)
        profile = None
        if any(d < 0 for d in shape):
            low, _opt, high = engine.get_tensor_profile_shape(name, 0)
            profile = (tuple(int(d) for d in low), tuple(int(d) for d in high))
        return _Tensor(name, shape, dtype, is_input=True, profile=profile)

    @contextmanager
    def _pushed(self) -> Iterator[None]:
        self._ctx.push()  # the context is current per thread: push in the calling thread
        try:
            yield
        finally:
            self._ctx.pop()

    def _check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = sorted(set(inputs) - {t.name for t in self._in})
        if unknown:
            raise BadRequest(f"unknown input(s) {unknown}; the engine takes "
                             f"{[t.name for t in self._in]}")
        arrays: dict[str, np.ndarray] = {}
        for spec, tensor in zip(self.inputs, self._in, strict=True):
            if spec.name not in inputs:
                raise BadRequest(f"missing input {spec.name!r}")
            array = np.ascontiguousarray(spec.check(np.asarray(inputs[spec.name])))
            if tensor.profile is not None:
                low, high = tensor.profile
                shape = array.shape
                if any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True)):
                    raise BadRequest(
                        f"input {spec.name!r} shape {list(shape)} is outside the engine's "
                        f"optimization profile (min {list(low)}, max {list(high)})"
                    )
            arrays[spec.name] = array
        return arrays

    def _execute(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, context, stream = self._cuda, self._context, self._stream
        for name, array in arrays.items():
            if not context.set_input_shape(name, array.shape):
                raise BadRequest(f"TensorRT refuses shape {list(array.shape)} for {name!r}")
            host = self._buffer(name, array.shape, array.dtype)
            host[...] = array
            cuda.memcpy_htod_async(self._buffers[name].device, host, stream)
        outputs: dict[str, np.ndarray] = {}
        for tensor in self._out:
            shape = tuple(int(d) for d in context.get_tensor_shape(tensor.name))
            if any(d < 0 for d in shape):
                raise BackendError(f"output {tensor.name!r} has a data-dependent shape "
                                   f"{list(shape)}, which this backend does not support")
            outputs[tensor.name] = self._buffer(tensor.name, shape, tensor.dtype)
        for name, buf in self._buffers.items():
            context.set_tensor_address(name, int(buf.device))
        if not context.execute_async_v3(stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        for name, host in outputs.items():
            cuda.memcpy_dtoh_async(host, self._buffers[name].device, stream)
        stream.synchronize()
        return {name: host.copy() for name, host in outputs.items()}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A host view of ``shape`` over ``name``'s buffers, grown (re-allocated) if needed."""
        count = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.capacity < count:
            if buf is not None:
                buf.device.free()
            capacity = max(count, 1)
            device = self._cuda.mem_alloc(capacity * dtype.itemsize)
            host = self._cuda.pagelocked_empty(capacity, dtype)
            buf = self._buffers[name] = _Buffer(device, host, capacity)
        return buf.host[:count].reshape(shape)

    def _release_locked(self) -> None:
        if self._ctx is None:
            return
        self._ctx.push()
        try:
            for buf in self._buffers.values():
                buf.device.free()
            self._buffers.clear()
            self._context = self._engine = self._stream = None
        finally:
            self._ctx.pop()
            self._ctx = None


class OnnxRuntimeGpuBackend(OnnxRuntimeBackend):
    """ONNX Runtime on TensorRT / CUDA execution providers, falling back to the CPU.

    With ``TensorrtExecutionProvider`` it runs the package's ``tensorrt`` variant (S8S8
    QDQ, ``trt_int8_enable``) and caches the engines ORT builds in ``engine_cache_dir``;
    otherwise the ``onnxruntime`` (U8S8) variant on CUDA or the CPU. The reason for a
    fallback is logged once, when the backend is made.
    """

    name = "onnxruntime-gpu"

    def __init__(
        self,
        *,
        ort_module: Any = None,
        engine_cache_dir: Path | None = None,
        device: int = 0,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        self._ort = ort_module if ort_module is not None else super()._onnxruntime()
        available = set(self._ort.get_available_providers())
        providers: list[Any] = []
        if "TensorrtExecutionProvider" in available:
            options: dict[str, Any] = {
                "device_id": device,
                "trt_int8_enable": True,  # QDQ: explicit quantization, no calibration table
                "trt_fp16_enable": fp16,
                "trt_engine_cache_enable": engine_cache_dir is not None,
            }
            if engine_cache_dir is not None:
                engine_cache_dir.mkdir(parents=True, exist_ok=True)
                options["trt_engine_cache_path"] = str(engine_cache_dir)
                options["trt_timing_cache_enable"] = True
            providers.append(("TensorrtExecutionProvider", options))
        if "CUDAExecutionProvider" in available:
            providers.append(("CUDAExecutionProvider", {"device_id": device}))
        providers.append("CPUExecutionProvider")
        self.providers = providers
        self.variant = "tensorrt" if "TensorrtExecutionProvider" in available else "onnxruntime"
        if "TensorrtExecutionProvider" not in available:
            logger.warning(
                "onnxruntime-gpu: no TensorrtExecutionProvider (have: %s); running the "
                "onnxruntime variant on %s", ", ".join(sorted(available)),
                "CUDA" if "CUDAExecutionProvider" in available else "the CPU",
            )

    def _onnxruntime(self) -> Any:
        return self._ort

    def _providers(self) -> list[Any]:
        return list(self.providers)
