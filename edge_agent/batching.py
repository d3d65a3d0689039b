"""Admission and dynamic batching in front of :class:`~edge_agent.engine.InferenceService`.

:meth:`Batcher.infer` has the service's interface, so the local API calls it instead:

1. the token bucket (:class:`~edge_agent.ratelimit.TokenBucket`) answers
   :class:`RateLimited` (HTTP 429) at once when empty;
2. a full queue (``max_queue`` waiting requests) answers :class:`Overloaded` (HTTP 503)
   at once — requests never queue without end;
3. worker threads take up to ``max_batch_size`` requests, waiting at most
   ``max_queue_delay_ms`` after the first, and run them as one batch when every model
   input has a dynamic batch axis (axis 0) and the requests' other axes agree; otherwise
   each request runs alone.  Every caller gets its own rows back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import numpy as np

from edge_agent.engine import Engine, InferenceResult, InferenceService
from edge_agent.errors import (
    BackendError,
    BadRequest,
    InferenceError,
    NotServing,
    Overloaded,
    RateLimited,
)
from edge_agent.ratelimit import TokenBucket
from edge_agent.rules import ServingConfig
from edge_agent.runtime import InputSpec

logger = logging.getLogger(__name__)

RESULT_TIMEOUT_S = 60.0


class _Request:
    __slots__ = ("done", "error", "inputs", "prepared", "result")

    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        self.inputs = inputs
        self.prepared: dict[str, np.ndarray] = {}
        self.done = threading.Event()
        self.result: InferenceResult | None = None
        self.error: InferenceError | BackendError | None = None

    def finish(
        self, result: InferenceResult | None, error: InferenceError | BackendError | None
    ) -> None:
        self.result, self.error = result, error
        self.done.set()

    def rows(self) -> int:
        return int(next(iter(self.prepared.values())).shape[0])

    def key(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple(sorted((k, tuple(v.shape[1:])) for k, v in self.prepared.items()))


class Batcher:
    """See the module docstring.  :meth:`start` the workers, :meth:`stop` them."""

    def __init__(
        self,
        service: InferenceService,
        config: ServingConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.config = config
        self.limiter = TokenBucket(config.rate_limit_rps, config.rate_limit_burst, clock)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()
        self.batches = 0
        self.rejected_rate = 0
        self.rejected_full = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        for n in range(self.config.workers):
            thread = threading.Thread(target=self._work, name=f"agent-batch-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for req in pending:
            req.finish(None, NotServing("the agent is stopping"))
        for thread in self._threads:
            thread.join(timeout=5)

    # -- the service interface ------------------------------------------------------------
    def input_specs(self) -> list[InputSpec]:
        return self.service.input_specs()

    def infer(self, inputs: dict[str, np.ndarray]) -> InferenceResult:
        if not self.limiter.try_acquire():
            with self._lock:
                self.rejected_rate += 1
            raise RateLimited(f"over the admission rate of {self.limiter.rate_rps:g} requests/s")
        req = _Request(inputs)
        with self._cond:
            if self._stop:
                raise NotServing("the agent is stopping")
            if len(self._queue) >= self.config.max_queue:
                with self._lock:
                    self.rejected_full += 1
                raise Overloaded(f"inference queue is full ({self.config.max_queue} waiting)")
            self._queue.append(req)
            self._cond.notify()
        if not req.done.wait(RESULT_TIMEOUT_S):
            raise InferenceError(f"no result within {RESULT_TIMEOUT_S:g}s")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def queued(self) -> int:
        return len(self._queue)

    # -- workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception as exc:  # a worker must survive anything one batch does
                logger.exception("inference batch failed unexpectedly")
                for req in batch:
                    if not req.done.is_set():
                        req.finish(None, InferenceError(f"internal error: {exc}"))

    def _take(self) -> list[_Request] | None:
        delay = self.config.max_queue_delay_ms / 1000.0
        limit = self.config.max_batch_size
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            batch = [self._queue.popleft()]
            deadline = time.monotonic() + delay
            while len(batch) < limit and not self._stop:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self, batch: list[_Request]) -> None:
        try:
            with self.service.slot.acquire() as engine:
                ready: list[_Request] = []
                for req in batch:
                    try:
                        req.prepared = engine.prepare(req.inputs)
                        ready.append(req)
                    except BadRequest as exc:
                        self.service.stats.record_rejected()
                        req.finish(None, exc)
                if not ready:
                    return
                if _batchable(engine.inputs) and len(ready) > 1:
                    groups: dict[object, list[_Request]] = {}
                    for req in ready:
                        groups.setdefault(req.key(), []).append(req)
                    for group in groups.values():
                        self._run_group(engine, group)
                else:
                    for req in ready:
                        self._run_group(engine, [req])
        except NotServing as exc:
            for req in batch:
                if not req.done.is_set():
                    req.finish(None, exc)

    def _run_group(self, engine: Engine, group: list[_Request]) -> None:
        if len(group) == 1:
            inputs = group[0].prepared
        else:
            inputs = {name: np.concatenate([r.prepared[name] for r in group])
                      for name in group[0].prepared}
        start = time.perf_counter()
        try:
            outputs = engine.run(inputs)
        except BackendError as exc:
            latency = (time.perf_counter() - start) * 1000.0
            for req in group:
                self.service.observe(engine.sha256, latency, exc)
                req.finish(None, exc)
            return
        latency = (time.perf_counter() - start) * 1000.0
        with self._lock:
            self.batches += 1
            self.batch_sizes[len(group)] += 1
        rows = [r.rows() for r in group]
        total = sum(rows)
        if len(group) > 1 and any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
            for req in group:  # outputs are not batch-major: run one by one
                self._run_group(engine, [req])
            return
        offsets = np.cumsum(rows)[:-1]
        split = {name: np.split(value, offsets) if len(group) > 1 else [value]
                 for name, value in outputs.items()}
        for i, req in enumerate(group):
            self.service.observe(engine.sha256, latency, None)
            result = {name: parts[i] for name, parts in split.items()}
            req.finish(InferenceResult(result, engine.release, engine.sha256, latency), None)


def _batchable(specs: list[InputSpec]) -> bool:
    """Every input has a dynamic leading (batch) axis."""
    return bool(specs) and all(s.shape and s.shape[0] is None for s in specs)
