"""One conformance suite for every runtime backend (issue 6).

Each backend loads the same tiny package through the path the activator uses and must
behave the same: I/O as the card says, batch 1 and N, golden vectors, the documented
error for a bad input shape, idempotent close, concurrent calls.

* ``onnxruntime`` and ``onnxruntime-gpu`` (CPU fallback here) run for real.
* ``tensorrt-fake`` runs the real TensorRTBackend / EngineCache code against FAKE
  tensorrt + pycuda modules (tests/support/fakegpu.py) standing in for the GPU.
* ``tensorrt-gpu`` / ``tensorrt-jetson`` build a real engine; they skip without
  ``tensorrt`` and ``pycuda`` (and, for the Jetson one, without a Jetson).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edge_agent.engine import Engine, check_engine, load_engine
from edge_agent.enginebuild import EngineCache, gpu_engine_key
from edge_agent.errors import BackendError, BadRequest
from edge_agent.runtime import OnnxRuntimeBackend
from edge_agent.tensorrt import OnnxRuntimeGpuBackend
from jetfleet.package import Golden, PackageInfo, read_package
from tests.support.fakegpu import FakeGpu, make_trt_package

HAVE_TRT = all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "pycuda"))
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="tensorrt and pycuda are not installed")

BACKENDS = [
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt-fake",
    pytest.param("tensorrt-gpu", marks=[pytest.mark.gpu, needs_trt]),
    pytest.param("tensorrt-jetson", marks=[pytest.mark.jetson, needs_trt]),
]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    return make_trt_package(tmp_path_factory.mktemp("pkg") / "tiny.jfpkg", seed=7)


def _real_cache(root: Path, jetson: bool) -> EngineCache:
    import pycuda.driver as cuda
    import tensorrt as trt

    if jetson:
        from jetson.profile import detect_profile

        profile = detect_profile()
        if not profile.is_jetson or profile.engine_key is None:
            pytest.skip("not a Jetson with TensorRT")
        key = profile.engine_key
    else:
        key = gpu_engine_key(trt, cuda)
    return EngineCache(root, key, trt_module=trt, cuda_module=cuda)


@pytest.fixture(params=BACKENDS)
def engine(
    request: pytest.FixtureRequest, package: PackageInfo, tmp_path: Path
) -> Iterator[Engine]:
    kind = request.param
    path, sha = Path(package.path), package.sha256
    if kind == "onnxruntime":
        loaded = load_engine(path, sha, "r1", OnnxRuntimeBackend, 1)
    elif kind == "onnxruntime-gpu":
        loaded = load_engine(path, sha, "r1", OnnxRuntimeGpuBackend, 1)
    elif kind == "tensorrt-fake":
        gpu = FakeGpu()  # stands in for the GPU: fake tensorrt + pycuda modules
        cache = EngineCache(tmp_path / "engines", gpu.engine_key, trt_module=gpu.trt,
                            cuda_module=gpu.cuda)
        loaded = cache.load_package_engine(path, sha, "r1")
    else:
        cache = _real_cache(tmp_path / "engines", jetson=kind == "tensorrt-jetson")
        loaded = cache.load_package_engine(path, sha, "r1")
    try:
        yield loaded
    finally:
        loaded.close()


def _golden(package: PackageInfo) -> Golden:
    return read_package(Path(package.path)).golden()


def test_inputs_and_outputs_match_the_card(engine: Engine) -> None:
    card = engine.card
    assert card is not None
    assert [(s.name, s.dtype) for s in engine.inputs] == [(t.name, t.dtype) for t in card.inputs]
    assert [s.shape for s in engine.inputs] == [(None, 64)]
    assert engine.backend.output_names == [t.name for t in card.outputs]


@pytest.mark.parametrize("batch", [1, 5, 8])
def test_batch_one_and_n_match_the_golden_outputs(
    engine: Engine, package: PackageInfo, batch: int
) -> None:
    golden = _golden(package)
    x = golden.inputs["input"][:batch]
    out = engine.run(engine.prepare({"input": x}))
    assert list(out) == ["logits"]
    assert out["logits"].shape == (batch, 10)
    assert out["logits"].dtype == np.float32
    np.testing.assert_allclose(out["logits"], golden.outputs["logits"][:batch],
                               rtol=golden.rtol, atol=golden.atol)


def test_golden_vectors_and_the_activation_check_pass(engine: Engine, package: PackageInfo) -> None:
    golden = _golden(package)
    result = golden.compare(engine.run(engine.prepare(golden.inputs)))
    assert result.ok, result.failures
    check = check_engine(engine, budget_ms=10_000.0)
    assert check.golden_max_error <= golden.atol + golden.rtol


@pytest.mark.parametrize("shape", [(2, 63), (64,), (1, 8, 8)])
def test_a_bad_input_shape_is_a_bad_request(engine: Engine, shape: tuple[int, ...]) -> None:
    with pytest.raises(BadRequest, match="input 'input'"):
        engine.prepare({"input": np.zeros(shape, np.float32)})


def test_concurrent_calls_of_different_batch_sizes(engine: Engine, package: PackageInfo) -> None:
    golden = _golden(package)

    def call(batch: int) -> np.ndarray:
        x = golden.inputs["input"][:batch]
        return engine.run(engine.prepare({"input": x}))["logits"]

    batches = [1, 8, 3, 6, 2, 7, 4, 5] * 4
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, batches))
    for batch, got in zip(batches, results, strict=True):
        np.testing.assert_allclose(got, golden.outputs["logits"][:batch],
                                   rtol=golden.rtol, atol=golden.atol)


def test_close_is_idempotent_and_a_closed_backend_refuses(engine: Engine) -> None:
    engine.backend.close()
    engine.backend.close()
    with pytest.raises(BackendError, match=r"no (model|engine) loaded"):
        engine.backend.run({"input": np.zeros((1, 64), np.float32)})
    engine.close()
    engine.close()
