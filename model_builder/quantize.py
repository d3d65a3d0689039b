"""INT8 static quantization with onnxruntime.quantization, one variant per runtime.

* ``onnxruntime`` (``model.onnx``): QDQ U8S8 — activations QUInt8 (asymmetric), weights
  QInt8 per channel: the fast path of ORT's CPU kernels.
* ``tensorrt`` (``model.trt.onnx``): QDQ S8S8 symmetric (activations and weights QInt8,
  ``ActivationSymmetric``/``WeightSymmetric``): what TensorRT takes as explicit quantization.

The model is first run through ``quant_pre_process`` (shape inference + graph optimisation).
On EfficientNet-Lite0 the U8S8 QDQ graph fuses completely in ORT (ORT_ENABLE_ALL): 49
QLinearConv (ReLU6 folded into the output range), 9 QLinearAdd, 1 QGemm; only the global
average pool (ReduceMean) runs in float between one DequantizeLinear/QuantizeLinear pair.
QOperator format gives the same optimised graph; reduce_range the same kernels; per-tensor
weights lose top-1 agreement (depthwise convs) without being faster.
An accuracy guard compares each variant with FP32 and tries the configured remedies
when the drop exceeds the budget; :func:`int8_precision` checks a model really is INT8.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from model_builder.errors import CalibrationError, QuantizationError

log = logging.getLogger(__name__)

Method = Literal["minmax", "entropy", "percentile"]
Variant = Literal["onnxruntime", "tensorrt"]
VARIANT_FILES: dict[str, str] = {"onnxruntime": "model.onnx", "tensorrt": "model.trt.onnx"}
_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_INT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


@dataclass(frozen=True)
class QuantConfig:
    method: Method = "minmax"
    per_channel: bool = True
    nodes_to_exclude: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "calibration_method": self.method,
            "per_channel": self.per_channel,
            "nodes_to_exclude": list(self.nodes_to_exclude),
        }


@dataclass(frozen=True)
class GuardResult:
    model: bytes
    config: QuantConfig
    drop: float
    within_budget: bool
    attempts: list[dict[str, Any]] = field(default_factory=list)


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, name: str, data: np.ndarray, batch: int) -> None:
        self._items = [data[i : i + batch] for i in range(0, len(data), batch)]
        self._name = name
        self._it: Iterator[np.ndarray] = iter(self._items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        return None if item is None else {self._name: item}

    def rewind(self) -> None:
        self._it = iter(self._items)


def prepare(fp32: bytes) -> bytes:
    """``quant_pre_process``: symbolic shape inference, ONNX shape inference, ORT optimisation."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "prep.onnx"
        src.write_bytes(fp32)
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        except Exception as exc:  # fall back to ONNX shape inference only
            log.warning("quant_pre_process with symbolic shapes failed (%s); retrying without", exc)
            try:
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            except Exception as exc2:  # the quantizer raises plain exceptions
                raise QuantizationError(f"quant_pre_process failed: {exc2}") from exc2
        return dst.read_bytes()


def _input_info(model: bytes) -> tuple[str, int | None]:
    graph = onnx.load_from_string(model).graph
    inits = {i.name for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in inits)
    dim = first.type.tensor_type.shape.dim[0]
    return first.name, (dim.dim_value if dim.HasField("dim_value") else None)


def quantize(
    prepared: bytes, calibration: np.ndarray, variant: Variant, config: QuantConfig
) -> bytes:
    """One INT8 QDQ variant of ``prepared`` (the output of :func:`prepare`)."""
    if calibration.size == 0 or calibration.shape[0] == 0:
        raise CalibrationError("calibration data is empty")
    name, fixed_batch = _input_info(prepared)
    batch = fixed_batch or 16
    if fixed_batch and len(calibration) % fixed_batch:
        calibration = calibration[: len(calibration) - len(calibration) % fixed_batch]
    if variant == "onnxruntime":
        act, wt, extra = QuantType.QUInt8, QuantType.QInt8, {}
    elif variant == "tensorrt":
        act, wt = QuantType.QInt8, QuantType.QInt8
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    else:
        raise QuantizationError(f"unknown variant {variant!r}")
    extra = {**extra, "CalibMovingAverage": False}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "prep.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(prepared)
        try:
            quantize_static(
                str(src),
                str(dst),
                _Reader(name, calibration, batch),
                quant_format=QuantFormat.QDQ,
                per_channel=config.per_channel,
                activation_type=act,
                weight_type=wt,
                calibrate_method=_METHODS[config.method],
                nodes_to_exclude=list(config.nodes_to_exclude) or None,
                extra_options=extra,
            )
        except Exception as exc:  # quantize_static raises plain exceptions
            raise QuantizationError(f"{variant} INT8 quantization failed: {exc}") from exc
        data = dst.read_bytes()
    if int8_precision(data) != "int8":
        raise QuantizationError(f"{variant} quantization produced a float model (no INT8 ops)")
    return data


def int8_precision(model: bytes) -> str:
    """``"int8"`` when the graph holds QuantizeLinear/DequantizeLinear or QLinear ops with
    integer weights, else ``"fp32"``. A float model is never labelled INT8."""
    graph = onnx.load_from_string(model).graph
    ops = {n.op_type for n in graph.node}
    has_qdq = {"QuantizeLinear", "DequantizeLinear"} <= ops
    has_qlinear = any(
        op.startswith("QLinear") or op in ("ConvInteger", "MatMulInteger") for op in ops
    )
    int_weights = any(init.data_type in _INT_TYPES for init in graph.initializer)
    return "int8" if (has_qdq or has_qlinear) and int_weights else "fp32"


def guarded(
    prepared: bytes,
    calibration: np.ndarray,
    variant: Variant,
    base: QuantConfig,
    remedies: list[QuantConfig],
    budget: float,
    drop_of: Callable[[bytes], float],
) -> GuardResult:
    """Quantize with ``base``; while the drop (from ``drop_of``) is over ``budget``, try
    ``remedies`` in order. Returns the first within budget, else the smallest drop."""
    attempts: list[dict[str, Any]] = []
    best: GuardResult | None = None
    for i, config in enumerate([base, *remedies]):
        model = quantize(prepared, calibration, variant, config)
        drop = float(drop_of(model))
        ok = drop <= budget
        attempts.append(
            {**config.as_dict(), "drop": round(drop, 5), "within_budget": ok, "remedy": i > 0}
        )
        log.info("%s INT8 %s: drop %.4f (budget %.4f)", variant, config.as_dict(), drop, budget)
        if best is None or drop < best.drop:
            best = GuardResult(model, config, drop, ok)
        if ok:
            break
    assert best is not None
    return replace(best, attempts=attempts)
