from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jetfleet.package import read_package
from model_builder import build, format_stage_table, load_recipe
from model_builder.recipe import Recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits.yaml"


def _short(recipe: Recipe, **quantize: Any) -> Recipe:
    """The shipped digits recipe with fewer epochs (test budget)."""
    data = recipe.model_dump()
    data["model"]["train"]["epochs"] = 10
    data["stages"]["distill"]["epochs"] = 6
    data["stages"]["evaluate"]["latency_runs"] = 50
    data["stages"]["quantize"].update(quantize)
    return Recipe.model_validate(data)


@pytest.mark.slow
def test_digits_recipe_prunes_distills_quantizes_and_caches(tmp_path: Path) -> None:
    recipe = _short(load_recipe(RECIPE))
    cache = tmp_path / "cache"
    first = build(recipe, tmp_path / "out", cache_dir=cache, progress=False)
    stages = {s["stage"]: s for s in first.stages}
    assert list(stages) == [
        "train",
        "baseline",
        "prune",
        "distill",
        "export",
        "quantize_onnxruntime",
        "quantize_tensorrt",
        "evaluate",
        "golden",
    ]
    prune = stages["prune"]["details"]
    assert prune["params_after"] < 0.4 * prune["params_before"]  # really smaller, not masked
    base, final = stages["baseline"], stages["evaluate"]
    assert final["accuracy"] >= base["accuracy"] - 0.01
    assert final["size_bytes"] * 4 <= base["size_bytes"]
    pkg = read_package(first.package.path)
    assert pkg.card.provenance["pruning"]["ratio"] == 0.5
    assert "quantize_tensorrt" in format_stage_table(first)

    # only the INT8 settings change: nothing upstream is retrained or re-pruned
    second = build(
        _short(recipe, calibration_method="percentile", calibration_size=128),
        tmp_path / "out",
        cache_dir=cache,
        progress=False,
    )
    cached = {s["stage"]: s["cached"] for s in second.stages}
    assert cached["train"]
    assert cached["prune"]
    assert cached["distill"]
    assert not cached["quantize_onnxruntime"]
    assert second.package.path != first.package.path
    assert len(list((tmp_path / "out").glob("*.jfpkg"))) == 2
    assert not list((tmp_path / "out").glob(".*"))
