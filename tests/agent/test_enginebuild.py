"""On-device engine build + cache, and the TensorRT / ORT-GPU backends' own behaviour.

The GPU is FAKE here: ``FakeGpu`` (tests/support/fakegpu.py) provides ``tensorrt`` and
``pycuda.driver`` stand-ins with the documented names; everything else is the real code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.engine import load_engine
from edge_agent.enginebuild import EngineCache, build_engine, gpu_engine_key
from edge_agent.errors import ActivationError, BackendError, BadRequest, EngineError
from edge_agent.runtime import backend_factory
from edge_agent.tensorrt import OnnxRuntimeGpuBackend, TensorRTBackend, numpy_dtype
from jetfleet.package import Golden, PackageInfo, read_package
from tests.support.fakegpu import DataType, FakeGpu, make_trt_package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    return make_trt_package(tmp_path_factory.mktemp("pkg") / "tiny.jfpkg", seed=3)


@pytest.fixture
def parts(package: PackageInfo) -> tuple[bytes, Golden]:
    pkg = read_package(Path(package.path))
    return pkg.variant("tensorrt"), pkg.golden()


@pytest.fixture
def gpu() -> FakeGpu:
    return FakeGpu()  # stands in for the GPU


def _cache(tmp_path: Path, gpu: FakeGpu, **kw: Any) -> EngineCache:
    return EngineCache(tmp_path / "engines", gpu.engine_key, trt_module=gpu.trt,
                       cuda_module=gpu.cuda, **kw)


# -- the cache ---------------------------------------------------------------------------
def test_first_load_builds_and_caches_then_a_hit_skips_the_build(
    tmp_path: Path, gpu: FakeGpu, parts: tuple[bytes, Golden]
) -> None:
    onnx, golden = parts
    cache = _cache(tmp_path, gpu)
    first = cache.build_or_load(onnx, golden)
    sha = hashlib.sha256(onnx).hexdigest()
    assert first.source == "built"
    assert first.path == tmp_path / "engines" / sha / "sm87-trt10.3.plan"
    assert cache.lookup(sha) == first.path.read_bytes()
    first.backend.close()
    second = _cache(tmp_path, gpu).build_or_load(onnx, golden)  # e.g. after a restart
    assert second.source == "cache"
    assert gpu.builds == 1
    assert [p.name for p in first.path.parent.iterdir()] == ["sm87-trt10.3.plan"]  # no tmp
    second.backend.close()


def test_an_engine_failing_golden_vectors_is_refused_and_not_cached(
    tmp_path: Path, gpu: FakeGpu, package: PackageInfo, parts: tuple[bytes, Golden]
) -> None:
    onnx, golden = parts
    gpu.miscompile = True
    cache = _cache(tmp_path, gpu)
    with pytest.raises(EngineError, match="golden vectors"):
        cache.build_or_load(onnx, golden)
    assert cache.lookup(hashlib.sha256(onnx).hexdigest()) is None
    with pytest.raises(ActivationError, match="golden vectors"):
        cache.load_package_engine(Path(package.path), package.sha256, "r1")
    assert gpu.pushed == 0  # refused engines are closed
    assert gpu.memory == {}


def test_a_cached_engine_failing_golden_is_deleted_and_rebuilt(
    tmp_path: Path, gpu: FakeGpu, parts: tuple[bytes, Golden]
) -> None:
    onnx, golden = parts
    cache = _cache(tmp_path, gpu)
    sha = hashlib.sha256(onnx).hexdigest()
    bad = gpu.plan(onnx, {"input": [[1, 64], [1, 64], [8, 64]]}, offset=0.5)
    cache.store(sha, bad)
    got = cache.build_or_load(onnx, golden)
    assert got.source == "built"
    assert gpu.builds == 1
    assert cache.lookup(sha) != bad
    got.backend.close()


@pytest.mark.parametrize("garbage", [b"", b"not an engine", b"FAKETRT1\xff\xff"])
def test_a_corrupt_cached_plan_is_rebuilt(
    tmp_path: Path, gpu: FakeGpu, parts: tuple[bytes, Golden], garbage: bytes
) -> None:
    onnx, golden = parts
    cache = _cache(tmp_path, gpu)
    sha = hashlib.sha256(onnx).hexdigest()
    cache.store(sha, garbage)
    got = cache.build_or_load(onnx, golden)
    assert got.source == "built"
    assert gpu.trt.Runtime(None).deserialize_cuda_engine(cache.lookup(sha)) is not None
    got.backend.close()


def test_an_assigned_engine_is_used_and_cached_and_a_foreign_one_is_refused(
    tmp_path: Path, gpu: FakeGpu, parts: tuple[bytes, Golden]
) -> None:
    onnx, golden = parts
    profiles = {"input": [[1, 64], [1, 64], [8, 64]]}
    cache = _cache(tmp_path, gpu)
    foreign = gpu.plan(onnx, profiles, engine_key="sm72-trt8.5")  # built for a Xavier
    got = cache.build_or_load(onnx, golden, assigned=foreign)
    assert got.source == "built"
    got.backend.close()
    fresh = _cache(tmp_path / "other", gpu)
    assigned = gpu.plan(onnx, profiles)
    got = fresh.build_or_load(onnx, golden, assigned=assigned)
    assert got.source == "assigned"
    assert gpu.builds == 1
    assert fresh.lookup(hashlib.sha256(onnx).hexdigest()) == assigned
    got.backend.close()


def test_build_failures_say_why(tmp_path: Path, gpu: FakeGpu, parts: tuple[bytes, Golden]) -> None:
    onnx, golden = parts
    with pytest.raises(EngineError, match="cannot parse the ONNX"):
        build_engine(b"not onnx", gpu.trt)
    gpu.fail_build = True
    with pytest.raises(EngineError, match="failed to build"):
        _cache(tmp_path, gpu).build_or_load(onnx, golden)


def test_cache_keys_are_validated_and_prune_keeps_what_is_asked(
    tmp_path: Path, gpu: FakeGpu, parts: tuple[bytes, Golden]
) -> None:
    onnx, golden = parts
    cache = _cache(tmp_path, gpu)
    with pytest.raises(EngineError, match="sha256"):
        cache.lookup("../../etc/passwd")
    with pytest.raises(EngineError, match="engine key"):
        EngineCache(tmp_path, "../x")
    old = "a" * 64
    cache.store(old, b"x")
    cache.build_or_load(onnx, golden).backend.close()
    keep = hashlib.sha256(onnx).hexdigest()
    assert cache.prune({keep}) == [old]
    assert cache.lookup(old) is None
    assert cache.lookup(keep) is not None


def test_the_profile_covers_the_golden_batch(
    tmp_path: Path, gpu: FakeGpu, parts: tuple[bytes, Golden]
) -> None:
    onnx, golden = parts  # golden batch 8 > max_batch 4: the profile grows to 8
    backend = _cache(tmp_path, gpu, max_batch=4).build_or_load(onnx, golden).backend
    backend.run({"input": np.zeros((8, 64), np.float32)})
    with pytest.raises(BadRequest, match="optimization profile"):
        backend.run({"input": np.zeros((9, 64), np.float32)})
    backend.close()


def test_gpu_engine_key_names_sm_and_tensorrt_version() -> None:
    gpu = FakeGpu(sm=(9, 0), trt_version="10.7.0.23")
    assert gpu_engine_key(gpu.trt, gpu.cuda) == "sm90-trt10.7"


# -- the TensorRT backend ---------------------------------------------------------------
def _plan(gpu: FakeGpu, onnx: bytes) -> bytes:
    return gpu.plan(onnx, {"input": [[1, 64], [1, 64], [16, 64]]})


def test_an_engine_that_does_not_deserialize_is_an_engine_error(gpu: FakeGpu) -> None:
    backend = TensorRTBackend(trt_module=gpu.trt, cuda_module=gpu.cuda)
    with pytest.raises(EngineError, match="cannot deserialize"):
        backend.load(b"\x08\x07onnx-bytes", threads=1)
    assert gpu.pushed == 0
    with pytest.raises(BackendError, match="no engine loaded"):
        backend.run({"input": np.zeros((1, 64), np.float32)})


def test_buffers_grow_with_the_batch_and_are_freed_on_close(
    gpu: FakeGpu, parts: tuple[bytes, Golden]
) -> None:
    onnx, _ = parts
    backend = TensorRTBackend(trt_module=gpu.trt, cuda_module=gpu.cuda)
    backend.load(_plan(gpu, onnx), threads=1)
    x = np.random.default_rng(0).random((16, 64), dtype=np.float32)
    backend.run({"input": x[:1]})
    assert gpu.allocations == 2  # input + output
    small = backend.run({"input": x[:2]})["logits"]
    assert gpu.allocations == 4  # grown
    big = backend.run({"input": x})["logits"]
    assert gpu.allocations == 6
    again = backend.run({"input": x[:2]})["logits"]
    assert gpu.allocations == 6  # reused
    np.testing.assert_array_equal(again, small)
    np.testing.assert_allclose(big[:2], small, rtol=1e-6)
    assert gpu.pushed == 0
    backend.close()
    assert gpu.memory == {}


def test_inputs_are_checked_by_name_and_cast_to_the_engine_dtype(
    gpu: FakeGpu, parts: tuple[bytes, Golden]
) -> None:
    onnx, _ = parts
    backend = TensorRTBackend(trt_module=gpu.trt, cuda_module=gpu.cuda)
    backend.load(_plan(gpu, onnx), threads=1)
    with pytest.raises(BadRequest, match="unknown input"):
        backend.run({"image": np.zeros((1, 64), np.float32)})
    with pytest.raises(BadRequest, match="missing input"):
        backend.run({})
    out = backend.run({"input": np.zeros((1, 64), np.float64)})
    assert out["logits"].dtype == np.float32
    backend.close()


def test_tensorrt_types_map_to_numpy() -> None:
    assert numpy_dtype(DataType.HALF) == np.float16
    assert numpy_dtype(DataType.INT8) == np.int8
    with pytest.raises(BackendError, match="BF16"):
        numpy_dtype(DataType.BF16)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="has tensorrt")
def test_the_registered_tensorrt_backend_says_what_is_missing(package: PackageInfo) -> None:
    with pytest.raises(ActivationError, match="TensorRT is not installed"):
        load_engine(Path(package.path), package.sha256, None, backend_factory("tensorrt"), 1)


# -- ONNX Runtime on GPU providers --------------------------------------------------------
class _FakeOrt:
    """onnxruntime-gpu stand-in: reports GPU providers, records the session's arguments and
    runs on the real CPU provider (the GPU is the only fake part)."""

    SessionOptions = ort.SessionOptions

    def __init__(self, providers: list[str]) -> None:
        self.providers = providers
        self.calls: list[list[Any]] = []

    def get_available_providers(self) -> list[str]:
        return self.providers

    def InferenceSession(self, model: bytes, options: Any, providers: list[Any]) -> Any:
        self.calls.append(providers)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def test_ort_gpu_uses_tensorrt_ep_with_engine_cache_and_int8(
    tmp_path: Path, package: PackageInfo
) -> None:
    fake = _FakeOrt(["TensorrtExecutionProvider", "CUDAExecutionProvider",
                     "CPUExecutionProvider"])
    backend = OnnxRuntimeGpuBackend(ort_module=fake, engine_cache_dir=tmp_path / "ort")
    assert backend.variant == "tensorrt"
    engine = load_engine(Path(package.path), package.sha256, None, lambda: backend, 1)
    (providers,) = fake.calls
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    options = providers[0][1]
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path / "ort")
    assert options["trt_int8_enable"] is True
    assert engine.run({"input": np.zeros((2, 64), np.float32)})["logits"].shape == (2, 10)


@pytest.mark.parametrize(("available", "where"), [
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDA"),
    (["CPUExecutionProvider"], "the CPU"),
])
def test_ort_gpu_falls_back_and_logs_why(
    caplog: pytest.LogCaptureFixture, available: list[str], where: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_agent.tensorrt"):
        backend = OnnxRuntimeGpuBackend(ort_module=_FakeOrt(available))
    assert backend.variant == "onnxruntime"
    assert f"no TensorrtExecutionProvider (have: {', '.join(sorted(available))}); " \
           f"running the onnxruntime variant on {where}" in caplog.text
