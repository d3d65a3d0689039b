"""The build pipeline: teacher -> baseline -> prune -> distill -> export -> INT8 -> evaluate
-> package. Each stage is recorded (size, latency, accuracy, agreement, wall time, settings)
and its outputs are cached by the hash of its inputs."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jetfleet.package import ModelCard, PackageInfo
from model_builder import evaluation, training
from model_builder.cache import StageCache, default_cache_dir, stage_key
from model_builder.data import DataBundle, array_sha256, check_bundle
from model_builder.efficientnet import load_state_dict_file, load_strict
from model_builder.errors import DataError, WeightsError
from model_builder.export import export_onnx
from model_builder.recipe import Recipe, load_recipe
from model_builder.stages import StageRow, rows_to_dicts
from model_builder.zoo import ZooEntry, resolve_callable, zoo_entry

log = logging.getLogger(__name__)

BUILDER_VERSION = "0.1.0"


@dataclass(frozen=True)
class BuildResult:
    package: PackageInfo
    card: ModelCard
    stages: list[dict[str, Any]]
    wall_s: float
    engine: Path | None = None
    cache_dir: Path | None = None


@dataclass
class _Model:
    module: nn.Module
    key: str
    fp32_onnx: bytes | None = None
    exporter: str | None = None


@dataclass
class _Build:
    recipe: Recipe
    cache: StageCache
    progress: bool
    entry: ZooEntry | None
    make: Callable[[], nn.Module]
    sample_shape: tuple[int, ...]
    data: DataBundle
    calibration: np.ndarray
    rows: list[StageRow] = field(default_factory=list)
    exports: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, settings: dict[str, Any]) -> Iterator[StageRow]:
        row = StageRow(stage=name, settings=settings)
        t0 = time.perf_counter()
        log.info("stage %s ...", name)
        yield row
        row.wall_s = round(time.perf_counter() - t0, 3)
        self.rows.append(row)


def _state_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def _load_state_bytes(data: bytes) -> dict[str, torch.Tensor]:
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return {str(k): v for k, v in loaded.items()}


def _setup(recipe: Recipe, cache: StageCache, progress: bool) -> _Build:
    spec, base = recipe.model, Path(recipe.base_dir or ".")
    entry = zoo_entry(spec.zoo) if spec.zoo else None
    weights = (
        spec.weights if spec.weights is not None else (entry.default_weights if entry else None)
    )
    if weights is not None and weights != "package":
        wpath = Path(weights) if Path(weights).is_absolute() else base / weights
        if not wpath.is_file():
            raise WeightsError(f"model.weights: weights file {wpath} does not exist")
        weights = str(wpath)
    if entry is not None:
        ent = entry

        def make() -> nn.Module:
            return ent.model(weights).eval()
    else:
        factory = resolve_callable(spec.factory or "", "model.factory")

        def make() -> nn.Module:
            model = factory()
            if not isinstance(model, nn.Module):
                raise DataError(f"model.factory returned {type(model).__name__}, not an nn.Module")
            if weights is not None:
                load_strict(model, load_state_dict_file(Path(weights)), weights)
            return model.eval()

    shape = tuple(spec.input_shape) if spec.input_shape else (entry.sample_shape if entry else ())
    if recipe.data.zoo:
        data = zoo_entry(recipe.data.zoo).data(recipe.data.seed)
    else:
        data = resolve_callable(recipe.data.loader or "", "data.loader")(recipe.data.seed)
    if not isinstance(data, DataBundle):
        raise DataError(f"data.loader returned {type(data).__name__}, not a DataBundle")
    st = recipe.stages
    check_bundle(
        data,
        shape,
        need_train=spec.train is not None or st.distill is not None,
        need_calibration=st.quantize is not None,
    )
    if spec.train is not None and data.train_y is None:
        raise DataError("model.train needs labelled train data; the data has no train labels")
    n_cal = recipe.data.calibration_size or (st.quantize.calibration_size if st.quantize else 0)
    return _Build(recipe, cache, progress, entry, make, shape, data, data.calibration[:n_cal])


def _teacher(b: _Build) -> _Model:
    spec = b.recipe.model
    wsha = None
    if spec.weights not in (None, "package") or (b.entry and b.entry.default_weights == "package"):
        from jetfleet.package import sha256_file
        from model_builder.efficientnet import package_weights_path

        w = spec.weights or "package"
        path = package_weights_path() if w == "package" else Path(b.recipe.base_dir or ".") / w
        wsha = sha256_file(path) if path.is_file() else None
    key = stage_key(
        "teacher",
        spec.model_dump(mode="json"),
        wsha,
        BUILDER_VERSION,
        array_sha256(b.data.train_x, b.data.train_y) if spec.train else None,
        b.recipe.seed,
    )
    model = b.make()
    if spec.train is None:
        return _Model(model, key)
    t = spec.train
    with b.stage("train", t.model_dump()) as row:
        hit = b.cache.get("teacher", key)
        if hit is not None:
            model.load_state_dict(_load_state_bytes((hit / "state.pt").read_bytes()))
            row.cached = True
        else:
            assert b.data.train_x is not None
            assert b.data.train_y is not None
            model = training.train_classifier(
                model,
                b.data.train_x,
                b.data.train_y,
                epochs=t.epochs,
                lr=t.lr,
                batch_size=t.batch_size,
                weight_decay=t.weight_decay,
                seed=b.recipe.seed,
                progress=b.progress,
            )
            b.cache.put("teacher", key, {"state.pt": _state_bytes(model)})
        _torch_metrics(b, row, model, None)
    return _Model(model.eval(), key)


def _torch_metrics(b: _Build, row: StageRow, model: nn.Module, ref: np.ndarray | None) -> None:
    row.size_bytes = training.count_params(model) * 4
    if b.data.eval_x is not None:
        row.accuracy = evaluation.accuracy(training.predict(model, b.data.eval_x), b.data.eval_y)
    if ref is not None:
        row.top1_agreement = evaluation.fidelity(
            ref, training.predict(model, b.data.fidelity)
        ).top1_agreement


def _export(b: _Build, m: _Model) -> tuple[bytes, str]:
    es = b.recipe.stages.export
    key = stage_key("export", m.key, es.model_dump())
    if key in b.exports:
        return b.exports[key]
    hit = b.cache.get("export", key)
    if hit is not None:
        result = ((hit / "model.onnx").read_bytes(), (hit / "exporter").read_text())
    else:
        example = torch.zeros((1, *b.sample_shape), dtype=torch.float32)
        r = export_onnx(
            m.module,
            example,
            input_name=b.recipe.model.input_name,
            output_name=b.recipe.model.output_name,
            opset=es.opset,
            dynamic_batch=es.dynamic_batch,
            exporter=es.exporter,
        )
        result = (r.onnx_bytes, r.exporter)
        b.cache.put("export", key, {"model.onnx": r.onnx_bytes, "exporter": r.exporter.encode()})
    b.exports[key] = result
    return result


def _onnx_metrics(b: _Build, row: StageRow, model: bytes, ref: np.ndarray) -> dict[str, Any]:
    ev = b.recipe.stages.evaluate
    sess = evaluation.session(model, ev.threads)
    out = evaluation.run(sess, b.data.fidelity)
    fid = evaluation.fidelity(ref, out, ev.confident_prob)
    row.size_bytes = len(model)
    row.latency_ms_p50 = round(
        evaluation.latency_ms(
            model, b.data.fidelity, runs=ev.latency_runs, warmup=ev.warmup, threads=ev.threads
        ),
        4,
    )
    if b.data.eval_x is not None:
        row.accuracy = evaluation.accuracy(evaluation.run(sess, b.data.eval_x), b.data.eval_y)
    row.top1_agreement = fid.top1_agreement
    return {
        **fid.as_dict(),
        "size_bytes": row.size_bytes,
        "latency_ms_p50": row.latency_ms_p50,
        "accuracy": row.accuracy,
    }


def build(
    recipe: Recipe,
    out_dir: Path | str = ".",
    *,
    cache_dir: Path | str | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> BuildResult:
    """Run ``recipe``'s stages and write the package into ``out_dir``.

    The stage cache is ``cache_dir``, else the recipe's ``cache_dir``, else
    ``$JETFLEET_BUILDER_CACHE``, else ``~/.cache/jetfleet/builder``; ``use_cache=False``
    disables it. A failed build writes no package.
    """
    from model_builder.pipeline import run_pipeline

    t0 = time.perf_counter()
    root: Path | None = None
    if use_cache:
        root = Path(cache_dir or recipe.cache_dir or default_cache_dir()).expanduser()
    b = _setup(recipe, StageCache(root), progress)
    torch.manual_seed(recipe.seed)
    package, card, engine = run_pipeline(b, Path(out_dir))
    return BuildResult(
        package=package,
        card=card,
        stages=rows_to_dicts(b.rows),
        wall_s=round(time.perf_counter() - t0, 3),
        engine=engine,
        cache_dir=root,
    )


def build_file(
    path: Path | str,
    out_dir: Path | str = ".",
    *,
    cache_dir: Path | str | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> BuildResult:
    """Load and validate the YAML recipe at ``path``, then :func:`build` it."""
    return build(
        load_recipe(Path(path)),
        out_dir,
        cache_dir=cache_dir,
        use_cache=use_cache,
        progress=progress,
    )


def build_digits_package(
    out_dir: Path,
    *,
    seed: int = 0,
    epochs: int = 12,
    name: str = "digits",
    version: str = "1.0.0",
    progress: bool = False,
) -> PackageInfo:
    """The fast path: train the digits CNN (no pruning/KD), export, INT8 (CPU and TensorRT
    variants), golden vectors, card. Input ``input`` [batch,1,8,8] (pixel / 16.0), output
    ``logits`` [batch,10], labels "0".."9". No stage cache; tens of seconds on 2 cores."""
    from model_builder.recipe import parse_recipe

    recipe = parse_recipe(
        {
            "name": name,
            "version": version,
            "seed": seed,
            "description": "digits CNN trained on scikit-learn digits (fast path)",
            "model": {"zoo": "digits", "train": {"epochs": epochs, "lr": 3e-3, "batch_size": 64}},
            "data": {"zoo": "digits", "seed": seed},
            "stages": {
                "quantize": {
                    "calibration_size": 128,
                    "max_accuracy_drop": 0.02,
                    "on_budget_miss": "keep_best",
                }
            },
        }
    )
    return build(recipe, out_dir, use_cache=False, progress=progress).package
