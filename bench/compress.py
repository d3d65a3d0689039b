"""Compression benchmark: FP32 vs INT8 vs pruned+distilled+INT8 on ONNX Runtime CPU.

Run: ``.venv/bin/python bench/compress.py`` (writes ``bench/results/compress.json``).

For each model (digits, EfficientNet-Lite0) it builds the shipped recipe with and without
pruning + distillation (stage cache in a temporary directory), then measures every variant
side by side in one process: batch 1, intra-op threads = cores, the same session options
for all; ``ROUNDS`` rounds, each timing a block of runs of every variant in turn (a short
warm-up before each block), median of all timed runs. Interleaving the blocks gives every
variant the same share of the load other work puts on a shared CPU; the load average
before and after is recorded in ``compress_builds.json``. The
TensorRT variant (S8S8 QDQ) is listed with its ONNX Runtime CPU latency, labelled as such:
it is built for TensorRT, not for ORT.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from jetfleet.package import read_package  # noqa: E402
from model_builder import build, load_recipe  # noqa: E402
from model_builder import evaluation as ev  # noqa: E402
from model_builder.recipe import Recipe  # noqa: E402
from model_builder.zoo import zoo_entry  # noqa: E402

RUNS = 200  # per variant, in ROUNDS blocks
ROUNDS = 10
WARMUP = 20  # once per session, then BLOCK_WARMUP before each block
BLOCK_WARMUP = 5
OUT = ROOT / "bench" / "results" / "compress.json"

# Pruned + distilled settings per model. EfficientNet has no ImageNet data here: only the
# expanded (middle) channels of the MBConv blocks are pruned (stem, head, classifier,
# block 0's depthwise conv and every projection conv -- the residual stream -- are kept)
# and the student is distilled (pure KD, alpha = 1) on the unlabelled transfer set:
# 1000 random-resized crops of the 20 bundled photos that the fidelity crops do not use.
PRUNED = {
    "digits": {
        "prune": {"ratio": 0.5, "ignored_layers": ["classifier"]},
        "distill": {"epochs": 15, "lr": 0.002, "temperature": 4.0, "alpha": 0.7},
    },
    "efficientnet_lite0": {
        "prune": {
            "ratio": 0.15,
            "round_to": 8,
            "ignored_layers": [
                "_conv_stem",
                "_conv_head",
                "_fc",
                "_blocks.0._depthwise_conv",
                *[f"_blocks.{i}._project_conv" for i in range(16)],
            ],
        },
        "distill": {
            "epochs": 1,
            "lr": 0.0005,
            "batch_size": 16,
            "temperature": 2.0,
            "alpha": 1.0,
        },
    },
}
RECIPES = {"digits": "digits.yaml", "efficientnet_lite0": "efficientnet_lite0.yaml"}


def _variant(recipe: Recipe, pruned: dict[str, Any] | None, model: str) -> Recipe:
    data = recipe.model_dump()
    data["stages"]["prune"] = pruned["prune"] if pruned else None
    data["stages"]["distill"] = pruned["distill"] if pruned else None
    data["name"] = recipe.name + ("-pruned" if pruned else "")
    if pruned:  # build it even when INT8 misses the budget, so the figure can be reported
        data["stages"]["quantize"]["on_budget_miss"] = "keep_best"
    return Recipe.model_validate(data)


def _latencies(models: dict[str, bytes], sample: np.ndarray) -> dict[str, float]:
    """Median ms per variant: ROUNDS rounds of one block per variant (BLOCK_WARMUP untimed
    runs, then RUNS / ROUNDS timed ones), so no variant gets a quieter stretch of a shared
    CPU than another. Runs are never interleaved within a block (ORT's spinning intra-op
    threads of one session would slow the next)."""
    sessions = {k: ev.session(m) for k, m in models.items()}
    feed = np.ascontiguousarray(sample[:1])
    times: dict[str, list[float]] = {k: [] for k in models}
    for sess in sessions.values():
        name = sess.get_inputs()[0].name
        for _ in range(WARMUP):
            sess.run(None, {name: feed})
    for _ in range(ROUNDS):
        for k, sess in sessions.items():
            name = sess.get_inputs()[0].name
            for _ in range(BLOCK_WARMUP):
                sess.run(None, {name: feed})
            for _ in range(RUNS // ROUNDS):
                t0 = time.perf_counter()
                sess.run(None, {name: feed})
                times[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: float(statistics.median(v)) for k, v in times.items()}


def bench_model(model: str, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    recipe = load_recipe(ROOT / "recipes" / RECIPES[model])
    t0 = time.perf_counter()
    plain = build(
        _variant(recipe, None, model), work / "out", cache_dir=work / "cache", progress=False
    )
    t1 = time.perf_counter()
    pruned = build(
        _variant(recipe, PRUNED[model], model),
        work / "out",
        cache_dir=work / "cache",
        progress=False,
    )
    t2 = time.perf_counter()
    data = zoo_entry(model).data(recipe.data.seed)
    pkg_plain, pkg_pruned = read_package(plain.package.path), read_package(pruned.package.path)
    fp32 = _fp32_teacher(plain)
    models = {
        "fp32": fp32,
        "int8 (onnxruntime U8S8)": pkg_plain.variant("onnxruntime"),
        "pruned+KD+int8 (onnxruntime U8S8)": pkg_pruned.variant("onnxruntime"),
        "int8 tensorrt variant (S8S8 QDQ), ORT CPU latency": pkg_plain.variant("tensorrt"),
    }
    load_before = os.getloadavg()
    lat = _latencies(models, data.fidelity)
    load_after = os.getloadavg()
    ref = ev.run(fp32, data.fidelity)
    rows = []
    for name, m in models.items():
        out = ev.run(m, data.fidelity)
        fid = ev.fidelity(ref, out)
        acc = ev.accuracy(ev.run(m, data.eval_x), data.eval_y) if data.eval_x is not None else None
        rows.append(
            {
                "model": model,
                "variant": name,
                "size_bytes": len(m),
                "latency_ms_p50": round(lat[name], 4),
                "speedup_vs_fp32": round(lat["fp32"] / lat[name], 3),
                "size_ratio_vs_fp32": round(len(fp32) / len(m), 3),
                "accuracy": None if acc is None else round(acc, 5),
                "top1_agreement": round(fid.top1_agreement, 5),
                "top1_agreement_confident": None
                if fid.confident_agreement is None
                else round(fid.confident_agreement, 5),
                "confident_count": fid.confident_count,
                "fidelity_count": fid.count,
            }
        )
    info = {
        "build_wall_s": {"int8": round(t1 - t0, 2), "pruned_kd_int8": round(t2 - t1, 2)},
        "latency_load_avg_1_5_15": {"before": load_before, "after": load_after},
        "stages_int8": plain.stages,
        "stages_pruned": pruned.stages,
    }
    return rows, info


def _fp32_teacher(result: Any) -> bytes:
    """The baseline FP32 ONNX the build exported (from the stage cache)."""
    assert result.cache_dir is not None
    exports = sorted(
        (result.cache_dir / "export").glob("*/model.onnx"), key=lambda p: p.stat().st_mtime
    )
    baseline_size = next(s["size_bytes"] for s in result.stages if s["stage"] == "baseline")
    for p in exports:
        if p.stat().st_size == baseline_size:
            return p.read_bytes()
    raise RuntimeError("baseline FP32 export not found in the cache")


def main() -> int:
    rows: list[dict[str, Any]] = []
    builds: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("digits", "efficientnet_lite0"):
            r, info = bench_model(model, Path(tmp) / model)
            rows += r
            builds[model] = info
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    (OUT.parent / "compress_builds.json").write_text(json.dumps(builds, indent=1) + "\n")
    print(
        f"{'model':20} {'variant':52} {'size':>10} {'p50 ms':>8} {'speedup':>8} "
        f"{'size x':>7} {'acc':>7} {'agree':>7} {'agree*':>7}"
    )
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
        conf = (
            "-"
            if r["top1_agreement_confident"] is None
            else f"{100 * r['top1_agreement_confident']:.2f}"
        )
        print(
            f"{r['model']:20} {r['variant']:52} {r['size_bytes']:>10} {r['latency_ms_p50']:>8.3f} "
            f"{r['speedup_vs_fp32']:>8.2f} {r['size_ratio_vs_fp32']:>7.2f} {acc:>7} "
            f"{100 * r['top1_agreement']:>7.2f} {conf:>7}"
        )
    print(
        f"threads={ev.cpu_cores()} runs={RUNS} in {ROUNDS} interleaved blocks, "
        f"warmup={WARMUP}+{BLOCK_WARMUP}/block; "
        "agree* = agreement where FP32 p(top1) >= 0.3"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
