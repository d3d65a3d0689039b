"""``/devices``: the fleet inventory (auto-registered from state messages, or pre-registered)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from fleet_server.commands import CommandCreate, DeviceCommandPublic, recent_commands
from fleet_server.deps import CommandsDep, SessionDep
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.models import Assignment, AssignmentPublic, Device, DeviceCreate, DevicePublic

router = APIRouter(prefix="/devices", tags=["devices"])


def parse_tag_filters(tags: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"tag filter {tag!r} must look like key=value")
        pairs.append((key, value))
    return pairs


@router.get("", response_model=list[DevicePublic])
def list_devices(
    session: SessionDep,
    tag: Annotated[list[str], Query(description="key=value; repeat to AND several")] = [],  # noqa: B006
    online: bool | None = None,
    release: Annotated[str | None, Query(description="active release name")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    query = select(Device)
    for key, value in parse_tag_filters(tag):
        query = query.where(Device.__table__.c.tags[key].as_string() == value)  # type: ignore[attr-defined]
    if online is not None:
        query = query.where(Device.online == online)
    if release is not None:
        query = query.where(Device.active_release == release)
    return session.exec(query.order_by(col(Device.id)).offset(offset).limit(limit)).all()


@router.post("", response_model=DevicePublic, status_code=status.HTTP_201_CREATED)
def register_device(body: DeviceCreate, session: SessionDep) -> Any:
    if session.get(Device, body.id) is not None:
        raise ConflictError(f"device {body.id!r} is already registered")
    device = Device(id=body.id, tags=dict(body.tags), registered_at=time.time())
    session.add(device)
    try:
        session.commit()
    except IntegrityError as exc:  # registered by its first state message meanwhile
        raise ConflictError(f"device {body.id!r} is already registered") from exc
    session.refresh(device)
    return device


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, session: SessionDep) -> Any:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    return device


@router.get("/{device_id}/assignments", response_model=list[AssignmentPublic])
def device_assignments(
    device_id: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Any:
    """The device's assignments, newest (highest sequence) first."""
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    return session.exec(
        select(Assignment)
        .where(Assignment.device_id == device_id)
        .order_by(col(Assignment.sequence).desc())
        .limit(limit)
    ).all()


@router.post(
    "/{device_id}/commands", response_model=DeviceCommandPublic, status_code=status.HTTP_201_CREATED
)
def send_command(device_id: str, body: CommandCreate, commands: CommandsDep) -> Any:
    """Sign and publish a command on ``d/{id}/cmd`` with the device's next command sequence."""
    return commands.publish_command(device_id, body.command, body.args)


@router.get("/{device_id}/commands", response_model=list[DeviceCommandPublic])
def device_commands(
    device_id: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Any:
    """The device's commands, newest (highest sequence) first."""
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    return recent_commands(session, device_id, limit)
