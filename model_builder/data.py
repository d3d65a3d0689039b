"""Data a build uses: a :class:`DataBundle` of numpy arrays, checked before any stage runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from model_builder.errors import CalibrationError, DataError


@dataclass(frozen=True)
class DataBundle:
    """Arrays for one model; inputs are float32 NCHW (or N x input shape) batches.

    * ``calibration`` — INT8 calibration inputs (no labels needed).
    * ``fidelity`` — inputs on which INT8/pruned outputs are compared with the FP32
      teacher (top-1 agreement, cosine); golden vectors are drawn from them.
    * ``train_x``/``train_y`` — labelled training data (teacher training, distillation).
    * ``eval_x``/``eval_y`` — labelled evaluation data (accuracy).
    """

    calibration: np.ndarray
    fidelity: np.ndarray
    train_x: np.ndarray | None = None
    train_y: np.ndarray | None = None
    eval_x: np.ndarray | None = None
    eval_y: np.ndarray | None = None
    labels: list[str] | None = None
    preprocessing: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _check_inputs(
    name: str, x: object, sample_shape: tuple[int, ...], err: type[DataError]
) -> None:
    if not isinstance(x, np.ndarray):
        raise err(f"{name} data must be a numpy array, got {type(x).__name__}")
    if x.shape[:1] == (0,) or x.size == 0:
        raise err(f"{name} data is empty (shape {x.shape})")
    if tuple(x.shape[1:]) != sample_shape:
        raise err(
            f"{name} data has shape {tuple(x.shape)}; "
            f"expected (N, {', '.join(map(str, sample_shape))})"
        )
    if x.dtype != np.float32:
        raise err(f"{name} data has dtype {x.dtype}; expected float32")
    if not np.all(np.isfinite(x)):
        raise err(f"{name} data holds NaN or infinite values")


def check_bundle(
    bundle: DataBundle, sample_shape: tuple[int, ...], *, need_train: bool, need_calibration: bool
) -> None:
    """Raise :class:`DataError` / :class:`CalibrationError` saying what is wrong with ``bundle``."""
    if need_calibration:
        _check_inputs("calibration", bundle.calibration, sample_shape, CalibrationError)
    _check_inputs("fidelity", bundle.fidelity, sample_shape, DataError)
    for name, x, y in (
        ("train", bundle.train_x, bundle.train_y),
        ("eval", bundle.eval_x, bundle.eval_y),
    ):
        if x is None and y is None:
            if name == "train" and need_train:
                raise DataError(
                    "training / distillation needs labelled train data; the data has none"
                )
            continue
        if x is None:
            raise DataError(f"{name} data has labels but no inputs")
        _check_inputs(name, x, sample_shape, DataError)
        if y is None:
            if name == "eval":
                raise DataError("eval data needs labels")
            continue  # unlabelled train data: pure distillation (alpha = 1)
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{name} labels must be int of shape ({x.shape[0]},), got {y.dtype} {y.shape}"
            )
        if bundle.labels is not None and (y.min() < 0 or y.max() >= len(bundle.labels)):
            raise DataError(f"{name} labels out of range 0..{len(bundle.labels) - 1}")


def array_sha256(*arrays: np.ndarray | None) -> str:
    """sha256 over shapes, dtypes and bytes of ``arrays`` (None counts as absent)."""
    digest = hashlib.sha256()
    for a in arrays:
        if a is None:
            digest.update(b"none;")
            continue
        c = np.ascontiguousarray(a)
        digest.update(f"{c.dtype.str}{c.shape};".encode())
        digest.update(c.tobytes())
    return digest.hexdigest()
