from __future__ import annotations

import numpy as np
import pytest
import torch

from model_builder.efficientnet import (
    PHOTOS,
    efficientnet_lite0,
    imagenet_labels,
    load_photo,
    package_weights_path,
    preprocess,
)


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
