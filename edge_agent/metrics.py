"""The agent's Prometheus ``/metrics`` text (hand-written format, no dependency)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.api import prometheus

if TYPE_CHECKING:
    from edge_agent.daemon import Agent

Sample = tuple[dict[str, str], float]
KINDS = ("telemetry", "events")


def render(agent: Agent) -> str:
    stats = agent.stats
    engine = agent.engines.current
    labels = {"device": agent.device_id}
    serving_labels = dict(labels)
    if engine is not None:
        serving_labels.update(release=engine.release or "", sha256=engine.sha256)
    quantiles: list[Sample] = [
        ({**labels, "quantile": str(q)}, value)
        for q, value in stats.rolling_quantiles().items() if value is not None
    ]
    ota = agent.updater.totals()
    bad: list[Sample] = [
        ({**labels, "kind": kind, "reason": reason}, float(n))
        for (kind, reason), n in sorted(agent.validator.snapshot().items())
    ]
    families: list[tuple[str, str, str, list[Sample]]] = [
        ("jetfleet_agent_serving", "gauge", "1 when a model is loaded and answering",
         [(serving_labels, 1.0 if engine is not None else 0.0)]),
        ("jetfleet_agent_connected", "gauge", "1 while the MQTT session is up",
         [(labels, 1.0 if agent.connected else 0.0)]),
        ("jetfleet_agent_inference_requests_total", "counter", "inference requests served",
         [(labels, float(stats.total_count))]),
        ("jetfleet_agent_inference_errors_total", "counter", "inference requests that failed",
         [(labels, float(stats.total_errors))]),
        ("jetfleet_agent_inference_rejected_total", "counter", "malformed inference requests",
         [(labels, float(stats.total_rejected))]),
        ("jetfleet_agent_inference_latency_ms", "summary",
         "inference latency over the last 1024 requests", quantiles),
        ("jetfleet_agent_ota_bytes_received_total", "counter", "OTA payload bytes received",
         [(labels, float(ota.get("bytes_received", 0)))]),
        ("jetfleet_agent_ota_bytes_rerequested_total", "counter",
         "OTA bytes asked for again (timeout, bad digest)",
         [(labels, float(ota.get("bytes_rerequested", 0)))]),
        ("jetfleet_agent_ota_block_hash_mismatches_total", "counter",
         "OTA blocks that failed their digest", [(labels, float(ota.get("hash_mismatches", 0)))]),
        ("jetfleet_agent_bad_messages_total", "counter", "inbound messages dropped, by reason",
         bad),
        ("jetfleet_agent_buffer_pending", "gauge", "items waiting in the store-and-forward outbox",
         [({**labels, "kind": k}, float(agent.buffer.pending(k))) for k in KINDS]),
        ("jetfleet_agent_buffer_dropped", "gauge", "items dropped from the full outbox, unreported",
         [({**labels, "kind": k}, float(agent.buffer.dropped(k))) for k in KINDS]),
    ]
    families += _selfheal(agent, labels)
    return prometheus(families)


def _selfheal(agent: Agent, labels: dict[str, str]) -> list[tuple[str, str, str, list[Sample]]]:
    """Batching, admission and watchdog counters (issue 5)."""
    batcher, dog = agent.batcher, agent.watchdog
    sizes = sorted(batcher.batch_sizes.items())
    return [
        ("jetfleet_agent_batches_total", "counter", "inference batches run",
         [(labels, float(batcher.batches))]),
        ("jetfleet_agent_batch_size_total", "counter", "batches run, by batch size",
         [({**labels, "size": str(size)}, float(n)) for size, n in sizes]),
        ("jetfleet_agent_requests_rejected_total", "counter",
         "requests refused at once: 429 over the rate, 503 queue full",
         [({**labels, "code": "429"}, float(batcher.rejected_rate)),
          ({**labels, "code": "503"}, float(batcher.rejected_full))]),
        ("jetfleet_agent_queue_depth", "gauge", "inference requests waiting for a batch",
         [(labels, float(batcher.queued()))]),
        ("jetfleet_agent_watchdog_trips_total", "counter", "watchdog actions taken",
         [(labels, float(dog.trips))]),
        ("jetfleet_agent_watchdog_reverts_total", "counter", "watchdog reverts to known-good",
         [(labels, float(dog.reverts))]),
        ("jetfleet_agent_runtime_restarts_total", "counter", "runtime restarts after a crash",
         [(labels, float(dog.restarts))]),
        ("jetfleet_agent_throttled", "gauge", "1 while the admission rate is throttled",
         [(labels, 1.0 if dog.throttled else 0.0)]),
    ]
