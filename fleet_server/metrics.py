"""Prometheus metrics of one server instance (own registry: no process-global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "jetfleet_server"


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            f"{PREFIX}_messages_ingested", "Valid device messages ingested", ["kind"], registry=r
        )
        self.bad = Counter(
            f"{PREFIX}_bad_messages",
            "Device messages refused and dropped",
            ["kind", "reason"],
            registry=r,
        )
        self.inbox_dropped = Counter(
            f"{PREFIX}_inbox_dropped",
            "Messages dropped because the ingest inbox stayed full",
            ["kind"],
            registry=r,
        )
        self.blocks_served = Counter(
            f"{PREFIX}_blocks_served", "Block frames published to devices", registry=r
        )
        self.egress_bytes = Counter(
            f"{PREFIX}_block_egress_bytes",
            "Block frame bytes published: unicast (d/{id}/blocks) or broadcast (a/{sha}/blocks)",
            ["mode"],
            registry=r,
        )
        self.fetch_truncated = Counter(
            f"{PREFIX}_fetch_truncated",
            "Fetch requests asking for more blocks than served per request",
            registry=r,
        )
        self.batch_failures = Counter(
            f"{PREFIX}_ingest_batch_failures",
            "Ingest batches whose transaction failed and were retried message by message",
            registry=r,
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_ingest_batch_seconds", "Time to write one ingest batch", registry=r
        )
        self.desired_published = Counter(
            f"{PREFIX}_desired_published", "Retained desired assignments published", registry=r
        )
        self.reconciles = Counter(
            f"{PREFIX}_desired_reconciles",
            "Checks of the broker's retained assignments after a (re)connect",
            registry=r,
        )
        self.inbox_depth = Gauge(
            f"{PREFIX}_inbox_depth", "Messages waiting in the ingest inbox", registry=r
        )
        self.fetch_depth = Gauge(
            f"{PREFIX}_fetch_queue_depth", "Fetch requests waiting to be served", registry=r
        )

    def track_depth(self, inbox: Callable[[], int], fetch: Callable[[], int]) -> None:
        self.inbox_depth.set_function(lambda: float(inbox()))
        self.fetch_depth.set_function(lambda: float(fetch()))

    def bad_count(self, kind: str, reason: str) -> float:
        """Current value of one bad-message counter (for health views and tests)."""
        value = self.registry.get_sample_value(
            f"{PREFIX}_bad_messages_total", {"kind": kind, "reason": reason}
        )
        return value or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
