"""What the console pages show: status classification, summaries and chart series."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from fleet_server.models import Assignment, Device, Event, Release, Telemetry
from fleet_server.rollout_models import (
    Rollout,
    RolloutCreate,
    RolloutDevice,
    format_selector,
)
from fleet_server.rollouts import gate_decisions, rollout_devices, wave_plan

FAILURE_TYPES = ("activation.reverted", "activation.failed", "ota.failed", "security.rejected")
ENGINE_TYPES = (
    "activation.staged",
    "activation.testing",
    "activation.trial",
    "activation.committed",
    "activation.failed",
    "activation.reverted",
    "selfheal.action",
)
QUIET_TYPES = ("ota.progress",)  # too chatty for the overview
DEGRADED_WINDOW_S = 15 * 60
WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
MAX_POINTS = 1500
STATUSES = ("online", "degraded", "offline")


@dataclass(frozen=True)
class DeviceRow:
    device: Device
    status: str  # online | degraded | offline
    reason: str


def recent_failures(session: Session, since: float) -> dict[str, Event]:
    """device id → its newest failure event since ``since``."""
    rows = session.exec(
        select(Event)
        .where(col(Event.type).in_(FAILURE_TYPES), col(Event.ts) >= since)
        .order_by(col(Event.ts))
    ).all()
    return {e.device_id: e for e in rows}


def classify(device: Device, failure: Event | None) -> DeviceRow:
    if not device.online:
        return DeviceRow(device, "offline", "")
    if device.serving is False:
        return DeviceRow(device, "degraded", "not serving")
    if failure is not None:
        return DeviceRow(device, "degraded", f"{failure.type}: {failure.message}".strip(": "))
    return DeviceRow(device, "online", "")


def device_rows(
    session: Session, filters: Mapping[str, str] | None = None, now: float | None = None
) -> list[DeviceRow]:
    """Devices matching ``filters`` (search, tag ``k=v``, status, release, profile)."""
    now = time.time() if now is None else now
    filters = filters or {}
    search, tag, status = (
        filters.get("search", ""),
        filters.get("tag", ""),
        filters.get("status", ""),
    )
    release, profile = filters.get("release", ""), filters.get("profile", "")
    query = select(Device)
    if search:
        query = query.where(col(Device.id).contains(search.strip()))
    key, sep, value = tag.partition("=")
    if sep and key:
        query = query.where(Device.__table__.c.tags[key.strip()].as_string() == value.strip())  # type: ignore[attr-defined]
    if release:
        query = query.where(Device.active_release == release)
    if profile:
        query = query.where(Device.profile == profile)
    failures = recent_failures(session, now - DEGRADED_WINDOW_S)
    rows = [classify(d, failures.get(d.id)) for d in session.exec(query.order_by(col(Device.id)))]
    return [r for r in rows if not status or r.status == status]


def filter_choices(session: Session) -> dict[str, list[str]]:
    releases = session.exec(select(Device.active_release).distinct()).all()
    profiles = session.exec(select(Device.profile).distinct()).all()
    return {
        "releases": sorted(r for r in releases if r),
        "profiles": sorted(p for p in profiles if p),
    }


def overview(session: Session, now: float | None = None) -> dict[str, Any]:
    rows = device_rows(session, now=now)
    counts = Counter(r.status for r in rows)
    running = Counter(r.device.active_release for r in rows if r.device.active_release)
    releases = session.exec(select(Release).order_by(col(Release.created_at).desc())).all()
    events = session.exec(
        select(Event)
        .where(col(Event.type).not_in(QUIET_TYPES))
        .order_by(col(Event.ts).desc(), col(Event.id).desc())
        .limit(15)
    ).all()
    return {
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "total": len(rows),
        "degraded": [r for r in rows if r.status == "degraded"],
        "releases": [(r, running.get(r.name, 0)) for r in releases[:8]],
        "release_total": len(releases),
        "events": events,
        "failure_types": FAILURE_TYPES,
    }


def events_for(
    session: Session,
    device_id: str = "",
    type_: str = "",
    since: float | None = None,
    types: tuple[str, ...] = (),
    limit: int = 200,
) -> list[Event]:
    """Matching events, newest first. ``type_`` ending in ``.`` matches a prefix."""
    query = select(Event)
    if device_id:
        query = query.where(Event.device_id == device_id)
    if type_.endswith("."):
        query = query.where(col(Event.type).startswith(type_))
    elif type_:
        query = query.where(Event.type == type_)
    if types:
        query = query.where(col(Event.type).in_(types))
    if since is not None:
        query = query.where(col(Event.ts) >= since)
    query = query.order_by(col(Event.ts).desc(), col(Event.id).desc()).limit(limit)
    return list(session.exec(query).all())


def event_types(session: Session) -> list[str]:
    return sorted(t for t in session.exec(select(Event.type).distinct()).all() if t)


def rollback_target(session: Session, device: Device) -> str | None:
    """The release an operator rollback assigns: known-good, else the latest earlier release
    the device ran (not one it failed or reverted from); None if there is none."""
    current = device.active_release
    if device.known_good_release and device.known_good_release != current:
        return device.known_good_release
    history = session.exec(
        select(Assignment.release, Assignment.status)
        .where(Assignment.device_id == device.id)
        .order_by(col(Assignment.sequence).desc())
        .limit(50)
    ).all()
    for name, status in history:
        # never "roll back" onto a release this device failed or reverted from
        if name != current and status not in ("failed", "reverted"):
            exists = session.exec(select(Release.id).where(Release.name == name)).first()
            if exists is not None:
                return str(name)
    return None


def _mark_kind(event_type: str) -> str:
    return {
        "activation.reverted": "revert",
        "activation.failed": "failed",
        "activation.committed": "commit",
        "activation.trial": "activation",
        "selfheal.action": "selfheal",
    }.get(event_type, "other")


def series(
    session: Session, device_id: str, window_s: float, now: float | None = None
) -> dict[str, Any]:
    """Chart data for one device: aligned columns over the window, and event marks."""
    now = time.time() if now is None else now
    since = now - window_s
    rows = list(
        reversed(
            session.exec(
                select(Telemetry)
                .where(Telemetry.device_id == device_id, col(Telemetry.ts) >= since)
                .order_by(col(Telemetry.ts).desc())
                .limit(20_000)
            ).all()
        )
    )
    step = max(1, len(rows) // MAX_POINTS)
    picked = rows[::step]
    out: dict[str, list[Any]] = {
        k: []
        for k in ("t", "cpu", "mem", "gpu_load", "gpu_temp", "gpu_power_w", "rate", "p95", "errors")
    }
    prev_ts: float | None = None
    for row in picked:
        out["t"].append(row.ts)
        out["cpu"].append(row.cpu_pct)
        out["mem"].append(row.mem_pct)
        out["gpu_load"].append(row.gpu_load_pct)
        out["gpu_temp"].append(row.gpu_temp_c)
        out["gpu_power_w"].append(None if row.gpu_power_mw is None else row.gpu_power_mw / 1000)
        interval = (row.ts - prev_ts) if prev_ts is not None else None
        out["rate"].append(row.inference_count / interval if interval and interval > 0 else None)
        out["p95"].append(row.p95_ms)
        out["errors"].append(row.inference_errors)
        prev_ts = row.ts
    marks = [
        {
            "t": e.ts,
            "kind": _mark_kind(e.type),
            "label": f"{e.type} {e.release or ''} {e.message}".strip(),
        }
        for e in reversed(events_for(session, device_id, since=since, types=ENGINE_TYPES))
    ]
    return {
        "window": [since, now],
        "gpu": any(v is not None for v in out["gpu_load"] + out["gpu_temp"] + out["gpu_power_w"]),
        "samples": len(rows),
        "marks": marks,
        **out,
    }


# -- rollouts --------------------------------------------------------------------------
ROLLOUT_ACTIONS = {  # console action → (statuses it is offered in, button label)
    "pause": (("pending", "running"), "Pause"),
    "resume": (("paused",), "Resume"),
    "abort": (("pending", "running", "paused"), "Abort"),
    "rollback": (
        ("pending", "running", "paused", "halted", "aborted", "completed"),
        "Roll back",
    ),
}


@dataclass(frozen=True)
class RolloutDeviceView:
    row: RolloutDevice
    device: Device | None
    status: str  # the rollout assignment's status now (the controller stops mirroring it
    # once the rollout is finished, so a trial that commits later still shows here)


def _device_status(
    rollout: Rollout,
    row: RolloutDevice,
    live: Mapping[tuple[str, int], str],
    devices: Mapping[str, Device],
) -> str:
    """The rollout assignment's status now; ``committed`` once the device's known-good is
    the release (agents do not put the sequence on their commit event)."""
    status = live.get((row.device_id, row.sequence), row.status) if row.sequence else row.status
    device = devices.get(row.device_id)
    if (
        status == "trial"
        and device is not None
        and device.known_good_sha256 == rollout.release_sha256
    ):
        return "committed"
    return status


def rollout_context(session: Session, rollout: Rollout) -> dict[str, Any]:
    """Everything the rollout detail page shows: waves, devices and gate decisions."""
    assert rollout.id is not None
    gates = gate_decisions(session, rollout.id)
    waves = wave_plan(rollout, gates)
    rows = rollout_devices(session, rollout.id)
    devices = {
        d.id: d
        for d in session.exec(
            select(Device).where(col(Device.id).in_([r.device_id for r in rows]))
        ).all()
    }
    live: dict[tuple[str, int], str] = {}
    sequences = [r.sequence for r in rows if r.sequence is not None]
    if sequences:
        for a in session.exec(
            select(Assignment).where(
                col(Assignment.device_id).in_(list(devices)),
                col(Assignment.sequence).in_(sequences),
            )
        ).all():
            live[(a.device_id, a.sequence)] = a.status
    shown = [
        RolloutDeviceView(r, devices.get(r.device_id), _device_status(rollout, r, live, devices))
        for r in rows
    ]
    counts = Counter(v.status for v in shown)
    return {
        "rollout": rollout,
        "waves": waves,
        "rows": shown,
        "counts": dict(sorted(counts.items())),
        "gates": list(reversed(gates)),
        "actions": [
            (name, label)
            for name, (allowed, label) in ROLLOUT_ACTIONS.items()
            if rollout.status in allowed
        ],
        "selector_text": format_selector(rollout.selector),
    }


def rollout_list(session: Session) -> list[Rollout]:
    return list(session.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(200)).all())


ROLLOUT_FIELDS = (
    "release",
    "selector",
    "waves",
    "bake_s",
    "wave_timeout_s",
    "max_failures",
    "max_failure_rate",
    "min_executions",
    "max_reverts",
    "max_p95_ratio",
    "max_error_rate",
)


def rollout_form_defaults() -> dict[str, Any]:
    """The create form's initial values: the API's defaults, as the form shows them."""
    fields = RolloutCreate.model_fields
    values: dict[str, Any] = {
        name: ""
        if fields[name].is_required()
        else f"{fields[name].default:g}"
        if isinstance(fields[name].default, float)
        else str(fields[name].default)
        for name in ROLLOUT_FIELDS
    }
    values["auto_rollback"] = bool(fields["auto_rollback"].default)
    return values


def rollout_form_choices(session: Session) -> dict[str, Any]:
    devices = session.exec(select(Device)).all()
    tags = sorted({f"{k}={v}" for d in devices for k, v in d.tags.items()})
    releases = session.exec(select(Release.name).order_by(col(Release.created_at).desc())).all()
    return {"release_names": list(releases), "tag_choices": tags, "device_total": len(devices)}
