"""Assemble the model package: golden vectors, card.json, the variants; write atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from jetfleet.errors import PackageError
from jetfleet.package import (
    PACKAGE_SUFFIX,
    Golden,
    ModelCard,
    PackageInfo,
    TensorSpec,
    write_package,
)
from model_builder import evaluation
from model_builder.errors import PackagingError


def golden_indices(n: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``n`` inputs (deterministic)."""
    count = min(count, n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))


def _output_step(model: bytes, output_name: str) -> float | None:
    """Scale of the DequantizeLinear that produces ``output_name``, if any."""
    graph = onnx.load_from_string(model).graph
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if output_name in node.output and node.op_type == "DequantizeLinear":
            scale = inits.get(node.input[1])
            if scale is not None:
                return float(np.max(onnx.numpy_helper.to_array(scale)))
    return None


def make_golden(
    model: bytes,
    inputs: np.ndarray,
    input_name: str,
    output_name: str,
    others: dict[str, bytes] | None = None,
) -> tuple[Golden, dict[str, float]]:
    """Golden vectors: expected = ``model``'s ORT CPU outputs (all cores).

    Tolerance: ``atol`` = the larger of 4 output quantization steps, 2 % of the largest
    |output| and 10x the difference seen between 1 thread and all cores; ``rtol`` = 1 %.
    Returns also the max error of each model in ``others`` against it (for the card).
    """
    expected = evaluation.run(model, inputs)
    single = evaluation.run(evaluation.session(model, threads=1), inputs)
    thread_diff = float(np.max(np.abs(single - expected)))
    step = _output_step(model, output_name) or 0.0
    scale = float(np.max(np.abs(expected)))
    atol = max(4.0 * step, 0.02 * scale, 10.0 * thread_diff, 1e-4)
    golden = Golden({input_name: inputs}, {output_name: expected}, rtol=0.01, atol=float(atol))
    check = golden.compare({output_name: single})
    if not check.ok:
        raise PackagingError(f"golden vectors do not reproduce on ORT CPU: {check.failures}")
    errors = {"thread_diff": thread_diff}
    for name, other in (others or {}).items():
        errors[name] = float(np.max(np.abs(evaluation.run(other, inputs) - expected)))
    return golden, errors


def tensor_spec(name: str, sample_shape: tuple[int, ...] | list[int], dynamic: bool) -> TensorSpec:
    return TensorSpec(name=name, shape=["batch" if dynamic else 1, *sample_shape], dtype="float32")


def write(out_dir: Path, card: ModelCard, models: dict[str, bytes], golden: Golden) -> PackageInfo:
    """Write ``{name}-{version}-{sha12}.jfpkg`` into ``out_dir``; nothing is left on failure."""
    out_dir = Path(out_dir)
    staging = out_dir / f".{card.name}-{card.version}.building{PACKAGE_SUFFIX}"
    try:
        info = write_package(staging, card, models, golden)
        final = out_dir / f"{card.name}-{card.version}-{info.sha256[:12]}{PACKAGE_SUFFIX}"
        os.replace(staging, final)
    except PackageError as exc:
        staging.unlink(missing_ok=True)
        raise PackagingError(f"cannot write package: {exc}") from exc
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return PackageInfo(path=final, sha256=info.sha256, length=info.length)
