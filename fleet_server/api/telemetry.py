"""``/telemetry``: one device's raw samples."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col, select

from fleet_server.deps import SessionDep
from fleet_server.errors import NotFoundError
from fleet_server.models import Device, Telemetry, TelemetryPublic

router = APIRouter(prefix="/telemetry", tags=["telemetry"])


@router.get("", response_model=list[TelemetryPublic])
def list_telemetry(
    session: SessionDep,
    device_id: str,
    since: Annotated[float | None, Query(description="UNIX seconds, inclusive")] = None,
    until: Annotated[float | None, Query(description="UNIX seconds, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> Any:
    """The most recent ``limit`` samples of the device in the window, oldest first."""
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    query = select(Telemetry).where(Telemetry.device_id == device_id)
    if since is not None:
        query = query.where(col(Telemetry.ts) >= since)
    if until is not None:
        query = query.where(col(Telemetry.ts) < until)
    newest_first = query.order_by(col(Telemetry.ts).desc(), col(Telemetry.seq).desc())
    rows = session.exec(newest_first.limit(limit))
    return list(reversed(rows.all()))
