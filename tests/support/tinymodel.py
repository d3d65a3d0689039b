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
    return _write_model_package(
        out,
        model,
        name=name,
        version=version,
        seed=seed,
        golden_count=golden_count,
        corrupt_golden=corrupt_golden,
        pad_bytes=pad_bytes,
    )


FAULT_INPUT_LIMIT = 1.0  # make_faulty_onnx: inputs whose first feature is >= this fail


def make_faulty_onnx(seed: int = 0, hidden: int = 32) -> bytes:
    """The MLP of :func:`make_mlp_onnx`, plus a branch that makes ONNX Runtime *raise*
    at run time for some inputs (a real model fault, not a corrupt file).

    ``idx = int(input[:, 0] * 10)`` indexes a 10-element table of zeros (``Gather``) whose
    value is added to the logits: for ``input[:, 0]`` in ``[0, 1)`` the output is the plain
    MLP's, for ``input[:, 0] >= 1`` (:data:`FAULT_INPUT_LIMIT`) the index is out of bounds and
    the run fails ("indices element out of data bounds").
    """
    base = onnx.load_from_string(make_mlp_onnx(seed, hidden))
    graph = base.graph
    for out in graph.output:
        out.name = "logits_ok"
    for node in graph.node:
        node.output[:] = ["logits_ok" if o == "logits" else o for o in node.output]
    graph.output.pop()
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0, dtype=np.int64), "col0"),
            numpy_helper.from_array(np.array(10.0, dtype=np.float32), "ten"),
            numpy_helper.from_array(np.zeros(10, dtype=np.float32), "table"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Gather", ["input", "col0"], ["first"], axis=1),
            helper.make_node("Mul", ["first", "ten"], ["scaled"]),
            helper.make_node("Cast", ["scaled"], ["idx"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "idx"], ["picked"], axis=0),
            helper.make_node("Unsqueeze", ["picked", "axis1"], ["bias"]),
            helper.make_node("Add", ["logits_ok", "bias"], ["logits"]),
        ]
    )
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]))
    onnx.checker.check_model(base)
    return base.SerializeToString()


def _write_model_package(
    out: Path,
    model: bytes,
    *,
    name: str,
    version: str,
    seed: int,
    golden_count: int,
    corrupt_golden: bool = False,
    pad_bytes: int = 0,
) -> PackageInfo:
    rng = np.random.default_rng(seed + 1000)
    x = rng.random((golden_count, 64), dtype=np.float32)  # in [0, 1): runs fine
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


def make_faulty_package(
    out: Path, *, name: str = "tiny", version: str = "1", seed: int = 0, golden_count: int = 8
) -> PackageInfo:
    """A package of :func:`make_faulty_onnx`: its golden vectors (features in ``[0, 1)``)
    pass, so it activates, but inputs whose first feature is >= 1 fail at run time."""
    return _write_model_package(
        out,
        make_faulty_onnx(seed),
        name=name,
        version=version,
        seed=seed,
        golden_count=golden_count,
    )


def make_replay_inputs(
    path: Path, n: int = 200, *, seed: int = 0, fault_fraction: float = 0.5
) -> Path:
    """An ``(n, 64)`` float32 ``.npy`` of replay inputs for the tiny models; a
    ``fault_fraction`` of them (spread evenly) have a first feature of 5.0, which the MLP
    runs fine and :func:`make_faulty_onnx` fails on."""
    x = np.random.default_rng(seed).random((n, 64), dtype=np.float32)
    bad = round(n * fault_fraction)
    if bad:
        x[np.linspace(0, n - 1, bad).astype(int), 0] = 5.0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return path


def make_slow_package(
    out: Path,
    *,
    name: str = "tiny",
    version: str = "1",
    seed: int = 0,
    hidden: int = 512,
    extra_matmuls: int = 400,
    golden_count: int = 8,
) -> PackageInfo:
    """A correct but slow package: a wide MLP with ``extra_matmuls`` identity MatMuls of
    ``hidden x hidden`` (the defaults take a few ms a request on one CPU thread, tens of
    times :func:`make_package`'s). Its golden vectors pass."""
    return _write_model_package(
        out,
        make_mlp_onnx(seed, hidden=hidden, extra_matmuls=extra_matmuls),
        name=name,
        version=version,
        seed=seed,
        golden_count=golden_count,
    )
