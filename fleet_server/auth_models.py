"""Auth and audit tables: users, console sessions, API tokens, audit log.

Secrets are never stored: passwords as argon2 hashes, session and API tokens as
sha256 digests (they are 256-bit random values, so a fast hash is enough).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from sqlalchemy import JSON, Index
from sqlmodel import Field, SQLModel

USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class Role(str, Enum):
    """Roles in increasing power: each includes what the ones before it may do."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    password_hash: str = Field(max_length=256)
    role: str = Field(max_length=16)
    created_at: float
    disabled: bool = False


class UserPublic(SQLModel):
    id: int
    name: str
    role: str
    created_at: float
    disabled: bool


class UserCreate(SQLModel):
    name: str = Field(min_length=1, max_length=64, schema_extra={"pattern": USER_NAME_PATTERN})
    password: str = Field(min_length=8, max_length=1024)
    role: Role = Role.VIEWER


class WebSession(SQLModel, table=True):
    __tablename__ = "web_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True)
    csrf_token: str = Field(max_length=64)
    created_at: float
    expires_at: float = Field(index=True)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(max_length=64)
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)  # the first characters, to tell tokens apart
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


class ApiTokenPublic(SQLModel):
    id: int
    user_id: int
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class ApiTokenCreate(SQLModel):
    name: str = Field(min_length=1, max_length=64)
    user: str | None = Field(default=None, description="owner; default: the caller")


class ApiTokenIssued(ApiTokenPublic):
    token: str  # shown once, never stored


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_ts", "ts"),)

    id: int | None = Field(default=None, primary_key=True)
    ts: float
    actor: str = Field(max_length=64, index=True)
    via: str = Field(max_length=16)  # "api" | "console"
    action: str = Field(max_length=128, index=True)
    target: str = Field(default="", max_length=512)
    status: int
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class AuditEntryPublic(SQLModel):
    id: int
    ts: float
    actor: str
    via: str
    action: str
    target: str
    status: int
    details: dict[str, Any]
