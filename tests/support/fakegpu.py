"""STAND-INS FOR GPU HARDWARE: fake ``tensorrt`` and ``pycuda.driver`` modules (tests only).

They implement the documented TensorRT 10 / pycuda names the agent calls (``Runtime``,
``deserialize_cuda_engine``, ``num_io_tensors``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``, ``Builder``, ``OnnxParser``,
``mem_alloc``, ``pagelocked_empty``, ``memcpy_htod_async`` ...). "Device memory" is a dict
of bytearrays; an "engine" is the ONNX model plus its optimization profile, executed with
ONNX Runtime on the CPU. Only the hardware is fake: the agent's code paths are real.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

_MAGIC = b"FAKETRT1"
_ORT_TYPES = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int8)": "INT8",
              "tensor(uint8)": "UINT8", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
              "tensor(bool)": "BOOL"}


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 6
    BF16 = 7


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


@dataclass
class FakeGpu:
    """One fake GPU: its ``trt`` and ``cuda`` modules share its memory and counters."""

    sm: tuple[int, int] = (8, 7)
    trt_version: str = "10.3.0"
    miscompile: bool = False  # builds engines whose outputs are off (a bad build)
    fail_build: bool = False
    builds: int = 0
    memory: dict[int, bytearray] = field(default_factory=dict)
    allocations: int = 0
    pushed: int = 0
    trt: Any = None
    cuda: Any = None

    def __post_init__(self) -> None:
        self.trt = _TrtModule(self)
        self.cuda = _CudaModule(self)

    @property
    def engine_key(self) -> str:
        return f"sm{self.sm[0]}{self.sm[1]}-trt{'.'.join(self.trt_version.split('.')[:2])}"

    def plan(self, onnx_bytes: bytes, profiles: dict[str, list[list[int]]],
             offset: float = 0.0, engine_key: str | None = None) -> bytes:
        meta = json.dumps({"key": engine_key or self.engine_key, "profiles": profiles,
                           "offset": offset}).encode()
        return _MAGIC + struct.pack("<I", len(meta)) + meta + onnx_bytes


# -- tensorrt -------------------------------------------------------------------------------
class _TrtModule:
    DataType = DataType
    TensorIOMode = TensorIOMode
    NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
    MemoryPoolType = MemoryPoolType
    Logger = Logger

    def __init__(self, gpu: FakeGpu) -> None:
        self._gpu = gpu
        self.__version__ = gpu.trt_version

    def Runtime(self, logger: Logger) -> _Runtime:
        return _Runtime(self._gpu)

    def Builder(self, logger: Logger) -> _Builder:
        return _Builder(self._gpu)

    def OnnxParser(self, network: _Network, logger: Logger) -> _Parser:
        return _Parser(network)


class _Runtime:
    def __init__(self, gpu: FakeGpu) -> None:
        self._gpu = gpu

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        """None for anything but a plan built for this GPU, like TensorRT."""
        data = bytes(data)
        if not data.startswith(_MAGIC):
            return None
        try:
            (size,) = struct.unpack("<I", data[8:12])
            meta = json.loads(data[12:12 + size])
            if meta["key"] != self._gpu.engine_key:
                return None
            session = ort.InferenceSession(data[12 + size:], providers=["CPUExecutionProvider"])
        except Exception:
            return None
        return _Engine(self._gpu, session, meta)


class _Engine:
    def __init__(self, gpu: FakeGpu, session: ort.InferenceSession, meta: dict[str, Any]):
        self.gpu, self.session, self.meta = gpu, session, meta
        self.args = {a.name: (TensorIOMode.INPUT, a) for a in session.get_inputs()}
        self.args.update({a.name: (TensorIOMode.OUTPUT, a) for a in session.get_outputs()})
        self.names = list(self.args)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.args[name][0]

    def get_tensor_shape(self, name: str) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in self.args[name][1].shape]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[_ORT_TYPES[self.args[name][1].type]]

    def get_tensor_profile_shape(self, name: str, index: int) -> list[list[int]]:
        return self.meta["profiles"][name]

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _opt, high = self.engine.meta["profiles"].get(name, [shape, shape, shape])
        if not all(lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> list[int]:
        mode, arg = self.engine.args[name]
        if mode == TensorIOMode.INPUT:
            return list(self.shapes[name])
        params: dict[str, int] = {}
        for inp in self.engine.session.get_inputs():
            for dim, value in zip(inp.shape, self.shapes.get(inp.name, ()), strict=False):
                if isinstance(dim, str):
                    params[dim] = value
        return [d if isinstance(d, int) else params.get(d, -1) for d in arg.shape]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        memory, engine = self.engine.gpu.memory, self.engine
        feeds = {}
        for arg in engine.session.get_inputs():
            dtype = np.dtype(_np(arg.type))
            count = int(np.prod(self.shapes[arg.name]))
            raw = memory[self.addresses[arg.name]][:count * dtype.itemsize]
            feeds[arg.name] = np.frombuffer(bytes(raw), dtype).reshape(self.shapes[arg.name])
        results = engine.session.run(None, feeds)
        for arg, value in zip(engine.session.get_outputs(), results, strict=True):
            value = np.asarray(value) + np.asarray(engine.meta["offset"], value.dtype)
            data = np.ascontiguousarray(value).tobytes()
            target = memory[self.addresses[arg.name]]
            assert len(data) <= len(target), "output buffer too small"
            target[:len(data)] = data
        return True


def _np(ort_type: str) -> str:
    return {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8",
            "INT32": "int32", "INT64": "int64", "BOOL": "bool"}[_ORT_TYPES[ort_type]]


@dataclass
class _Input:
    name: str
    shape: list[int]


class _Network:
    def __init__(self) -> None:
        self.onnx: bytes = b""
        self.inputs: list[_Input] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> _Input:
        return self.inputs[index]


class _Parser:
    def __init__(self, network: _Network) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse(self, data: bytes) -> bool:
        try:
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.errors = [f"ModelImporter: {exc}"]
            return False
        self.network.onnx = bytes(data)
        self.network.inputs = [_Input(a.name, [d if isinstance(d, int) else -1 for d in a.shape])
                               for a in session.get_inputs()]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, low: tuple[int, ...], opt: tuple[int, ...],
                  high: tuple[int, ...]) -> None:
        self.shapes[name] = [list(low), list(opt), list(high)]


class _Config:
    def __init__(self) -> None:
        self.pools: dict[Any, int] = {}
        self.profiles: list[_Profile] = []

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class _Builder:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu

    def create_network(self, flags: int) -> _Network:
        assert flags == 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        self.gpu.builds += 1
        if self.gpu.fail_build:
            return None
        profiles = config.profiles[0].shapes if config.profiles else {}
        return self.gpu.plan(network.onnx, profiles, 1.0 if self.gpu.miscompile else 0.0)


# -- pycuda.driver -------------------------------------------------------------------------
class _Allocation:
    def __init__(self, gpu: FakeGpu, address: int) -> None:
        self.gpu, self.address = gpu, address

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        self.gpu.memory.pop(self.address, None)


class _PrimaryContext:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu

    def push(self) -> None:
        self.gpu.pushed += 1

    def pop(self) -> None:
        assert self.gpu.pushed > 0, "pop without push"
        self.gpu.pushed -= 1


class _Device:
    def __init__(self, gpu: FakeGpu, index: int) -> None:
        if index != 0:
            raise RuntimeError(f"cuDeviceGet failed: invalid device ordinal {index}")
        self.gpu = gpu

    def compute_capability(self) -> tuple[int, int]:
        return self.gpu.sm

    def retain_primary_context(self) -> _PrimaryContext:
        return _PrimaryContext(self.gpu)


class _Stream:
    _next = 1

    def __init__(self) -> None:
        self.handle = _Stream._next
        _Stream._next += 1

    def synchronize(self) -> None:
        return None


class _CudaModule:
    def __init__(self, gpu: FakeGpu) -> None:
        self._gpu = gpu
        self._next = 0x1000

    def init(self) -> None:
        return None

    def Device(self, index: int) -> _Device:
        return _Device(self._gpu, index)

    def Stream(self) -> _Stream:
        return _Stream()

    def mem_alloc(self, nbytes: int) -> _Allocation:
        assert self._gpu.pushed > 0, "no current CUDA context"
        address, self._next = self._next, self._next + nbytes + 256
        self._gpu.memory[address] = bytearray(nbytes)
        self._gpu.allocations += 1
        return _Allocation(self._gpu, address)

    def pagelocked_empty(self, shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def memcpy_htod_async(self, dest: _Allocation, src: np.ndarray, stream: _Stream) -> None:
        data = np.ascontiguousarray(src).tobytes()
        target = self._gpu.memory[int(dest)]
        assert len(data) <= len(target), "host-to-device copy overruns the allocation"
        target[:len(data)] = data

    def memcpy_dtoh_async(self, dest: np.ndarray, src: _Allocation, stream: _Stream) -> None:
        raw = bytes(self._gpu.memory[int(src)][:dest.nbytes])
        dest[...] = np.frombuffer(raw, dest.dtype).reshape(dest.shape)


# -- a package with both variants ---------------------------------------------------------
def make_trt_package(out: Any, *, seed: int = 0, golden_count: int = 8) -> Any:
    """A real package with ``onnxruntime`` and ``tensorrt`` variants (the same FP32 MLP: the
    fake GPU runs it exactly, and a real TensorRT builds it too)."""
    from jetfleet.package import Golden, GoldenSpec, ModelCard, TensorSpec, write_package
    from tests.support.tinymodel import make_mlp_onnx, run_onnx

    model = make_mlp_onnx(seed)
    x = np.random.default_rng(seed + 1000).random((golden_count, 64), dtype=np.float32)
    card = ModelCard(
        name="tiny-trt", version="1",
        inputs=[TensorSpec(name="input", shape=["batch", 64], dtype="float32")],
        outputs=[TensorSpec(name="logits", shape=["batch", 10], dtype="float32")],
        variants={"onnxruntime": "model.onnx", "tensorrt": "model.trt.onnx"},
        golden=GoldenSpec(count=golden_count, rtol=1e-2, atol=1e-3),
    )
    golden = Golden(inputs={"input": x}, outputs={"logits": run_onnx(model, x)},
                    rtol=1e-2, atol=1e-3)
    return write_package(out, card, {"model.onnx": model, "model.trt.onnx": model}, golden)
