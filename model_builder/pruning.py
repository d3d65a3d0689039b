"""Structured pruning with torch-pruning (DepGraph): channels are removed, not masked.

Either a ``ratio`` of channels per prunable layer (``iterative_steps`` steps to reach it)
or a ``macs_target`` (fraction of the original MACs to keep), reached by pruning in
small steps until the model's MACs are at or under the target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model_builder.errors import PruningError

log = logging.getLogger(__name__)

MAX_MACS_STEPS = 50


@dataclass(frozen=True)
class PruneReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    steps: int
    ratio: float | None
    macs_target: float | None
    ignored_layers: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_ratio": round(self.params_after / self.params_before, 4),
            "macs_ratio": round(self.macs_after / max(self.macs_before, 1), 4),
            "steps": self.steps,
        }


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    raise PruningError(f"unknown pruning importance {name!r} (use l1 or l2)")


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``example`` through every Conv and
    Linear module (hooks on the module call, so Conv2d subclasses that override
    ``forward``, like EfficientNet's ``SameConv2d``, count too)."""
    total = 0

    def hook(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        w = module.weight  # Conv: (out, in / groups, *k); Linear: (out, in)
        assert isinstance(w, torch.Tensor)
        total += int(out.numel()) * int(w[0].numel())

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def check_ratio(ratio: float | None, macs_target: float | None) -> None:
    if (ratio is None) == (macs_target is None):
        raise PruningError("pruning needs exactly one of ratio or macs_target")
    for label, value in (("ratio", ratio), ("macs_target", macs_target)):
        if value is not None and not 0.0 < value < 1.0:
            raise PruningError(f"pruning {label} must be between 0 and 1 (exclusive), got {value}")


def prune(
    model: nn.Module,
    example: torch.Tensor,
    *,
    ratio: float | None = None,
    macs_target: float | None = None,
    iterative_steps: int = 1,
    ignored_layers: list[str] | tuple[str, ...] = (),
    importance: str = "l2",
    global_pruning: bool = False,
    round_to: int | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` in place; return it and a report (params and MACs before/after)."""
    import torch_pruning as tp

    check_ratio(ratio, macs_target)
    modules = dict(model.named_modules())
    unknown = [n for n in ignored_layers if n not in modules]
    if unknown:
        raise PruningError(f"ignored_layers names modules the model does not have: {unknown}")
    ignored = [modules[n] for n in ignored_layers]
    model.eval()
    macs0, params0 = count_macs(model, example), _params(model)
    steps = iterative_steps if ratio is not None else MAX_MACS_STEPS
    target_ratio = ratio if ratio is not None else 0.95
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=_importance(importance),
            pruning_ratio=target_ratio,
            iterative_steps=steps,
            ignored_layers=ignored,
            global_pruning=global_pruning,
            round_to=round_to,
        )
        done = 0
        macs = macs0
        for _ in range(steps):
            pruner.step()
            done += 1
            macs = count_macs(model, example)
            if macs_target is not None and macs <= macs_target * macs0:
                break
        with torch.no_grad():
            model(example)
    except PruningError:
        raise
    except Exception as exc:  # torch-pruning raises plain exceptions for graphs it cannot handle
        raise PruningError(f"pruning failed: {type(exc).__name__}: {exc}") from exc
    if macs_target is not None and macs > macs_target * macs0:
        raise PruningError(
            f"could not reach macs_target {macs_target}: stopped at {macs / macs0:.3f} of the MACs"
        )
    macs1, params1 = count_macs(model, example), _params(model)
    if params1 >= params0:
        raise PruningError("pruning removed no parameters (are all layers ignored?)")
    report = PruneReport(
        int(params0),
        int(params1),
        int(macs0),
        int(macs1),
        done,
        ratio,
        macs_target,
        tuple(ignored_layers),
    )
    log.info("pruned %s -> %s params, %s -> %s MACs", params0, params1, macs0, macs1)
    return model, report


def _params(model: nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())


def load_pruned(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize a fresh, unpruned ``model`` to a pruned ``state`` dict (tensors only) and load it.

    Parameters and buffers take the state's shapes; Conv/Linear/BatchNorm attributes follow.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, param in list(module.named_parameters(recurse=False)):
            new = state.get(prefix + pname)
            if new is not None and param is not None and new.shape != param.shape:
                setattr(module, pname, nn.Parameter(torch.empty_like(new)))
        for bname, buf in list(module.named_buffers(recurse=False)):
            new = state.get(prefix + bname)
            if new is not None and buf is not None and new.shape != buf.shape:
                module.register_buffer(bname, torch.empty_like(new))
        if isinstance(module, nn.modules.conv._ConvNd):
            out_c, in_per_group = int(module.weight.shape[0]), int(module.weight.shape[1])
            depthwise = module.groups > 1 and module.groups == module.in_channels
            if depthwise:
                module.groups = out_c
            module.out_channels = out_c
            module.in_channels = in_per_group * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = (int(d) for d in module.weight.shape)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = (
                int(module.weight.shape[0])
                if module.weight is not None
                else int(module.running_mean.shape[0])
            )
    from model_builder.efficientnet import load_strict

    load_strict(model, state, "pruned state")
    return model.eval()
