"""The stages after setup: baseline, prune, distill, export, INT8, TensorRT, evaluate, package."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime
import torch

from jetfleet.package import GoldenSpec, ModelCard, PackageInfo
from model_builder import evaluation, packaging, pruning, quantize, training
from model_builder.cache import stage_key
from model_builder.data import array_sha256
from model_builder.errors import QuantizationError
from model_builder.quantize import VARIANT_FILES, QuantConfig

if TYPE_CHECKING:
    from model_builder.builder import _Build, _Model


def _baseline(b: _Build, teacher: _Model, ref: np.ndarray) -> dict[str, Any]:
    from model_builder.builder import _export, _onnx_metrics

    with b.stage("baseline", {}) as row:
        onnx_bytes, exporter = _export(b, teacher)
        metrics = _onnx_metrics(b, row, onnx_bytes, ref)
        row.details = {"exporter": exporter, "params": training.count_params(teacher.module)}
    return metrics


def _prune(b: _Build, teacher: _Model, ref: np.ndarray) -> tuple[_Model, dict[str, Any] | None]:
    from model_builder.builder import _load_state_bytes, _Model, _state_bytes, _torch_metrics

    ps = b.recipe.stages.prune
    if ps is None:
        return teacher, None
    ignored = (
        ps.ignored_layers
        if ps.ignored_layers is not None
        else ([b.recipe.model.classifier or (b.entry.classifier if b.entry else "")])
    )
    ignored = [n for n in ignored if n]
    settings = {**ps.model_dump(), "ignored_layers": ignored}
    key = stage_key("prune", teacher.key, settings)
    with b.stage("prune", settings) as row:
        hit = b.cache.get("prune", key)
        if hit is not None:
            student = pruning.load_pruned(
                b.make(), _load_state_bytes((hit / "state.pt").read_bytes())
            )
            report = json.loads((hit / "report.json").read_text())
            row.cached = True
        else:
            student = b.make()
            student.load_state_dict(teacher.module.state_dict())
            example = torch.zeros((1, *b.sample_shape))
            student, rep = pruning.prune(
                student,
                example,
                ratio=ps.ratio,
                macs_target=ps.macs_target,
                iterative_steps=ps.iterative_steps,
                ignored_layers=ignored,
                importance=ps.importance,
                global_pruning=ps.global_pruning,
                round_to=ps.round_to,
            )
            report = rep.as_dict()
            b.cache.put(
                "prune",
                key,
                {"state.pt": _state_bytes(student), "report.json": json.dumps(report).encode()},
            )
        _torch_metrics(b, row, student, ref)
        row.details = report
    return _Model(student.eval(), key), report


def _distill(b: _Build, teacher: _Model, student: _Model, ref: np.ndarray) -> _Model:
    from model_builder.builder import _load_state_bytes, _Model, _state_bytes, _torch_metrics

    ds = b.recipe.stages.distill
    if ds is None:
        return student
    key = stage_key(
        "distill",
        teacher.key,
        student.key,
        ds.model_dump(),
        array_sha256(b.data.train_x, b.data.train_y),
        b.recipe.seed,
    )
    with b.stage("distill", ds.model_dump()) as row:
        hit = b.cache.get("distill", key)
        module = student.module
        if hit is not None:
            module = pruning.load_pruned(
                b.make(), _load_state_bytes((hit / "state.pt").read_bytes())
            )
            row.cached = True
        else:
            assert b.data.train_x is not None
            module = training.distill(
                module,
                teacher.module,
                b.data.train_x,
                b.data.train_y,
                epochs=ds.epochs,
                lr=ds.lr,
                batch_size=ds.batch_size,
                temperature=ds.temperature,
                alpha=ds.alpha,
                weight_decay=ds.weight_decay,
                seed=b.recipe.seed,
                progress=b.progress,
            )
            b.cache.put("distill", key, {"state.pt": _state_bytes(module)})
        _torch_metrics(b, row, module, ref)
    return _Model(module.eval(), key)


def _quantize(
    b: _Build, student: _Model, fp32: bytes, ref: np.ndarray
) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    from model_builder.builder import _onnx_metrics

    qs = b.recipe.stages.quantize
    if qs is None:
        return {}, {}
    calib_sha = array_sha256(b.calibration)
    fp32_fid = evaluation.run(fp32, b.data.fidelity)
    fp32_acc = (
        evaluation.accuracy(evaluation.run(fp32, b.data.eval_x), b.data.eval_y)
        if b.data.eval_x is not None
        else None
    )

    def drop_of(model: bytes) -> float:
        if fp32_acc is not None and b.data.eval_x is not None:
            acc = evaluation.accuracy(evaluation.run(model, b.data.eval_x), b.data.eval_y)
            return fp32_acc - (acc or 0.0)
        return (
            1.0
            - evaluation.fidelity(fp32_fid, evaluation.run(model, b.data.fidelity)).top1_agreement
        )

    base = QuantConfig(qs.calibration_method, qs.per_channel, tuple(qs.nodes_to_exclude))
    remedies = [
        QuantConfig(
            r.calibration_method or base.method,
            base.per_channel if r.per_channel is None else r.per_channel,
            tuple(dict.fromkeys([*base.nodes_to_exclude, *r.nodes_to_exclude])),
        )
        for r in qs.remedies
    ]
    prepared: bytes | None = None
    models: dict[str, bytes] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for variant in qs.variants:
        settings = {**qs.model_dump(exclude={"variants"}), "variant": variant}
        key = stage_key(
            "quantize",
            student.key,
            b.recipe.stages.export.model_dump(),
            settings,
            calib_sha,
            len(b.calibration),
        )
        with b.stage(f"quantize_{variant}", settings) as row:
            hit = b.cache.get("quantize", key)
            if hit is not None:
                model, info = (
                    (hit / "model.onnx").read_bytes(),
                    json.loads((hit / "info.json").read_text()),
                )
                row.cached = True
            else:
                prepared = prepared or quantize.prepare(fp32)
                g = quantize.guarded(
                    prepared, b.calibration, variant, base, remedies, qs.max_accuracy_drop, drop_of
                )
                model = g.model
                info = {
                    "chosen": g.config.as_dict(),
                    "drop": round(g.drop, 5),
                    "within_budget": g.within_budget,
                    "attempts": g.attempts,
                }
                b.cache.put(
                    "quantize", key, {"model.onnx": model, "info.json": json.dumps(info).encode()}
                )
            if not info["within_budget"] and qs.on_budget_miss == "fail":
                raise QuantizationError(
                    f"{variant} INT8 drop {info['drop']:.4f} exceeds max_accuracy_drop "
                    f"{qs.max_accuracy_drop} after remedies {info['attempts']}"
                )
            precision = quantize.int8_precision(model)
            if precision != "int8":
                raise QuantizationError(f"{variant} variant is not an INT8 graph")
            m = _onnx_metrics(b, row, model, ref)
            row.details = {**info, "precision": precision}
            models[variant] = model
            metrics[variant] = {
                **m,
                **info,
                "precision": precision,
                "calibration_count": len(b.calibration),
            }
    return models, metrics


def run_pipeline(b: _Build, out_dir: Path) -> tuple[PackageInfo, ModelCard, Path | None]:
    from model_builder.builder import BUILDER_VERSION, _export, _onnx_metrics, _teacher

    r, st = b.recipe, b.recipe.stages
    teacher = _teacher(b)
    ref = training.predict(teacher.module, b.data.fidelity)
    baseline = _baseline(b, teacher, ref) if st.baseline is not None else None
    student, prune_report = _prune(b, teacher, ref)
    student = _distill(b, teacher, student, ref)
    with b.stage("export", st.export.model_dump()) as row:
        fp32, exporter = _export(b, student)
        fp32_metrics = _onnx_metrics(b, row, fp32, ref)
        row.details = {"exporter": exporter}
    models, qmetrics = _quantize(b, student, fp32, ref)
    if not models:
        models, qmetrics = (
            {"onnxruntime": fp32},
            {"onnxruntime": {**fp32_metrics, "precision": "fp32"}},
        )
    engine_bytes: bytes | None = None
    engine_name: str | None = None
    if st.tensorrt is not None:
        from model_builder import tensorrt

        with b.stage("tensorrt", st.tensorrt.model_dump()) as row:
            eng = tensorrt.build_engine(
                models.get("tensorrt", fp32),
                fp16=st.tensorrt.fp16,
                workspace_mib=st.tensorrt.workspace_mib,
            )
            engine_bytes, engine_name = eng.engine, f"{r.name}-{r.version}-{eng.profile}.engine"
            row.size_bytes = len(eng.engine)
            row.details = {"profile": eng.profile}
    final_variant = "onnxruntime"
    final = qmetrics[final_variant]
    with b.stage("evaluate", st.evaluate.model_dump()) as row:
        row.size_bytes, row.latency_ms_p50 = final["size_bytes"], final["latency_ms_p50"]
        row.accuracy, row.top1_agreement = final["accuracy"], final["top1_agreement"]
        vs: dict[str, Any] = {}
        if baseline is not None:
            vs = {
                "size_ratio": round(baseline["size_bytes"] / final["size_bytes"], 3),
                "speedup": round(baseline["latency_ms_p50"] / final["latency_ms_p50"], 3),
                "accuracy_delta": None
                if baseline["accuracy"] is None or final["accuracy"] is None
                else round(final["accuracy"] - baseline["accuracy"], 5),
            }
        row.details = {
            **vs,
            "cosine_mean": final["cosine_mean"],
            "top1_agreement_confident": final["top1_agreement_confident"],
        }
    with b.stage("golden", {"count": r.package.golden_count}) as row:
        idx = packaging.golden_indices(len(b.data.fidelity), r.package.golden_count)
        others = {v: m for v, m in models.items() if v != final_variant}
        golden, errors = packaging.make_golden(
            models[final_variant],
            b.data.fidelity[idx],
            r.model.input_name,
            r.model.output_name,
            others,
        )
        row.details = {"rtol": golden.rtol, "atol": golden.atol, "max_abs_error": errors}
    card = _card(
        b, models, qmetrics, baseline, prune_report, exporter, golden, errors, BUILDER_VERSION
    )
    engine_path: Path | None = None
    if engine_bytes is not None and engine_name is not None:
        from model_builder.tensorrt import save_engine

        engine_path = save_engine(out_dir / engine_name, engine_bytes)
    try:
        info = packaging.write(
            out_dir, card, {VARIANT_FILES[v]: m for v, m in models.items()}, golden
        )
    except BaseException:
        if engine_path is not None:
            engine_path.unlink(missing_ok=True)
        raise
    return info, card, engine_path


def _card(
    b: _Build,
    models: dict[str, bytes],
    qmetrics: dict[str, dict[str, Any]],
    baseline: dict[str, Any] | None,
    prune_report: dict[str, Any] | None,
    exporter: str,
    golden: Any,
    errors: dict[str, float],
    version: str,
) -> ModelCard:
    r = b.recipe
    dynamic = r.stages.export.dynamic_batch
    labels = b.data.labels
    n_out = None if labels is None else len(labels)
    ev = r.stages.evaluate
    teacher = (f"zoo:{r.model.zoo}" if r.model.zoo else f"factory:{r.model.factory}") + (
        f" (trained {r.model.train.epochs} epochs, seed {r.seed})"
        if r.model.train
        else f" (weights {r.model.weights or 'default'})"
    )
    final = qmetrics["onnxruntime"]
    metrics: dict[str, Any] = {
        "baseline_fp32": baseline,
        "variants": qmetrics,
        "latency": {
            "runtime": "onnxruntime-cpu",
            "batch": 1,
            "runs": ev.latency_runs,
            "warmup": ev.warmup,
            "threads": ev.threads or evaluation.cpu_cores(),
            "machine": platform.processor() or platform.machine(),
        },
        "golden_max_abs_error": errors,
    }
    if baseline is not None:
        metrics["size_ratio_vs_baseline"] = round(baseline["size_bytes"] / final["size_bytes"], 3)
        metrics["speedup_vs_baseline"] = round(
            baseline["latency_ms_p50"] / final["latency_ms_p50"], 3
        )
    return ModelCard(
        name=r.name,
        version=r.version,
        inputs=[packaging.tensor_spec(r.model.input_name, b.sample_shape, dynamic)],
        outputs=[
            packaging.tensor_spec(
                r.model.output_name,
                [n_out]
                if n_out
                else [
                    int(d.dim_value)
                    for d in onnx.load_from_string(models["onnxruntime"])
                    .graph.output[0]
                    .type.tensor_type.shape.dim[1:]
                ],
                dynamic,
            )
        ],
        variants={v: VARIANT_FILES[v] for v in models},
        precision={v: qmetrics[v]["precision"] for v in models},
        golden=GoldenSpec(
            **{
                "count": int(next(iter(golden.inputs.values())).shape[0]),
                "rtol": golden.rtol,
                "atol": golden.atol,
            }
        ),
        labels=labels,
        metrics=metrics,
        stages=[row.as_dict() for row in b.rows],
        provenance={
            "teacher": teacher,
            "pruning": prune_report
            and {
                **prune_report,
                "ratio": r.stages.prune and r.stages.prune.ratio,
                "macs_target": r.stages.prune and r.stages.prune.macs_target,
            },
            "distillation": r.stages.distill and r.stages.distill.model_dump(),
            "calibration": {"sha256": array_sha256(b.calibration), "count": len(b.calibration)},
            "exporter": exporter,
            "opset": r.stages.export.opset,
            "builder_version": version,
            "preprocessing": b.data.preprocessing,
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "recipe": r.model_dump(mode="json", exclude={"base_dir", "cache_dir"}),
        },
    )
