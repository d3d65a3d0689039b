"""Importable factories and loaders that recipes in the builder tests name."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model_builder.data import DataBundle
from model_builder.digits import digits_data


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


@torch.library.custom_op("jftest::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _mystery_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Mystery(Tiny):
    """Uses an operator no ONNX exporter knows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mystery(super().forward(x))


def mystery_model() -> nn.Module:
    return Mystery()


def digits(seed: int) -> DataBundle:
    return digits_data(seed)


def empty_calibration(seed: int) -> DataBundle:
    d = digits_data(seed)
    return DataBundle(
        calibration=np.zeros((0, 1, 8, 8), np.float32),
        fidelity=d.fidelity,
        eval_x=d.eval_x,
        eval_y=d.eval_y,
        labels=d.labels,
    )


def misshaped_calibration(seed: int) -> DataBundle:
    d = digits_data(seed)
    return DataBundle(
        calibration=d.calibration.reshape(-1, 64),
        fidelity=d.fidelity,
        eval_x=d.eval_x,
        eval_y=d.eval_y,
        labels=d.labels,
    )


def not_a_bundle(seed: int) -> object:
    return {"calibration": []}
