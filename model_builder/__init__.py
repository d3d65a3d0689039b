"""jetfleet model builder: prune, distill, export, INT8-quantize, evaluate and package models.

Torch is imported by this package only (never by ``jetfleet``/``edge_agent``).
"""

from __future__ import annotations

from model_builder.builder import (
    BUILDER_VERSION,
    BuildResult,
    build,
    build_digits_package,
    build_file,
)
from model_builder.data import DataBundle
from model_builder.errors import (
    BuilderError,
    CalibrationError,
    DataError,
    EvaluationError,
    ExportError,
    PackagingError,
    PruningError,
    QuantizationError,
    RecipeError,
    TensorRTError,
    TensorRTUnavailable,
    TrainingError,
    WeightsError,
)
from model_builder.recipe import Recipe, load_recipe, parse_recipe
from model_builder.stages import format_stage_table

__all__ = [
    "BUILDER_VERSION",
    "BuildResult",
    "BuilderError",
    "CalibrationError",
    "DataBundle",
    "DataError",
    "EvaluationError",
    "ExportError",
    "PackagingError",
    "PruningError",
    "QuantizationError",
    "Recipe",
    "RecipeError",
    "TensorRTError",
    "TensorRTUnavailable",
    "TrainingError",
    "WeightsError",
    "build",
    "build_digits_package",
    "build_file",
    "format_stage_table",
    "load_recipe",
    "parse_recipe",
]
