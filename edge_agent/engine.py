"""Engines and the engine pointer.

* :class:`Engine` — a loaded backend plus what it is: release, sha256, card, golden vectors.
* :class:`EngineSlot` — the pointer requests go through.  :meth:`EngineSlot.swap` is an
  atomic pointer swap: requests that already hold the old engine finish on it (it is
  closed when its last request ends), new requests get the new one; none fails.  During a
  trial the known-good engine stays loaded as the ``standby``, so a revert is a swap too.
* :class:`InferenceService` — validates inputs, runs, and records latency/errors.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.errors import ActivationError, BackendError, BadRequest, NotServing
from edge_agent.runtime import Backend, BackendFactory, InputSpec
from edge_agent.telemetry import InferenceStats
from jetfleet.errors import PackageError
from jetfleet.package import Golden, ModelCard, read_package

logger = logging.getLogger(__name__)

DEFAULT_LATENCY_BUDGET_MS = 1000.0
LATENCY_RUNS = 5


class Engine:
    """A backend with its identity. Closed by its :class:`EngineSlot` when retired and idle."""

    def __init__(
        self,
        backend: Backend,
        *,
        sha256: str,
        release: str | None,
        golden: Golden | None = None,
        card: ModelCard | None = None,
    ) -> None:
        self.backend = backend
        self.sha256 = sha256
        self.release = release
        self.golden = golden
        self.card = card
        self.refs = 0
        self.retired = False
        self.closed = False

    @property
    def inputs(self) -> list[InputSpec]:
        return self.backend.inputs

    def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, ranks, fixed dims and dtypes; raise :class:`BadRequest`."""
        specs = {s.name: s for s in self.backend.inputs}
        unknown = sorted(set(inputs) - set(specs))
        if unknown:
            raise BadRequest(f"unknown input(s) {unknown}; the model takes {sorted(specs)}")
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise BadRequest(f"missing input(s) {missing}; the model takes {sorted(specs)}")
        return {name: specs[name].check(np.asarray(value)) for name, value in inputs.items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.run(inputs)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend.close()


def load_engine(
    package_path: Path, sha256: str, release: str | None, factory: BackendFactory, threads: int
) -> Engine:
    """Open a package (checking its sha256), load its variant for the backend."""
    try:
        package = read_package(package_path, expected_sha256=sha256)
        backend = factory()
        model = package.variant(backend.variant)
        golden = package.golden()
    except PackageError as exc:
        raise ActivationError(f"package {sha256[:12]} is unusable: {exc}") from exc
    try:
        backend.load(model, threads)
    except BackendError as exc:
        raise ActivationError(str(exc)) from exc
    return Engine(backend, sha256=sha256, release=release, golden=golden, card=package.card)


@dataclass(frozen=True)
class EngineCheck:
    golden_max_error: float
    latency_ms: float
    budget_ms: float


def latency_budget_ms(card: ModelCard | None, default: float = DEFAULT_LATENCY_BUDGET_MS) -> float:
    """3x the card's measured latency plus slack, or ``default`` when the card has none."""
    measured = card.metrics.get("latency_ms") if card is not None else None
    if isinstance(measured, (int, float)) and measured > 0:
        return float(measured) * 3.0 + 20.0
    return default


def check_engine(engine: Engine, budget_ms: float) -> EngineCheck:
    """The testing stage: golden vectors within tolerance, median latency within budget."""
    golden = engine.golden
    if golden is None:
        raise ActivationError("package has no golden vectors")
    try:
        inputs = engine.prepare(golden.inputs)
        outputs = engine.run(inputs)
        result = golden.compare(outputs)
        if not result.ok:
            raise ActivationError("golden vectors failed: " + "; ".join(result.failures))
        times = []
        for _ in range(LATENCY_RUNS):
            start = time.perf_counter()
            engine.run(inputs)
            times.append((time.perf_counter() - start) * 1000.0)
    except (BadRequest, BackendError) as exc:
        raise ActivationError(f"golden vectors do not run: {exc}") from exc
    latency = statistics.median(times)
    if latency > budget_ms:
        raise ActivationError(f"latency {latency:.1f} ms over the budget of {budget_ms:.1f} ms")
    return EngineCheck(result.max_abs_error, latency, budget_ms)


class EngineSlot:
    """The engine pointer; see the module docstring."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._standby: Engine | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> Engine | None:
        return self._engine

    @contextmanager
    def acquire(self) -> Iterator[Engine]:
        with self._lock:
            engine = self._engine
            if engine is None:
                raise NotServing("no model is loaded")
            engine.refs += 1
        try:
            yield engine
        finally:
            with self._lock:
                engine.refs -= 1
                close = engine.retired and engine.refs == 0
            if close:
                engine.close()

    @property
    def standby(self) -> Engine | None:
        """The known-good engine kept loaded during a trial (revert = pointer swap)."""
        return self._standby

    def swap(self, new: Engine | None) -> Engine | None:
        """Point at ``new``; the old engine closes once its in-flight requests end
        (unless it is the :attr:`standby`, which stays loaded)."""
        with self._lock:
            old, self._engine = self._engine, new
            retire: list[Engine] = []
            if old is not None and old is not new and old is not self._standby:
                retire.append(old)
            if self._standby is new:
                self._standby = None
            close = self._retire(retire)
        for engine in close:
            engine.close()
        return old

    def set_standby(self, engine: Engine | None) -> None:
        """Keep ``engine`` loaded beside the current one (``None`` drops the standby)."""
        with self._lock:
            old, self._standby = self._standby, engine
            close = self._retire([old] if old is not None and old is not engine else [])
        for item in close:
            item.close()

    def _retire(self, engines: list[Engine]) -> list[Engine]:
        close = []
        for engine in engines:
            if engine is self._engine:
                continue
            engine.retired = True
            if engine.refs == 0:
                close.append(engine)
        return close


Observer = Callable[[str, float, BackendError | None], None]


@dataclass(frozen=True)
class InferenceResult:
    outputs: dict[str, np.ndarray]
    release: str | None
    sha256: str
    latency_ms: float


class InferenceService:
    """The one inference path (HTTP API and replay both use it)."""

    def __init__(self, slot: EngineSlot, stats: InferenceStats) -> None:
        self.slot = slot
        self.stats = stats
        self.observer: Observer | None = None  # the watchdog's request log

    def observe(self, sha256: str, latency_ms: float, error: BackendError | None) -> None:
        """Record one request's outcome (stats, and the watchdog when attached)."""
        self.stats.record(latency_ms, ok=error is None, sha256=sha256)
        if self.observer is not None:
            self.observer(sha256, latency_ms, error)

    def input_specs(self) -> list[InputSpec]:
        engine = self.slot.current
        if engine is None:
            raise NotServing("no model is loaded")
        return engine.inputs

    def infer(self, inputs: dict[str, np.ndarray]) -> InferenceResult:
        with self.slot.acquire() as engine:
            try:
                prepared = engine.prepare(inputs)
            except BadRequest:
                self.stats.record_rejected()
                raise
            start = time.perf_counter()
            try:
                outputs = engine.run(prepared)
            except BackendError as exc:
                self.observe(engine.sha256, (time.perf_counter() - start) * 1000.0, exc)
                raise
            latency = (time.perf_counter() - start) * 1000.0
            self.observe(engine.sha256, latency, None)
            return InferenceResult(outputs, engine.release, engine.sha256, latency)
