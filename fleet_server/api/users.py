"""``/users``, ``/tokens`` and ``/audit`` (admin only): accounts, API tokens, the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel
from sqlmodel import col, select

from fleet_server.audit import list_audit
from fleet_server.auth import Principal, add_user, issue_token, require_role, revoke_token
from fleet_server.auth import update_user as change_user
from fleet_server.auth_models import (
    ApiToken,
    ApiTokenCreate,
    ApiTokenIssued,
    ApiTokenPublic,
    AuditEntryPublic,
    Role,
    User,
    UserCreate,
    UserPublic,
)
from fleet_server.deps import SessionDep
from fleet_server.errors import NotFoundError

AdminDep = Annotated[Principal, Depends(require_role(Role.ADMIN))]
router = APIRouter(tags=["users"], dependencies=[Depends(require_role(Role.ADMIN))])


class UserUpdate(BaseModel):
    role: Role | None = None
    disabled: bool | None = None


@router.get("/users", response_model=list[UserPublic])
def list_users(session: SessionDep) -> Any:
    return session.exec(select(User).order_by(col(User.name))).all()


@router.post("/users", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep) -> Any:
    return add_user(session, body.name, body.password, body.role.value)


@router.patch("/users/{user_id}", response_model=UserPublic)
def update_user(user_id: int, body: UserUpdate, session: SessionDep) -> Any:
    role = body.role.value if body.role is not None else None
    return change_user(session, user_id, role=role, disabled=body.disabled)


@router.get("/tokens", response_model=list[ApiTokenPublic])
def list_tokens(session: SessionDep) -> Any:
    return session.exec(select(ApiToken).order_by(col(ApiToken.created_at).desc())).all()


@router.post("/tokens", response_model=ApiTokenIssued, status_code=status.HTTP_201_CREATED)
def create_token(body: ApiTokenCreate, session: SessionDep, caller: AdminDep) -> Any:
    """A new token for ``user`` (default: the caller). The token is in this reply only."""
    owner_name = body.user or caller.name
    owner = session.exec(select(User).where(User.name == owner_name)).first()
    if owner is None:
        raise NotFoundError(f"user {owner_name!r} does not exist")
    row, token = issue_token(session, owner, body.name)
    return ApiTokenIssued(**row.model_dump(), token=token)


@router.delete("/tokens/{token_id}", response_model=ApiTokenPublic)
def revoke(token_id: int, session: SessionDep) -> Any:
    return revoke_token(session, token_id)


@router.get("/audit", response_model=list[AuditEntryPublic])
def audit_log(
    session: SessionDep,
    actor: str | None = None,
    action: Annotated[str | None, Query(description="substring, e.g. assignments")] = None,
    since: float | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> Any:
    """Audit rows, newest first."""
    return list_audit(session, actor, action, since, limit)
