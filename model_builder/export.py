"""ONNX export: ``torch.onnx.export(dynamo=True)`` first, the legacy TorchScript exporter
as fallback (recorded), and a clear :class:`ExportError` naming an unsupported operator."""

from __future__ import annotations

import io
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from model_builder.errors import ExportError

log = logging.getLogger(__name__)

Exporter = Literal["auto", "dynamo", "legacy"]

_OP_PATTERNS = (
    re.compile(r"operator '([\w:.]+)' to ONNX"),  # legacy: Exporting the operator 'aten::x' ...
    re.compile(r"[Nn]o decompositions? registered for .*?['\"<`]?([\w]+(?:::|\.)[\w.]+)"),
    re.compile(r"(?:OpOverload|target)[\s:=(]+['\"<]?([\w]+(?:::|\.)[\w.]+)"),
    re.compile(r"Unsupported FX nodes?:\s*\{?['\"]?([\w:.]+)"),
    re.compile(r"['\"<]((?:aten|prims|torch\.ops)[\w:.]*)"),
)


@dataclass(frozen=True)
class ExportResult:
    onnx_bytes: bytes
    exporter: str
    opset: int
    dynamo_error: str | None = None


def unsupported_op(message: str) -> str | None:
    """The operator an exporter error message names, if any."""
    for pattern in _OP_PATTERNS:
        m = pattern.search(message)
        if m:
            return m.group(1).rstrip(".")
    return None


def _first_lines(msg: str, n: int = 6) -> str:
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    return "\n".join(lines[:n])


def _export_dynamo(
    model: nn.Module,
    example: torch.Tensor,
    input_name: str,
    output_name: str,
    opset: int,
    dynamic_batch: bool,
) -> bytes:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
            report=False,
        )
    if program is None:
        raise RuntimeError("dynamo exporter returned no program")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        program.save(str(path), external_data=False)
        data = path.read_bytes()
    return data


def _export_legacy(
    model: nn.Module,
    example: torch.Tensor,
    input_name: str,
    output_name: str,
    opset: int,
    dynamic_batch: bool,
) -> bytes:
    buf = io.BytesIO()
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buf,  # type: ignore[arg-type]
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            opset_version=min(opset, 17),
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return buf.getvalue()


def _rename_batch_dim(data: bytes, input_name: str, output_name: str) -> bytes:
    """Name the dynamic batch axis ``batch`` on input and output (dynamo names it ``s0``...)."""
    model = onnx.load_from_string(data)
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name in (input_name, output_name):
            dim = vi.type.tensor_type.shape.dim[0]
            if not dim.HasField("dim_value"):
                dim.dim_param = "batch"
    return bytes(model.SerializeToString())


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    opset: int = 18,
    dynamic_batch: bool = True,
    exporter: Exporter = "auto",
) -> ExportResult:
    """Export ``model`` (eval mode) to ONNX bytes; checked with ``onnx.checker``."""
    model = model.eval()
    dynamo_error: str | None = None
    data: bytes | None = None
    used = exporter
    if exporter in ("auto", "dynamo"):
        try:
            data = _export_dynamo(model, example, input_name, output_name, opset, dynamic_batch)
            used = "dynamo"
        except Exception as exc:  # the exporter raises many types; we report what it said
            dynamo_error = f"{type(exc).__name__}: {exc}"
            log.warning("dynamo ONNX export failed, %s", _first_lines(dynamo_error, 2))
            if exporter == "dynamo":
                op = unsupported_op(dynamo_error)
                raise ExportError(_message(op, dynamo_error, None), op=op) from exc
    if data is None:
        try:
            data = _export_legacy(model, example, input_name, output_name, opset, dynamic_batch)
            used = "legacy"
        except Exception as exc:  # same: report the exporter's own words
            legacy_error = f"{type(exc).__name__}: {exc}"
            op = unsupported_op(legacy_error) or (
                unsupported_op(dynamo_error) if dynamo_error else None
            )
            raise ExportError(_message(op, dynamo_error, legacy_error), op=op) from exc
    if dynamic_batch:
        data = _rename_batch_dim(data, input_name, output_name)
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise ExportError(
            f"exported ONNX model ({used} exporter) fails onnx.checker: {exc}"
        ) from exc
    used_opset = next(
        (
            o.version
            for o in onnx.load_from_string(data).opset_import
            if o.domain in ("", "ai.onnx")
        ),
        opset,
    )
    return ExportResult(
        onnx_bytes=data, exporter=used, opset=int(used_opset), dynamo_error=dynamo_error
    )


def _message(op: str | None, dynamo_error: str | None, legacy_error: str | None) -> str:
    head = (
        f"ONNX export failed: the model uses operator {op!r}, which the exporter cannot convert"
        if op
        else "ONNX export failed"
    )
    parts = [head]
    if dynamo_error:
        parts.append("dynamo exporter: " + _first_lines(dynamo_error, 3))
    if legacy_error:
        parts.append("legacy exporter: " + _first_lines(legacy_error, 3))
    return "\n".join(parts)
