"""Tiny real ONNX models and packages for tests, built with onnx.helper (no torch).

The model is a 64→32→10 MLP over 8x8 "digit" inputs: small, but a real ONNX graph
that ONNX Runtime loads and runs, so agent and server tests exercise real code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from jetfleet.package import Golden, GoldenSpec, ModelCard, PackageInfo, TensorSpec, write_package


def make_mlp_onnx(seed: int = 0, hidden: int = 32, extra_matmuls: int = 0) -> bytes:
    """A 64→hidden→10 MLP with dynamic batch; ``extra_matmuls`` adds work (a slower model)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (64, hidden)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (hidden,)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (hidden, 10)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (10,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
    ]
    inits = [
        numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
    ]
    last = "h2"
    if extra_matmuls:
        eye = np.eye(hidden, dtype=np.float32)
        inits.append(numpy_helper.from_array(eye, "eye"))
        for i in range(extra_matmuls):
            nodes.append(helper.make_node("MatMul", [last, "eye"], [f"x{i}"]))
            last = f"x{i}"
    nodes += [
        helper.make_node("MatMul", [last, "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(model: bytes, inputs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": inputs})[0])


def make_package(
    out: Path,
    *,
    name: str = "tiny",
    version: str = "1",
    seed: int = 0,
    extra_matmuls: int = 0,
    corrupt_golden: bool = False,
    golden_count: int = 8,
    pad_bytes: int = 0,
) -> PackageInfo:
    """Write a real package. ``corrupt_golden`` makes its golden vectors fail on load;
    ``pad_bytes`` adds a padding member so transfers span many blocks."""
    model = make_mlp_onnx(seed, extra_matmuls=extra_matmuls)
    rng = np.random.default_rng(seed + 1000)
    x = rng.random((golden_count, 64), dtype=np.float32)
    y = run_onnx(model, x)
    if corrupt_golden:
        y = y + 1.0
    card = ModelCard(
        name=name,
        version=version,
        inputs=[TensorSpec(name="input", shape=["batch", 64], dtype="float32")],
        outputs=[TensorSpec(name="logits", shape=["batch", 10], dtype="float32")],
        variants={"onnxruntime": "model.onnx"},
        precision={"onnxruntime": "fp32"},
        golden=GoldenSpec(count=golden_count, rtol=1e-3, atol=1e-4),
        labels=[str(i) for i in range(10)],
        metrics={"size_bytes": len(model)},
    )
    models = {"model.onnx": model}
    if pad_bytes:
        models["padding.bin"] = np.random.default_rng(seed).bytes(pad_bytes)
    golden = Golden(inputs={"input": x}, outputs={"logits": y}, rtol=1e-3, atol=1e-4)
    return write_package(Path(out), card, models, golden)
