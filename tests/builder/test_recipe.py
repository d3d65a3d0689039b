from __future__ import annotations

from pathlib import Path

import pytest

from model_builder import RecipeError, load_recipe, parse_recipe
from model_builder.errors import PruningError
from model_builder.pruning import check_ratio

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MINIMAL = {"name": "m", "version": "1", "model": {"zoo": "digits"}, "data": {"zoo": "digits"}}


@pytest.mark.parametrize("name", ["digits.yaml", "efficientnet_lite0.yaml"])
def test_shipped_recipes_validate(name: str) -> None:
    recipe = load_recipe(RECIPES / name)
    assert recipe.stages.quantize is not None
    assert recipe.base_dir == str(RECIPES)


def test_unknown_top_level_field_is_named() -> None:
    with pytest.raises(RecipeError, match=r"colour: unknown field"):
        parse_recipe({**MINIMAL, "colour": "red"})


def test_unknown_nested_field_is_named() -> None:
    bad = {**MINIMAL, "stages": {"quantize": {"calibration_methd": "entropy"}}}
    with pytest.raises(RecipeError, match=r"stages\.quantize\.calibration_methd: unknown field"):
        parse_recipe(bad)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_pruning_ratio_out_of_range(ratio: float) -> None:
    with pytest.raises(RecipeError, match=r"stages\.prune\.ratio"):
        parse_recipe({**MINIMAL, "stages": {"prune": {"ratio": ratio}}})
    with pytest.raises(PruningError, match="between 0 and 1"):
        check_ratio(ratio, None)


def test_model_needs_exactly_one_source() -> None:
    with pytest.raises(RecipeError, match=r"exactly one of model\.zoo or model\.factory"):
        parse_recipe({**MINIMAL, "model": {"zoo": "digits", "factory": "a:b"}})


def test_bad_yaml_and_non_mapping(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(p)


def test_latency_needs_at_least_50_runs() -> None:
    with pytest.raises(RecipeError, match=r"stages\.evaluate\.latency_runs"):
        parse_recipe({**MINIMAL, "stages": {"evaluate": {"latency_runs": 5}}})
