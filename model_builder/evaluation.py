"""ONNX Runtime evaluation: outputs, accuracy, fidelity to a reference, CPU latency."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from model_builder.errors import EvaluationError


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def session(model: bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (default: all cores), full optimisation."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_cores()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph...)
        raise EvaluationError(f"ONNX Runtime cannot load the model: {exc}") from exc


def run(model: bytes | ort.InferenceSession, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Outputs (first output) of the model for ``x``, in batches."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    bs = fixed if isinstance(fixed, int) else batch_size
    outs = []
    try:
        for i in range(0, len(x), bs):
            outs.append(np.asarray(sess.run(None, {name: x[i : i + bs]})[0]))
    except Exception as exc:  # ORT runtime failure
        raise EvaluationError(f"ONNX Runtime failed to run the model: {exc}") from exc
    return np.concatenate(outs).astype(np.float32)


def accuracy(logits: np.ndarray, y: np.ndarray | None) -> float | None:
    if y is None:
        return None
    return float(np.mean(np.argmax(logits, axis=1) == y))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Fidelity:
    top1_agreement: float
    cosine_mean: float
    confident_agreement: float | None
    confident_count: int
    count: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "top1_agreement": round(self.top1_agreement, 4),
            "cosine_mean": round(self.cosine_mean, 5),
            "top1_agreement_confident": None
            if self.confident_agreement is None
            else round(self.confident_agreement, 4),
            "confident_count": self.confident_count,
            "count": self.count,
        }


def fidelity(reference: np.ndarray, out: np.ndarray, confident_prob: float = 0.3) -> Fidelity:
    """Top-1 agreement and mean cosine of ``out`` vs ``reference`` logits; also agreement
    over the inputs where the reference's top-1 probability is at least ``confident_prob``."""
    agree = np.argmax(reference, axis=1) == np.argmax(out, axis=1)
    num = np.sum(reference * out, axis=1)
    den = np.linalg.norm(reference, axis=1) * np.linalg.norm(out, axis=1) + 1e-12
    conf = softmax(reference).max(axis=1) >= confident_prob
    return Fidelity(
        top1_agreement=float(agree.mean()),
        cosine_mean=float(np.mean(num / den)),
        confident_agreement=float(agree[conf].mean()) if conf.any() else None,
        confident_count=int(conf.sum()),
        count=len(agree),
    )


def latency_ms(
    model: bytes,
    sample: np.ndarray,
    *,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
) -> float:
    """Median wall time (ms) of ``runs`` single-batch ORT CPU runs after ``warmup`` runs."""
    sess = session(model, threads)
    name = sess.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(sample[:1])}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))
