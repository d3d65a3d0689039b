"""Training loops: the teacher (cross-entropy) and knowledge distillation of a student.

KD loss (Hinton et al.):
``alpha * KL(softmax(s/T) || softmax(t/T)) * T^2 + (1 - alpha) * CE(s, y)``.
With unlabelled data only ``alpha = 1`` is possible.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model_builder.errors import TrainingError

log = logging.getLogger(__name__)


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _check_loss(loss: torch.Tensor, epoch: int) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingError(f"loss became {value} in epoch {epoch + 1}; lower the learning rate")


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` with AdamW + cosine schedule on (x, y); returns it in eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in tqdm(range(epochs), desc="train teacher", unit="epoch", disable=not progress):
        for idx in _batches(len(x), batch_size, rng):
            opt.zero_grad()
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            _check_loss(loss, epoch)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
    return model.eval()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    temperature: float,
    alpha: float,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Fine-tune ``student`` towards ``teacher`` (KD + hard labels); returns it in eval mode."""
    if y is None and alpha < 1.0:
        raise TrainingError(
            f"distillation with alpha={alpha} needs labelled train data; set alpha: 1.0 "
            "for pure distillation on unlabelled data"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y) if y is not None else None
    teacher.eval()
    with torch.no_grad():
        soft = torch.cat([teacher(xt[i : i + 256]) for i in range(0, len(x), 256)])
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    student.train()
    t = temperature
    for epoch in tqdm(range(epochs), desc="distill", unit="epoch", disable=not progress):
        for idx in _batches(len(x), batch_size, rng):
            opt.zero_grad()
            logits = student(xt[idx])
            kd = F.kl_div(
                F.log_softmax(logits / t, dim=1),
                F.log_softmax(soft[idx] / t, dim=1),
                reduction="batchmean",
                log_target=True,
            ) * (t * t)
            loss = alpha * kd
            if yt is not None and alpha < 1.0:
                loss = loss + (1.0 - alpha) * F.cross_entropy(logits, yt[idx])
            _check_loss(loss, epoch)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
    return student.eval()


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits of ``model`` (eval mode, no grad) for ``x``."""
    model.eval()
    with torch.no_grad():
        outs = [
            model(torch.from_numpy(x[i : i + batch_size])).numpy()
            for i in range(0, len(x), batch_size)
        ]
    return np.concatenate(outs).astype(np.float32)


def count_params(model: nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())
