"""Build recipes (YAML), validated with pydantic; every model forbids unknown fields.

Example (see ``recipes/digits.yaml``)::

    name: digits
    version: "1.0.0"
    model: {zoo: digits, train: {epochs: 20}}
    data: {zoo: digits}
    stages:
      prune: {ratio: 0.5}
      distill: {epochs: 10, temperature: 4.0, alpha: 0.7}
      quantize: {calibration_method: minmax, max_accuracy_drop: 0.005}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model_builder.errors import RecipeError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSettings(_Strict):
    """Train the teacher from scratch on ``data``'s labelled train split."""

    epochs: int = Field(default=20, ge=1, le=1000)
    lr: float = Field(default=3e-3, gt=0, le=10)
    batch_size: int = Field(default=64, ge=1, le=65536)
    weight_decay: float = Field(default=1e-4, ge=0)


class ModelSpec(_Strict):
    zoo: str | None = None
    factory: str | None = Field(default=None, description="module:function returning an nn.Module")
    weights: str | None = Field(
        default=None, description="state-dict path (relative to the recipe), or 'package'"
    )
    train: TrainSettings | None = None
    input_shape: list[int] | None = Field(
        default=None, description="per-sample input shape, e.g. [1, 8, 8]"
    )
    input_name: str = Field(default="input", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    output_name: str = Field(default="logits", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    classifier: str | None = Field(
        default=None, description="module name pruning keeps (default: zoo's)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.zoo is None) == (self.factory is None):
            raise ValueError("give exactly one of model.zoo or model.factory")
        if self.factory is not None and self.input_shape is None:
            raise ValueError("model.input_shape is required with model.factory")
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ValueError("model.input_shape must be positive sizes")
        return self


class DataSpec(_Strict):
    zoo: str | None = None
    loader: str | None = Field(
        default=None, description="module:function(seed) returning a DataBundle"
    )
    seed: int = 0
    calibration_size: int | None = Field(
        default=None, ge=1, description="use the first N calibration inputs"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.zoo is None) == (self.loader is None):
            raise ValueError("give exactly one of data.zoo or data.loader")
        return self


class BaselineSettings(_Strict):
    pass


class PruneSettings(_Strict):
    ratio: float | None = Field(
        default=None, gt=0, lt=1, description="channel pruning ratio per layer"
    )
    macs_target: float | None = Field(
        default=None, gt=0, lt=1, description="fraction of MACs to keep"
    )
    iterative_steps: int = Field(default=1, ge=1, le=100)
    ignored_layers: list[str] | None = Field(default=None, description="module names kept whole")
    importance: Literal["l1", "l2"] = "l2"
    global_pruning: bool = False
    round_to: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_target(self) -> PruneSettings:
        if (self.ratio is None) == (self.macs_target is None):
            raise ValueError("give exactly one of prune.ratio or prune.macs_target")
        return self


class DistillSettings(_Strict):
    epochs: int = Field(default=10, ge=1, le=1000)
    lr: float = Field(default=1e-3, gt=0, le=10)
    batch_size: int = Field(default=64, ge=1, le=65536)
    temperature: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.7, ge=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0)


class ExportSettings(_Strict):
    opset: int = Field(default=18, ge=13, le=23)
    dynamic_batch: bool = True
    exporter: Literal["auto", "dynamo", "legacy"] = "auto"


class Remedy(_Strict):
    """A quantization setting to try when INT8 misses the accuracy budget."""

    calibration_method: Literal["minmax", "entropy", "percentile"] | None = None
    per_channel: bool | None = None
    nodes_to_exclude: list[str] = Field(default_factory=list)


def _both_variants() -> list[Literal["onnxruntime", "tensorrt"]]:
    return ["onnxruntime", "tensorrt"]


class QuantizeSettings(_Strict):
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_size: int = Field(default=128, ge=1, le=100000)
    per_channel: bool = True
    nodes_to_exclude: list[str] = Field(default_factory=list)
    max_accuracy_drop: float = Field(
        default=0.01, ge=0, le=1, description="absolute, 0.01 = 1 point"
    )
    remedies: list[Remedy] = Field(default_factory=list)
    on_budget_miss: Literal["fail", "keep_best"] = "fail"
    variants: list[Literal["onnxruntime", "tensorrt"]] = Field(
        default_factory=_both_variants, min_length=1
    )


class EvaluateSettings(_Strict):
    latency_runs: int = Field(default=50, ge=50, le=100000)
    warmup: int = Field(default=10, ge=1, le=10000)
    threads: int | None = Field(
        default=None, ge=1, description="intra-op threads (default: all cores)"
    )
    confident_prob: float = Field(default=0.3, ge=0, le=1)


class TensorRTSettings(_Strict):
    fp16: bool = False
    workspace_mib: int = Field(default=1024, ge=64)


class Stages(_Strict):
    baseline: BaselineSettings | None = Field(default_factory=lambda: BaselineSettings())
    prune: PruneSettings | None = None
    distill: DistillSettings | None = None
    export: ExportSettings = Field(default_factory=lambda: ExportSettings())
    quantize: QuantizeSettings | None = Field(default_factory=lambda: QuantizeSettings())
    evaluate: EvaluateSettings = Field(default_factory=lambda: EvaluateSettings())
    tensorrt: TensorRTSettings | None = None


class PackageSettings(_Strict):
    golden_count: int = Field(default=16, ge=1, le=1024)


class Recipe(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    seed: int = 0
    model: ModelSpec
    data: DataSpec
    stages: Stages = Field(default_factory=Stages)
    package: PackageSettings = Field(default_factory=lambda: PackageSettings())
    cache_dir: str | None = None
    base_dir: str | None = Field(
        default=None, description="set by load_recipe: relative paths resolve here"
    )


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(recipe)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_recipe(data: object, base_dir: Path | None = None) -> Recipe:
    """Validate a recipe mapping; errors name each offending field."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping (YAML object)")
    if base_dir is not None and "base_dir" not in data:
        data = {**data, "base_dir": str(base_dir)}
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"invalid recipe: {_describe(exc)}") from exc


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from exc
    return parse_recipe(data, base_dir=path.resolve().parent)
