"""Each bad input gives a clear error and leaves no package (and no half-written file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from model_builder import (
    CalibrationError,
    DataError,
    ExportError,
    RecipeError,
    WeightsError,
    build,
    parse_recipe,
)
from model_builder.digits import DigitsCNN
from model_builder.efficientnet import EfficientNetLite0, load_strict
from tests.builder.conftest import no_package_written

FAST = {"baseline": None, "quantize": {"calibration_size": 16}}


def _build(
    tmp_path: Path,
    model: dict[str, Any],
    data: str = "tests.builder.helpers:digits",
    stages: dict[str, Any] | None = None,
) -> None:
    recipe = parse_recipe(
        {
            "name": "bad",
            "version": "1",
            "model": model,
            "data": {"loader": data},
            "stages": stages or FAST,
        },
        base_dir=tmp_path,
    )
    build(recipe, tmp_path / "out", use_cache=False, progress=False)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"nope\.pt does not exist"):
        _build(tmp_path, {"zoo": "digits", "weights": "nope.pt"})
    assert no_package_written(tmp_path / "out")


def test_weights_that_do_not_match_name_the_keys(tmp_path: Path) -> None:
    state = DigitsCNN(width=16).state_dict()  # narrower: every conv has the wrong shape
    del state["classifier.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(WeightsError) as info:
        _build(tmp_path, {"zoo": "digits", "weights": "w.pt"})
    msg = str(info.value)
    assert "missing keys ['classifier.bias']" in msg
    assert "unexpected keys ['extra.weight']" in msg
    assert "features.0.weight (16, 1, 3, 3) != (32, 1, 3, 3)" in msg
    assert no_package_written(tmp_path / "out")


def test_efficientnet_strict_load_names_mismatched_keys() -> None:
    state = EfficientNetLite0().state_dict()
    state["_fc.weight"] = torch.zeros(10, 1280)
    state["_blocks.0._depthwise_conv.w"] = state.pop("_blocks.0._depthwise_conv.weight")
    with pytest.raises(WeightsError) as info:
        load_strict(EfficientNetLite0(), state, "test")
    msg = str(info.value)
    assert "_blocks.0._depthwise_conv.weight" in msg
    assert "_fc.weight (10, 1280) != (1000, 1280)" in msg


def test_unreadable_weights_file(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable state dict"):
        _build(tmp_path, {"zoo": "digits", "weights": "w.pt"})


def test_empty_calibration_data(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="calibration data is empty"):
        _build(
            tmp_path,
            {"factory": "tests.builder.helpers:tiny", "input_shape": [1, 8, 8]},
            data="tests.builder.helpers:empty_calibration",
        )
    assert no_package_written(tmp_path / "out")


def test_wrongly_shaped_calibration_data(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"shape \(256, 64\); expected \(N, 1, 8, 8\)"):
        _build(
            tmp_path,
            {"factory": "tests.builder.helpers:tiny", "input_shape": [1, 8, 8]},
            data="tests.builder.helpers:misshaped_calibration",
        )
    assert no_package_written(tmp_path / "out")


def test_loader_returning_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a DataBundle"):
        _build(tmp_path, {"zoo": "digits"}, data="tests.builder.helpers:not_a_bundle")


def test_unknown_factory_and_zoo(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no attribute 'nothing'"):
        _build(tmp_path, {"factory": "tests.builder.helpers:nothing", "input_shape": [1, 8, 8]})
    with pytest.raises(RecipeError, match="unknown zoo name 'resnet9000'"):
        _build(tmp_path, {"zoo": "resnet9000"})


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="mystery") as info:
        _build(
            tmp_path, {"factory": "tests.builder.helpers:mystery_model", "input_shape": [1, 8, 8]}
        )
    assert info.value.op is not None
    assert "mystery" in info.value.op
    assert no_package_written(tmp_path / "out")


def test_prune_needs_labelled_train_data_for_distillation(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="labelled train data"):
        _build(
            tmp_path,
            {"factory": "tests.builder.helpers:tiny", "input_shape": [1, 8, 8]},
            data="tests.builder.helpers:empty_calibration",
            stages={"distill": {"epochs": 1}, "quantize": None},
        )
