"""Telemetry: inference statistics, system metrics (psutil), GPU metrics (injected).

GPU metrics come from a provider object with ``read() -> GpuMetrics | None``; on a host
without a GPU the provider returns ``None`` and the sample has no ``gpu`` field — never
faked.  The Jetson/NVML providers live in the ``jetson`` package (issue 6) and are passed
in, not imported here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jetfleet.messages import GpuMetrics, InferenceMetrics, SystemMetrics, TelemetrySample

logger = logging.getLogger(__name__)

RESERVOIR = 20_000  # latencies kept per interval (uniform sample beyond that)
WINDOW = 1024  # latencies kept for the rolling /metrics quantiles


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of already sorted values; ``None`` when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class StatsSnapshot:
    count: int
    errors: int
    rejected: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class _Interval:
    """One engine's requests since the last telemetry sample."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.seen = 0
        self.count = 0
        self.errors = 0

    def add(self, latency_ms: float, ok: bool, rng: random.Random) -> None:
        if not ok:
            self.errors += 1
            return
        self.count += 1
        self.seen += 1
        if len(self.latencies) < RESERVOIR:
            self.latencies.append(latency_ms)
        else:  # a uniform sample of the interval's latencies
            j = rng.randrange(self.seen)
            if j < RESERVOIR:
                self.latencies[j] = latency_ms

    def snapshot(self, rejected: int = 0) -> StatsSnapshot:
        values = sorted(self.latencies)
        return StatsSnapshot(
            self.count, self.errors, rejected,
            percentile(values, 50), percentile(values, 95), percentile(values, 99),
        )


class InferenceStats:
    """Thread-safe request counters and latency percentiles over an interval, kept per
    engine (sha256) so a request is always counted against the engine that served it —
    a swap or a revert in the middle of an interval does not mix two releases."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self._intervals: dict[str | None, _Interval] = {}
        self._rejected = 0
        self._window: deque[float] = deque(maxlen=WINDOW)
        self.total_count = 0
        self.total_errors = 0
        self.total_rejected = 0

    def record(self, latency_ms: float, *, ok: bool, sha256: str | None = None) -> None:
        with self._lock:
            interval = self._intervals.get(sha256)
            if interval is None:
                interval = self._intervals[sha256] = _Interval()
            interval.add(latency_ms, ok, self._rng)
            if ok:
                self.total_count += 1
                self._window.append(latency_ms)
            else:
                self.total_errors += 1

    def record_rejected(self) -> None:
        """A malformed request (HTTP 400): not an inference error."""
        with self._lock:
            self._rejected += 1
            self.total_rejected += 1

    def snapshot(self, *, reset: bool = True) -> StatsSnapshot:
        """Counts and percentiles since the last reset, all engines together."""
        with self._lock:
            merged = _Interval()
            for interval in self._intervals.values():
                merged.latencies += interval.latencies
                merged.count += interval.count
                merged.errors += interval.errors
            snap = merged.snapshot(self._rejected)
            if reset:
                self._intervals, self._rejected = {}, 0
        return snap

    def snapshots(self, *, reset: bool = True) -> dict[str | None, StatsSnapshot]:
        """Per engine sha256 (in the order engines first served), since the last reset."""
        with self._lock:
            snaps = {sha: interval.snapshot() for sha, interval in self._intervals.items()}
            if reset:
                self._intervals, self._rejected = {}, 0
        return snaps

    def rolling_quantiles(self) -> dict[float, float | None]:
        with self._lock:
            values = sorted(self._window)
        return {q: percentile(values, q * 100) for q in (0.5, 0.95, 0.99)}


class GpuProvider(Protocol):
    def read(self) -> GpuMetrics | None: ...

    def close(self) -> None: ...


class NoGpu:
    """The provider of a host without a GPU: GPU fields stay absent."""

    def read(self) -> GpuMetrics | None:
        return None

    def close(self) -> None:
        return None


def detect_device_profile(
    detect: Callable[[], Any] | None = None,
) -> tuple[str | None, dict[str, str]]:
    """The hardware profile key (e.g. ``orin-nano-sm87-jp6.1-trt10.3``) and its details,
    with ``engine_key`` (``sm87-trt10.3``) when the GPU and TensorRT are known.
    ``detect`` (default :func:`jetson.profile.detect_profile`) returns a ``DeviceProfile``."""
    if detect is None:
        try:
            from jetson.profile import detect_profile
        except ImportError:
            return None, {}
        detect = detect_profile
    try:
        profile = detect()
    except Exception as exc:  # a hardware probe must never stop the agent
        logger.warning("device profile detection failed (%s); profile unknown", exc)
        return None, {}
    details = {k: str(v) for k, v in profile.details().items()}
    if profile.engine_key:
        details["engine_key"] = profile.engine_key
    return profile.key, details


def default_gpu_provider() -> GpuProvider:
    """``jetson.gpu.select_provider()`` when that package provides one, else :class:`NoGpu`."""
    try:
        from jetson.gpu import select_provider  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return NoGpu()
    try:
        provider = select_provider()
    except Exception as exc:  # a hardware probe must never stop the agent
        logger.warning("GPU provider selection failed (%s); GPU metrics absent", exc)
        return NoGpu()
    return provider if provider is not None else NoGpu()


class SystemSampler:
    """System metrics from psutil; a failing probe leaves its field absent."""

    def __init__(self, disk_path: str = "/") -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process(os.getpid())
        self._disk_path = disk_path
        psutil.cpu_percent(interval=None)  # prime: the first call always says 0.0

    def read(self) -> SystemMetrics:
        ps = self._psutil
        values: dict[str, float] = {}
        try:
            values["cpu_pct"] = float(ps.cpu_percent(interval=None))
            mem = ps.virtual_memory()
            values["mem_total_mb"] = mem.total / 1e6
            values["mem_used_mb"] = (mem.total - mem.available) / 1e6
            values["mem_pct"] = float(mem.percent)
            values["agent_rss_mb"] = self._proc.memory_info().rss / 1e6
            values["disk_pct"] = float(ps.disk_usage(self._disk_path).percent)
        except (OSError, ps.Error) as exc:
            logger.debug("system metrics incomplete: %s", exc)
        with contextlib.suppress(OSError):  # no load average on this platform
            values["load1"] = float(os.getloadavg()[0])
        return SystemMetrics(**values)


class TelemetryCollector:
    """Builds one :class:`TelemetrySample` per interval."""

    def __init__(
        self,
        stats: InferenceStats,
        gpu: GpuProvider | None = None,
        system: SystemSampler | None = None,
    ) -> None:
        self.stats = stats
        self.gpu: GpuProvider = gpu if gpu is not None else NoGpu()
        self.system = system if system is not None else SystemSampler()

    def sample(
        self, seq: int, ts: float, release: str | None, sha256: str | None
    ) -> TelemetrySample:
        """One sample for the interval, all engines' requests together."""
        snap = self.stats.snapshot(reset=True)
        system, gpu = self._host()
        return _sample(seq, ts, release, sha256, snap, system, gpu)

    def samples(
        self,
        next_seq: Callable[[], int],
        ts: float,
        current: tuple[str | None, str | None],
        release_of: Callable[[str], str | None],
    ) -> list[TelemetrySample]:
        """The interval's samples: one per engine that served requests in it (an engine
        swapped out mid-interval gets its own, under its own release), and always one for
        the ``current`` (release, sha256) engine, so system metrics go out every interval."""
        release, sha256 = current
        snaps = self.stats.snapshots(reset=True)
        system, gpu = self._host()  # read once: psutil's CPU % is "since the last call"
        out = [
            _sample(next_seq(), ts, release_of(sha) if sha else None, sha, snap, system, gpu)
            for sha, snap in snaps.items()
            if sha != sha256
        ]
        snap = snaps.get(sha256, StatsSnapshot(0, 0, 0, None, None, None))
        out.append(_sample(next_seq(), ts, release, sha256, snap, system, gpu))
        return out

    def _host(self) -> tuple[SystemMetrics, GpuMetrics | None]:
        try:
            gpu = self.gpu.read()
        except Exception as exc:  # a provider bug must not stop telemetry
            logger.warning("GPU provider failed: %s", exc)
            gpu = None
        return self.system.read(), gpu


def _sample(
    seq: int, ts: float, release: str | None, sha256: str | None, snap: StatsSnapshot,
    system: SystemMetrics, gpu: GpuMetrics | None,
) -> TelemetrySample:
    return TelemetrySample(
        ts=ts,
        seq=seq,
        system=system,
        gpu=gpu,
        inference=InferenceMetrics(
            count=snap.count, errors=snap.errors, p50_ms=snap.p50_ms, p95_ms=snap.p95_ms,
            p99_ms=snap.p99_ms, release=release, sha256=sha256,
        ),
    )
