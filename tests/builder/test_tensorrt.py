from __future__ import annotations

import importlib.util

import pytest

from model_builder import TensorRTUnavailable
from model_builder import tensorrt as trt_builder
from tests.support.tinymodel import make_mlp_onnx

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_error_is_clear() -> None:
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        trt_builder.build_engine(make_mlp_onnx())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs tensorrt and an NVIDIA GPU")
def test_engine_builds_and_loads_with_its_profile(digits_package) -> None:  # type: ignore[no-untyped-def]
    engine = trt_builder.build_engine(digits_package.variant("tensorrt"))
    assert engine.profile.startswith("sm")
    assert "-trt" in engine.profile
    trt_builder.check_engine(engine.engine)
