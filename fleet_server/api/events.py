"""``/events``: what devices reported (OTA progress, activation, self-heal, rejections)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col, select

from fleet_server.deps import SessionDep
from fleet_server.models import Event, EventPublic

router = APIRouter(prefix="/events", tags=["events"])


@router.get("", response_model=list[EventPublic])
def list_events(
    session: SessionDep,
    device_id: str | None = None,
    type: Annotated[str | None, Query(description="exact event type, e.g. ota.failed")] = None,
    since: Annotated[float | None, Query(description="UNIX seconds, inclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> Any:
    """The most recent ``limit`` matching events, oldest first."""
    query = select(Event)
    if device_id is not None:
        query = query.where(Event.device_id == device_id)
    if type is not None:
        query = query.where(Event.type == type)
    if since is not None:
        query = query.where(col(Event.ts) >= since)
    rows = session.exec(query.order_by(col(Event.ts).desc(), col(Event.id).desc()).limit(limit))
    return list(reversed(rows.all()))
