"""Self-heal configuration: the ``watchdog:`` and ``serving:`` sections of ``agent.yaml``.

``watchdog.rules`` is a list of declarative rules, told apart by ``metric``:

* ``error_rate`` / ``p95_latency_ratio`` (action ``revert``) — over the active trial
  engine's requests in the last ``window_s``, once it has ``min_requests``; the ratio is
  against the known-good engine's p95 measured before the swap.
* ``runtime_crash`` (action ``restart_then_revert``) — reload the engine at most
  ``max_restarts`` times within ``within_s``, then revert (trial) or wait (known-good).
* ``gpu_temp_c`` (action ``throttle``) — while over the limit for ``window_s``, the
  admission rate is multiplied by ``throttle_factor``; restored once under it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Op = Literal[">", ">=", "<", "<="]
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def name(self) -> str:
        metric: str = getattr(self, "metric", "?")
        op, threshold = getattr(self, "op", None), getattr(self, "threshold", None)
        if op is None or threshold is None:
            return metric
        return f"{metric} {op} {threshold:g}"


class RequestRule(_Rule):
    """Error rate or p95-latency ratio of the trial engine; reverts to known-good."""

    metric: Literal["error_rate", "p95_latency_ratio"]
    op: Op = ">"
    threshold: float = Field(ge=0)
    window_s: float = Field(default=30.0, gt=0, le=3600)
    min_requests: int = Field(default=20, ge=1, le=1_000_000)
    action: Literal["revert"] = "revert"


class CrashRule(_Rule):
    """Runtime crashes: restart the runtime, then revert past ``max_restarts``."""

    metric: Literal["runtime_crash"]
    max_restarts: int = Field(default=3, ge=0, le=100)
    within_s: float = Field(default=300.0, gt=0, le=86_400)
    action: Literal["restart_then_revert"] = "restart_then_revert"


class GpuTempRule(_Rule):
    """GPU temperature: lower the admission rate while over the limit."""

    metric: Literal["gpu_temp_c"]
    op: Op = ">"
    threshold: float = Field(gt=0, le=200)
    window_s: float = Field(default=10.0, gt=0, le=3600)
    action: Literal["throttle"] = "throttle"
    throttle_factor: float = Field(default=0.5, gt=0, le=1)


Rule = Annotated[RequestRule | CrashRule | GpuTempRule, Field(discriminator="metric")]


def default_rules() -> list[RequestRule | CrashRule | GpuTempRule]:
    return [
        RequestRule(metric="error_rate", threshold=0.05, window_s=30, min_requests=20),
        RequestRule(metric="p95_latency_ratio", threshold=2.0, window_s=60, min_requests=20),
        CrashRule(metric="runtime_crash", max_restarts=3, within_s=300),
        GpuTempRule(metric="gpu_temp_c", threshold=85, window_s=10),
    ]


class WatchdogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval_s: float = Field(default=1.0, gt=0, le=60)
    rules: list[Rule] = Field(default_factory=default_rules)


class ServingConfig(BaseModel):
    """Local API admission and dynamic batching (``serving:``; ``api_host/api_port`` stay flat)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(default=8, ge=1, le=1024)
    max_queue_delay_ms: float = Field(default=2.0, ge=0, le=1000)
    max_queue: int = Field(default=256, ge=1, le=100_000)
    workers: int = Field(default=2, ge=1, le=64)
    rate_limit_rps: float | None = Field(default=None, gt=0, le=1_000_000)
    rate_limit_burst: int | None = Field(default=None, ge=1, le=1_000_000)
