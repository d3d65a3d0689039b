"""``/assignments``: send a release to devices (a new, higher sequence per device)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, status
from sqlalchemy.exc import IntegrityError

from fleet_server.assignments import issue_assignments
from fleet_server.deps import ContextDep, SessionDep
from fleet_server.errors import ConflictError
from fleet_server.models import AssignmentCreate, AssignmentPublic

router = APIRouter(prefix="/assignments", tags=["assignments"])


@router.post("", response_model=list[AssignmentPublic], status_code=status.HTTP_201_CREATED)
def create_assignments(body: AssignmentCreate, session: SessionDep, context: ContextDep) -> Any:
    """Store one assignment per device, then publish each retained on ``d/{id}/desired``.

    All-or-nothing: an unknown release or device id is a 404 and nothing is stored.
    """
    with context.assign_lock:
        try:
            issued = issue_assignments(
                session, body.release, body.device_ids, context.settings.block_size, time.time()
            )
        except IntegrityError as exc:  # another server replica issued the same sequence
            session.rollback()
            raise ConflictError("a concurrent assignment won the race; retry") from exc
        context.gateway.publish_desired(issued)
    return issued
