"""Exception tree of the model builder.

BuilderError
├── RecipeError          a recipe that is not valid (names the field)
├── WeightsError         a weights file that is missing or does not fit the architecture
├── DataError            data that is missing, empty or wrongly shaped
│   └── CalibrationError calibration data that is empty or wrongly shaped
├── TrainingError        a training / distillation run that failed (e.g. NaN loss)
├── PruningError         bad pruning settings, or pruning that failed
├── ExportError          ONNX export failed (names the unsupported op where known)
├── QuantizationError    INT8 quantization failed or missed its accuracy budget
├── EvaluationError      an ONNX model that ONNX Runtime cannot run
├── PackagingError       the package could not be written
└── TensorRTError        a TensorRT engine build or load failed
    └── TensorRTUnavailable  no ``tensorrt`` module or no CUDA GPU here
"""

from __future__ import annotations


class BuilderError(Exception):
    """Base of every error raised by the model builder."""


class RecipeError(BuilderError):
    """A recipe that is not valid: unknown field, bad value, unknown zoo name or factory."""


class WeightsError(BuilderError):
    """A weights file that is missing, unreadable, or does not match the architecture."""


class DataError(BuilderError):
    """Data (train / eval / fidelity) that is missing, empty or wrongly shaped."""


class CalibrationError(DataError):
    """Calibration data that is empty, too small or wrongly shaped."""


class TrainingError(BuilderError):
    """A training or distillation run that failed (for example a non-finite loss)."""


class PruningError(BuilderError):
    """Pruning settings out of range, or a pruning run that failed."""


class ExportError(BuilderError):
    """ONNX export failed; ``op`` names the unsupported operator when it is known."""

    def __init__(self, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.op = op


class QuantizationError(BuilderError):
    """INT8 quantization failed, produced a float model, or missed its accuracy budget."""


class EvaluationError(BuilderError):
    """A model that ONNX Runtime cannot load or run."""


class PackagingError(BuilderError):
    """The model package could not be assembled or written."""


class TensorRTError(BuilderError):
    """A TensorRT engine build or load that failed."""


class TensorRTUnavailable(TensorRTError):
    """The ``tensorrt`` Python module or a CUDA GPU is not available on this machine."""
