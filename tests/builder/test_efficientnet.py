from __future__ import annotations

import numpy as np
import pytest
import torch

from model_builder.efficientnet import (
    PHOTOS,
    TRANSFER_PHOTOS,
    efficientnet_lite0,
    imagenet_labels,
    load_photo,
    package_weights_path,
    preprocess,
    transfer_crops,
)
from model_builder.pruning import count_macs


def test_labels_are_the_1000_imagenet_classes() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert (labels[0], labels[281], labels[967], labels[999]) == (
        "tench",
        "tabby",
        "espresso",
        "toilet_tissue",
    )


@pytest.mark.slow
def test_package_weights_load_strictly_and_classify_real_photos() -> None:
    assert package_weights_path().is_file()
    model = efficientnet_lite0("package")
    labels = imagenet_labels()
    for photo in PHOTOS[:2]:  # chelsea (cat), coffee (espresso)
        x = torch.from_numpy(preprocess(load_photo(photo.name)))
        with torch.no_grad():
            top5 = np.argsort(-model(x)[0].numpy())[:5]
        names = [labels[i] for i in top5]
        assert set(names) & set(photo.accepted), f"{photo.name}: top-5 {names}"


def test_transfer_set_is_deterministic_and_never_uses_a_fidelity_photo() -> None:
    fidelity_photos = {p.name for p in PHOTOS} | {"cat"}  # skimage.data.cat is chelsea
    assert not fidelity_photos & set(TRANSFER_PHOTOS)
    a, b, c = transfer_crops(2, 2), transfer_crops(2, 2), transfer_crops(3, 2)
    assert a.shape == (2 * len(TRANSFER_PHOTOS), 3, 224, 224)
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert float(a.min()) >= -1.0  # (0..255 - 127) / 128
    assert float(a.max()) <= 1.0


def test_macs_count_the_same_padded_convolutions() -> None:
    # EfficientNet-Lite0 is ~0.39 G multiply-adds at 224 (convs override forward)
    macs = count_macs(efficientnet_lite0(None), torch.zeros(1, 3, 224, 224))
    assert 3.7e8 < macs < 4.1e8
