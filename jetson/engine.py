"""TensorRT engine build from a (QDQ INT8) ONNX model, with the TensorRT 10 Python API.

Shared by the device (``edge_agent.enginebuild``: build on the device when no engine
matches its profile) and the builder (``model_builder.tensorrt``). The ``tensorrt``
module is passed in, so this file imports nothing heavy and its logic is exercised
against a fake of the documented API where no GPU exists.

A strongly typed network (TensorRT 10: the QDQ nodes fix the precisions; ``fp16`` only
applies to TensorRT 8's INT8-flag path) and one optimization profile of batch
1 / 1 / ``max_batch`` for inputs whose batch axis is dynamic.
"""

from __future__ import annotations

from typing import Any

from jetson.errors import EngineBuildError


def build_serialized_engine(
    onnx_bytes: bytes,
    trt: Any,
    *,
    fp16: bool = False,
    workspace_mb: int = 1024,
    max_batch: int = 8,
) -> bytes:
    """Parse the ONNX model and return a serialized engine; :class:`EngineBuildError` if not."""
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    else:  # TensorRT 8.x: explicit batch; QDQ models need the INT8 flag
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse the ONNX model: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(int(d) < 0 for d in t.shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            dims = [int(d) for d in tensor.shape]
            if any(d < 0 for d in dims[1:]):
                raise EngineBuildError(
                    f"input {tensor.name!r} {dims}: only the batch axis may be dynamic"
                )
            rest = tuple(dims[1:])
            profile.set_shape(tensor.name, (1, *rest), (1, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine (see the TensorRT log)")
    return bytes(serialized)
