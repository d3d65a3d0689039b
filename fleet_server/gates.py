"""The gate between rollout waves: reach, failure thresholds, reverts and inference health.

:func:`evaluate_gate` reads the database and returns a :class:`Gate` — ``wait``, ``pass``
or ``fail`` — with every number it used, so each decision can be stored and explained.

Rules, in order:

1. *Reverts*: ``activation.reverted`` events, and ``selfheal.action`` events whose action
   is a revert, about this rollout's release on any device of the rollout so far; more
   than ``max_reverts`` fails.
2. *Failures* (AWS IoT abort-criteria style): a device failed when its assignment went to
   failed/reverted/rejected or it sent ``ota.failed``/``activation.failed``/
   ``activation.reverted`` for it. Cumulative over the rollout. Judged only once at least
   ``min_executions`` devices have finished (reached trial/committed, or failed): more
   than ``max_failures`` or a failure rate above ``max_failure_rate`` fails.
3. *Reach*: every device of the current wave finished within ``wave_timeout_s`` of the
   wave being issued; otherwise the gate waits, then fails at the timeout.
4. *Health*, ``bake_s`` after the whole wave finished: over the wave's non-failed devices,
   the 95th percentile of their ``p95_ms`` samples on the new release against the same
   devices' samples on their previous release (before the assignment); a ratio above
   ``max_p95_ratio`` fails. The error rate (errors / inferences) on the new release fails
   when it is above ``max_error_rate`` *and* above the baseline's. With no telemetry on the
   new release the health check is recorded as not judged and the gate passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from fleet_server.models import Event, Telemetry
from fleet_server.rollout_models import Rollout, RolloutDevice

FAILURE_EVENTS = ("ota.failed", "activation.failed", "activation.reverted")
REVERT_EVENT = "activation.reverted"
SELF_HEAL_EVENT = "selfheal.action"
FAILED_STATUSES = ("failed", "reverted", "rejected")
REACHED_STATUSES = ("trial", "committed")
BASELINE_WINDOW_S = 86400.0  # baseline samples: the day before the assignment


@dataclass(frozen=True)
class Gate:
    outcome: str  # "wait" | "ready" (wave finished, baking) | "pass" | "fail"
    reason: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def percentile(values: Sequence[float], pct: float = 95.0) -> float | None:
    """Nearest-rank percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _about(event: Event, rollout: Rollout, row: RolloutDevice) -> bool:
    """Whether ``event`` concerns this rollout's assignment on ``row``'s device."""
    if event.sequence is not None:
        return row.sequence is not None and event.sequence == row.sequence
    return event.sha256 == rollout.release_sha256 or (
        event.sha256 is None and event.release == rollout.release
    )


def _is_revert(event: Event) -> bool:
    if event.type == REVERT_EVENT:
        return True
    action = str(event.data.get("action", "")) if isinstance(event.data, dict) else ""
    return event.type == SELF_HEAL_EVENT and "revert" in (action or event.message).lower()


def _events(
    session: Session, rollout: Rollout, rows: Sequence[RolloutDevice]
) -> dict[str, list[Event]]:
    by_device = {r.device_id: r for r in rows}
    found: dict[str, list[Event]] = {d: [] for d in by_device}
    if not by_device:
        return found
    events = session.exec(
        select(Event).where(
            col(Event.device_id).in_(list(by_device)),
            col(Event.type).in_([*FAILURE_EVENTS, SELF_HEAL_EVENT]),
        )
    ).all()
    for event in events:
        row = by_device[event.device_id]
        if row.sequence is not None and _about(event, rollout, row):
            found[event.device_id].append(event)
    return found


def _health(session: Session, rollout: Rollout, rows: Sequence[RolloutDevice]) -> dict[str, Any]:
    new_p95: list[float] = []
    base_p95: list[float] = []
    new_count = new_errors = base_count = base_errors = 0
    for row in rows:
        samples = session.exec(
            select(Telemetry)
            .where(Telemetry.device_id == row.device_id)
            .where(col(Telemetry.ts) >= row.issued_at - BASELINE_WINDOW_S)
        ).all()
        for s in samples:
            if s.sha256 == rollout.release_sha256 or (
                s.sha256 is None and s.release == rollout.release
            ):
                new_count, new_errors = (
                    new_count + s.inference_count,
                    new_errors + s.inference_errors,
                )
                if s.p95_ms is not None:
                    new_p95.append(s.p95_ms)
            elif (
                s.ts < row.issued_at
                and row.previous_release is not None
                and (
                    s.sha256 == row.previous_sha256
                    or (s.sha256 is None and s.release == row.previous_release)
                )
            ):
                base_count, base_errors = (
                    base_count + s.inference_count,
                    base_errors + s.inference_errors,
                )
                if s.p95_ms is not None:
                    base_p95.append(s.p95_ms)
    p95_new, p95_base = percentile(new_p95), percentile(base_p95)
    return {
        "samples_new": len(new_p95),
        "samples_baseline": len(base_p95),
        "inferences_new": new_count,
        "inferences_baseline": base_count,
        "p95_new_ms": p95_new,
        "p95_baseline_ms": p95_base,
        "p95_ratio": (p95_new / p95_base) if p95_new is not None and p95_base else None,
        "error_rate_new": (new_errors / new_count) if new_count else None,
        "error_rate_baseline": (base_errors / base_count) if base_count else None,
    }


def evaluate_gate(
    session: Session, rollout: Rollout, rows: Sequence[RolloutDevice], now: float
) -> Gate:
    """Judge the current wave of ``rollout`` (``rows``: all its devices so far)."""
    wave_rows = [r for r in rows if r.wave == rollout.current_wave]
    events = _events(session, rollout, rows)
    failed = sorted(
        r.device_id
        for r in rows
        if r.status in FAILED_STATUSES or any(e.type in FAILURE_EVENTS for e in events[r.device_id])
    )
    reverts = sum(1 for evs in events.values() if any(_is_revert(e) for e in evs))
    finished = [r for r in rows if r.status in REACHED_STATUSES or r.device_id in failed]
    pending = sorted(
        r.device_id
        for r in wave_rows
        if r.status not in REACHED_STATUSES and r.device_id not in failed
    )
    rate = len(failed) / len(finished) if finished else 0.0
    numbers: dict[str, Any] = {
        "wave": rollout.current_wave,
        "devices": len(wave_rows),
        "reached": sum(1 for r in wave_rows if r.status in REACHED_STATUSES),
        "executions": len(finished),
        "failures": len(failed),
        "failed_devices": failed,
        "failure_rate": rate,
        "reverts": reverts,
        "pending_devices": pending,
    }
    if reverts > rollout.max_reverts:
        return Gate("fail", f"{reverts} revert(s) > max_reverts {rollout.max_reverts}", numbers)
    if len(finished) >= rollout.min_executions:
        if len(failed) > rollout.max_failures:
            reason = f"{len(failed)} failure(s) > max_failures {rollout.max_failures}"
            return Gate("fail", f"{reason} ({', '.join(failed)})", numbers)
        if rate > rollout.max_failure_rate:
            reason = f"failure rate {rate:.3f} > max_failure_rate {rollout.max_failure_rate}"
            return Gate("fail", reason, numbers)
    if pending:
        issued_at = rollout.wave_issued_at or now
        if now - issued_at > rollout.wave_timeout_s:
            reason = (
                f"{len(pending)} device(s) did not reach trial within "
                f"{rollout.wave_timeout_s:g}s: {', '.join(pending)}"
            )
            return Gate("fail", reason, numbers)
        return Gate("wait", "waiting for devices to reach trial", numbers)
    if rollout.wave_ready_at is None or now - rollout.wave_ready_at < rollout.bake_s:
        return Gate("ready", "baking", numbers)
    healthy = [r for r in wave_rows if r.device_id not in failed]
    numbers.update(_health(session, rollout, healthy))
    ratio, err = numbers["p95_ratio"], numbers["error_rate_new"]
    if ratio is not None and ratio > rollout.max_p95_ratio:
        return Gate(
            "fail",
            f"p95 latency {numbers['p95_new_ms']:g} ms is {ratio:.2f}x the baseline "
            f"{numbers['p95_baseline_ms']:g} ms (max {rollout.max_p95_ratio:g}x)",
            numbers,
        )
    base_err = numbers["error_rate_baseline"]
    if err is not None and err > rollout.max_error_rate and (base_err is None or err > base_err):
        return Gate(
            "fail",
            f"error rate {err:.3f} > max_error_rate {rollout.max_error_rate:g} "
            f"(baseline {base_err if base_err is not None else 'none'})",
            numbers,
        )
    if numbers["samples_new"] == 0 and numbers["inferences_new"] == 0:
        return Gate("pass", "no inference telemetry on the new release; health not judged", numbers)
    return Gate("pass", "healthy", numbers)
