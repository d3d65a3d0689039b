"""A fault-injecting backend: real ONNX Runtime underneath, failures injected on top.

The only fake in the self-heal suites: a runtime that crashes (or errors) cannot be made
to happen on purpose with a real ORT session, so this backend implements the same
:class:`~edge_agent.runtime.Backend` interface and injects them for chosen models.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edge_agent.errors import BackendError, RuntimeCrashed
from edge_agent.runtime import OnnxRuntimeBackend
from jetfleet.package import read_package


def model_bytes(package: str | Path) -> bytes:
    return read_package(Path(package)).variant("onnxruntime")


CLEAN_CALLS = 6  # the testing stage (golden + latency runs) passes; traffic then fails


class FaultyBackend(OnnxRuntimeBackend):
    """ORT, but for ``target`` models: every ``fail_every``-th request raises
    :class:`BackendError`; after ``crash_after`` requests the runtime is dead
    (:class:`RuntimeCrashed` until it is loaded again)."""

    def __init__(self, target: bytes, *, fail_every: int = 0, crash_after: int = 0) -> None:
        super().__init__()
        self.target = target
        self.fail_every = fail_every
        self.crash_after = crash_after
        self.faulty = False
        self.calls = 0
        self._count_lock = threading.Lock()

    def load(self, model: bytes, threads: int) -> None:
        super().load(model, threads)
        self.faulty = model == self.target

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.faulty:
            with self._count_lock:
                self.calls += 1
                n = self.calls
            if self.crash_after and n > self.crash_after:
                raise RuntimeCrashed("injected runtime crash")
            if self.fail_every and n > CLEAN_CALLS and n % self.fail_every == 0:
                raise BackendError("injected fault")
        return super().run(inputs)
