"""Replay workload: feeds inputs from a ``.npy`` file at a set rate through the same
in-process inference path as the HTTP API, so it counts as traffic in telemetry."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from edge_agent.engine import InferenceService
from edge_agent.errors import AgentError, ConfigError, InferenceError

logger = logging.getLogger(__name__)


def load_samples(path: Path) -> np.ndarray:
    """``N`` samples, each one model input (with or without its batch axis of 1)."""
    try:
        samples = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"replay file {path} is unreadable: {exc}") from exc
    if not isinstance(samples, np.ndarray) or samples.ndim < 1 or len(samples) == 0:
        raise ConfigError(f"replay file {path} must hold a non-empty array of samples")
    return samples


class Replay:
    """A thread that sends ``samples[i % N]`` every ``1/rate_hz`` seconds while running."""

    def __init__(self, service: InferenceService, samples: np.ndarray, rate_hz: float) -> None:
        self.service = service
        self.samples = samples
        self.period = 1.0 / rate_hz
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-replay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _input(self, sample: np.ndarray) -> dict[str, np.ndarray]:
        specs = self.service.input_specs()
        if len(specs) != 1:
            raise InferenceError("replay needs a single-input model")
        spec = specs[0]
        if sample.ndim == len(spec.shape) - 1:
            sample = sample[np.newaxis, ...]
        return {spec.name: sample}

    def _run(self) -> None:
        next_at = time.monotonic()
        warned: set[str] = set()
        i = 0
        while not self._stop.is_set():
            sample = self.samples[i % len(self.samples)]
            i += 1
            try:
                self.service.infer(self._input(sample))
                self.sent += 1
            except AgentError as exc:
                self.failed += 1
                key = type(exc).__name__
                if key not in warned:
                    warned.add(key)
                    logger.warning("replay request failed: %s", exc)
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay < -1.0:  # far behind (a stall): do not burst to catch up
                next_at = time.monotonic()
                delay = 0.0
            self._stop.wait(max(0.0, delay))
