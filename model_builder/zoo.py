"""Model zoo and importable factories.

A zoo entry names a model factory, its data, its input/output, and the layers pruning
must keep (the classifier). Recipes may instead name ``module:function`` factories.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from model_builder.data import DataBundle
from model_builder.errors import RecipeError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    model: Callable[[str | Path | None], nn.Module]
    data: Callable[[int], DataBundle]
    sample_shape: tuple[int, ...]
    classifier: str
    default_weights: str | None
    labels: Callable[[], list[str]] | None = None


def _digits_model(weights: str | Path | None) -> nn.Module:
    from model_builder.digits import digits_cnn
    from model_builder.efficientnet import load_state_dict_file, load_strict

    model = digits_cnn()
    if weights is not None:
        load_strict(model, load_state_dict_file(Path(weights)), str(weights))
    return model


def _digits_data(seed: int) -> DataBundle:
    from model_builder.digits import digits_data

    return digits_data(seed)


def _effnet_model(weights: str | Path | None) -> nn.Module:
    from model_builder.efficientnet import efficientnet_lite0

    return efficientnet_lite0(weights)


def effnet_data(seed: int) -> DataBundle:
    """Photo crops: fidelity (16 per photo of :data:`PHOTOS`, ``seed``) and calibration
    (same photos, ``seed + 1``); the unlabelled distillation transfer set is 50
    random-resized crops of each of the 20 *other* bundled photos (``TRANSFER_PHOTOS``,
    ``seed + 2``), so distillation never sees a fidelity photo. No labelled eval set
    (accuracy is n/a)."""
    from model_builder.efficientnet import PHOTOS, imagenet_labels, photo_crops, transfer_crops

    fid, idx = photo_crops(seed, 16)
    cal, _ = photo_crops(seed + 1, 16)
    train = transfer_crops(seed + 2, 50)
    return DataBundle(
        calibration=cal,
        fidelity=fid,
        train_x=train,
        labels=list(imagenet_labels()),
        preprocessing="RGB 0..255, (x - 127) / 128, shorter side 256, centre crop 224, NCHW",
        extra={"photo_index": idx, "photos": np.asarray([p.name for p in PHOTOS])},
    )


ZOO: dict[str, ZooEntry] = {
    "digits": ZooEntry("digits", _digits_model, _digits_data, (1, 8, 8), "classifier", None),
    "efficientnet_lite0": ZooEntry(
        "efficientnet_lite0", _effnet_model, effnet_data, (3, 224, 224), "_fc", "package"
    ),
}


def zoo_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise RecipeError(f"unknown zoo name {name!r} (known: {', '.join(sorted(ZOO))})") from None


def resolve_callable(spec: str, field: str) -> Callable[..., Any]:
    """Import ``module:function``; a bad spec is a :class:`RecipeError` naming ``field``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RecipeError(f"{field}: {spec!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"{field}: cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise RecipeError(f"{field}: module {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise RecipeError(f"{field}: {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]
