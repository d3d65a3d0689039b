from __future__ import annotations

import threading

from edge_agent.telemetry import InferenceStats, NoGpu, TelemetryCollector, percentile
from jetfleet.messages import GpuMetrics


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_stats_thread_safe_and_reset_per_interval():
    stats = InferenceStats()

    def work(offset: int) -> None:
        for i in range(1000):
            stats.record(float(i % 100 + 1), ok=True)
        for _ in range(10):
            stats.record(1.0, ok=False)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot()
    assert (snap.count, snap.errors) == (8000, 80)
    assert snap.p50_ms == 50.0
    assert snap.p95_ms == 95.0
    assert snap.p99_ms == 99.0
    empty = stats.snapshot()
    assert (empty.count, empty.errors, empty.p50_ms) == (0, 0, None)
    assert stats.total_count == 8000


def test_sample_has_system_metrics_and_no_fake_gpu():
    collector = TelemetryCollector(InferenceStats(), NoGpu())
    sample = collector.sample(seq=4, ts=1.0, release="r", sha256=None)
    assert sample.gpu is None
    assert "gpu" not in sample.model_dump(exclude_none=True)
    assert sample.system.agent_rss_mb
    assert sample.system.agent_rss_mb > 1
    assert sample.system.mem_total_mb
    assert sample.system.cpu_pct is not None


def test_injected_gpu_provider_is_used_and_failures_are_absent():
    class Gpu:
        def read(self) -> GpuMetrics | None:
            return GpuMetrics(source="nvml", load_pct=12.0)

    class Broken:
        def read(self) -> GpuMetrics | None:
            raise OSError("sysfs vanished")

    assert TelemetryCollector(InferenceStats(), Gpu()).sample(0, 0.0, None, None).gpu.load_pct == 12
    assert TelemetryCollector(InferenceStats(), Broken()).sample(0, 0.0, None, None).gpu is None


def test_requests_count_against_the_engine_that_served_them():
    """A swap or revert mid-interval must not charge one release with another's errors:
    the interval yields one sample per engine, each under its own release."""
    stats = InferenceStats()
    collector = TelemetryCollector(stats, NoGpu())
    bad, good = "b" * 64, "a" * 64
    for _ in range(10):
        stats.record(5.0, ok=False, sha256=bad)  # the faulty release, before its revert
    for _ in range(40):
        stats.record(1.0, ok=True, sha256=good)  # known-good again
    seqs = iter(range(100))
    samples = collector.samples(lambda: next(seqs), 1.0, ("r1", good),
                                {bad: "r-bad"}.get)
    by_release = {s.inference.release: s.inference for s in samples}
    assert by_release["r-bad"].errors == 10
    assert by_release["r-bad"].count == 0
    assert by_release["r1"].errors == 0
    assert by_release["r1"].count == 40
    assert [s.seq for s in samples] == [0, 1]
    assert samples[-1].inference.sha256 == good  # the current engine's sample is last
    idle = collector.samples(lambda: next(seqs), 2.0, ("r1", good), {}.get)
    assert len(idle) == 1  # an idle interval still reports system metrics once
    assert idle[0].inference.count == 0
    assert idle[0].system.mem_total_mb
