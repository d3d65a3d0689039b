"""``/telemetry``: one device's samples, raw or as 5-minute rollups (fleet_server/retention.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet_server.deps import SessionDep
from fleet_server.errors import NotFoundError
from fleet_server.models import Device, Telemetry, TelemetryPublic
from fleet_server.retention import TelemetryRollup, TelemetryRollupPublic, to_public

router = APIRouter(prefix="/telemetry", tags=["telemetry"])


def _raw(
    session: Session, device_id: str, since: float | None, until: float | None, limit: int
) -> list[TelemetryPublic]:
    query = select(Telemetry).where(Telemetry.device_id == device_id)
    if since is not None:
        query = query.where(col(Telemetry.ts) >= since)
    if until is not None:
        query = query.where(col(Telemetry.ts) < until)
    newest_first = query.order_by(col(Telemetry.ts).desc(), col(Telemetry.seq).desc())
    rows = session.exec(newest_first.limit(limit)).all()
    return [TelemetryPublic.model_validate(r) for r in reversed(rows)]


def _rollups(
    session: Session, device_id: str, since: float | None, until: float | None, limit: int
) -> list[TelemetryRollupPublic]:
    query = select(TelemetryRollup).where(TelemetryRollup.device_id == device_id)
    if since is not None:
        query = query.where(col(TelemetryRollup.bucket_start) >= since)
    if until is not None:
        query = query.where(col(TelemetryRollup.bucket_start) < until)
    rows = session.exec(query.order_by(col(TelemetryRollup.bucket_start).desc()).limit(limit))
    return [to_public(r) for r in reversed(rows.all())]


@router.get("", response_model=list[TelemetryPublic | TelemetryRollupPublic])
def list_telemetry(
    session: SessionDep,
    device_id: str,
    since: Annotated[float | None, Query(description="UNIX seconds, inclusive")] = None,
    until: Annotated[float | None, Query(description="UNIX seconds, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    resolution: Annotated[
        Literal["raw", "5m", "auto"],
        Query(description="raw samples, 5-minute rollups, or auto: rollups where the raw "
              "samples were rolled up, raw after"),
    ] = "raw",
) -> Any:
    """The most recent ``limit`` points of the device in the window, oldest first.

    A rollup point has ``bucket_s`` and ``samples``; ``ts`` is its bucket start.
    """
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    if resolution == "raw":
        return _raw(session, device_id, since, until, limit)
    if resolution == "5m":
        return _rollups(session, device_id, since, until, limit)
    rolled_until = session.exec(
        select(func.max(col(TelemetryRollup.bucket_start) + col(TelemetryRollup.bucket_s))).where(
            TelemetryRollup.device_id == device_id
        )
    ).one()
    raw_since = since if rolled_until is None else max(since or rolled_until, rolled_until)
    raw = _raw(session, device_id, raw_since, until, limit)
    if rolled_until is None or len(raw) >= limit:
        return raw
    rolled_end = rolled_until if until is None else min(until, rolled_until)
    return [*_rollups(session, device_id, since, rolled_end, limit - len(raw)), *raw]
