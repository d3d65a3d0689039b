"""The ``digits`` zoo entry: a small CNN for scikit-learn's bundled 8x8 digits.

Input ``input`` [batch, 1, 8, 8] float32 with preprocessing ``pixel / 16.0`` (the
dataset's pixels are 0..16); output ``logits`` [batch, 10]; labels "0".."9".
The split is deterministic: stratified 80/20 with ``seed``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model_builder.data import DataBundle

PREPROCESSING = "grayscale 8x8, pixel / 16.0 (pixels 0..16 -> 0..1), NCHW [batch,1,8,8] float32"
LABELS = [str(i) for i in range(10)]


class DigitsCNN(nn.Module):
    """conv(32) -> conv(64) -> pool -> conv(128) -> pool -> fc(128) -> fc(10)."""

    def __init__(self, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(4 * width * 4, hidden)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(self.features(x), 1)
        logits: torch.Tensor = self.classifier(self.relu(self.fc1(h)))
        return logits


def digits_cnn() -> DigitsCNN:
    """An untrained :class:`DigitsCNN` (the builder trains it as the teacher)."""
    return DigitsCNN()


def digits_data(seed: int = 0, calibration_size: int = 256) -> DataBundle:
    """scikit-learn digits, split 80/20 (stratified, ``seed``); calibration from the train split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = (np.asarray(ds.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(ds.target, dtype=np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    rng = np.random.default_rng(seed)
    calib = x_tr[rng.permutation(len(x_tr))[:calibration_size]]
    return DataBundle(
        calibration=np.ascontiguousarray(calib),
        fidelity=np.ascontiguousarray(x_ev),
        train_x=np.ascontiguousarray(x_tr),
        train_y=y_tr,
        eval_x=np.ascontiguousarray(x_ev),
        eval_y=y_ev,
        labels=list(LABELS),
        preprocessing=PREPROCESSING,
    )
