"""Users, roles, console sessions, API tokens, and the FastAPI dependencies that check them.

* Passwords: argon2id (``argon2-cffi``); the hash, never the password, is stored.
* Console sessions: a random cookie (HttpOnly, SameSite=Lax); the DB keeps its sha256,
  the user, an expiry and the session's CSRF token.
* API tokens (CLI, scripts): ``jf_`` + 256 random bits, shown once, stored as sha256,
  revocable. Sent as ``Authorization: Bearer ...``.
* REST: reads need ``viewer``, mutations ``operator``, user/token/audit routes ``admin``.
  With ``JETFLEET_AUTH_ENABLED=false`` everything is open (tests, the demo).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fleet_server.auth_models import USER_NAME_PATTERN, ApiToken, Role, User, WebSession
from fleet_server.db import create_tables
from fleet_server.deps import ContextDep
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError

SESSION_COOKIE = "jetfleet_session"
SESSION_TTL_S = 12 * 3600.0
TOKEN_PREFIX = "jf_"  # noqa: S105 (a prefix, not a secret)
MIN_PASSWORD_LENGTH = 8
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANONYMOUS = "anonymous"

_hasher = PasswordHasher()
# Verified against when the user does not exist, so both paths cost one argon2 run.
_DUMMY_HASH = _hasher.hash("jetfleet-no-such-user")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (or ``anonymous`` with auth off), their role, and how."""

    name: str
    role: Role
    via: str  # "api" | "console"
    user_id: int | None = None
    csrf_token: str | None = None  # console sessions only

    def allows(self, needed: Role) -> bool:
        return self.role.allows(needed)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# -- passwords and users ---------------------------------------------------------------
def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def check_new_user(name: str, password: str, role: str) -> Role:
    """Validate what :func:`create_user` gets; the role as a :class:`Role`."""
    if not re.match(USER_NAME_PATTERN, name):
        raise InvalidInputError(
            f"user name {name!r} must be 1-64 letters, digits, '_', '.', '@', '-'"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    try:
        return Role(role)
    except ValueError as exc:
        roles = ", ".join(r.value for r in Role)
        raise InvalidInputError(f"role {role!r} is not one of {roles}") from exc


def add_user(session: Session, name: str, password: str, role: str) -> User:
    """Create a user in ``session`` and commit; :class:`ConflictError` if the name is taken."""
    checked = check_new_user(name, password, role)
    if session.exec(select(User).where(User.name == name)).first() is not None:
        raise ConflictError(f"user {name!r} already exists")
    user = User(
        name=name, password_hash=hash_password(password), role=checked.value, created_at=time.time()
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError(f"user {name!r} already exists") from exc
    session.refresh(user)
    return user


def create_user(engine: Engine, name: str, password: str, role: str = "viewer") -> User:
    """Create a user (e.g. the first admin, from ``jetfleet user create``); tables made if new."""
    create_tables(engine)
    with Session(engine) as session:
        return add_user(session, name, password, role)


def update_user(
    session: Session, user_id: int, role: str | None = None, disabled: bool | None = None
) -> User:
    """Change a user's role or disable/enable them; disabling ends their sessions."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} does not exist")
    if role is not None:
        user.role = check_new_user(user.name, "x" * MIN_PASSWORD_LENGTH, role).value
    if disabled is not None:
        user.disabled = disabled
        if disabled:
            for web in session.exec(select(WebSession).where(WebSession.user_id == user_id)):
                session.delete(web)
    session.add(user)
    session.commit()
    session.refresh(user)
    return user


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The enabled user with this name and password, or None (same cost either way)."""
    user: User | None = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return None
    if not verify_password(user.password_hash, password) or user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        session.add(user)
        session.commit()
    return user


# -- console sessions ------------------------------------------------------------------
def start_session(session: Session, user: User, now: float | None = None) -> str:
    """A new console session for ``user``; returns the cookie value (stored hashed)."""
    assert user.id is not None
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            token_hash=sha256_hex(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + SESSION_TTL_S,
        )
    )
    for old in session.exec(select(WebSession).where(col(WebSession.expires_at) < now)):
        session.delete(old)
    session.commit()
    return token


def end_session(session: Session, cookie: str) -> None:
    web = session.get(WebSession, sha256_hex(cookie))
    if web is not None:
        session.delete(web)
        session.commit()


def session_principal(session: Session, cookie: str, now: float | None = None) -> Principal | None:
    """The console user behind a session cookie, or None if unknown, expired or disabled."""
    now = time.time() if now is None else now
    web = session.get(WebSession, sha256_hex(cookie))
    if web is None or web.expires_at <= now:
        return None
    user = session.get(User, web.user_id)
    if user is None or user.disabled:
        return None
    return Principal(user.name, Role(user.role), "console", user.id, web.csrf_token)


# -- API tokens ------------------------------------------------------------------------
def issue_token(session: Session, user: User, name: str) -> tuple[ApiToken, str]:
    """A new API token for ``user``: (the stored row, the token itself, shown once)."""
    assert user.id is not None
    if not name.strip() or len(name) > 64:
        raise InvalidInputError("token name must be 1-64 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id,
        name=name.strip(),
        token_hash=sha256_hex(token),
        prefix=token[:10],
        created_at=time.time(),
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, token


def create_api_token(engine: Engine, user_name: str, token_name: str) -> str:
    """Issue an API token for an existing user (``jetfleet token create``); the token."""
    create_tables(engine)
    with Session(engine) as session:
        user = session.exec(select(User).where(User.name == user_name)).first()
        if user is None:
            raise NotFoundError(f"user {user_name!r} does not exist")
        return issue_token(session, user, token_name)[1]


def revoke_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"API token {token_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = time.time()
        session.add(row)
        session.commit()
        session.refresh(row)
    return row


def token_principal(session: Session, token: str) -> Principal | None:
    """The user behind a bearer token, or None if unknown, revoked or the user disabled."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == sha256_hex(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    now = time.time()
    if row.last_used_at is None or now - row.last_used_at > 60:  # cheap "last used"
        row.last_used_at = now
        session.add(row)
        session.commit()
    return Principal(user.name, Role(user.role), "api", user.id)


# -- dependencies ----------------------------------------------------------------------
def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def forbidden(principal: Principal, needed: Role) -> HTTPException:
    return HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"{principal.name} is {principal.role.value}; this needs {needed.value}",
    )


def api_principal(request: Request, context: ContextDep) -> Principal:
    """The bearer token's user (401 without a valid one); open when auth is disabled."""
    if not context.settings.auth_enabled:
        principal = Principal(ANONYMOUS, Role.ADMIN, "api")
    else:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("missing API token (Authorization: Bearer ...)")
        with Session(context.engine) as session:
            found = token_principal(session, token.strip())
        if found is None:
            raise _unauthorized("invalid or revoked API token")
        principal = found
    request.state.principal = principal  # read by the audit middleware
    return principal


def authorize_api(
    request: Request, principal: Annotated[Principal, Depends(api_principal)]
) -> Principal:
    """Router-wide REST check: reads need viewer, anything else operator."""
    needed = Role.VIEWER if request.method in SAFE_METHODS else Role.OPERATOR
    if not principal.allows(needed):
        raise forbidden(principal, needed)
    return principal


def require_role(needed: Role) -> Callable[[Principal], Principal]:
    """A dependency: the REST caller, who must hold at least ``needed``."""

    def check(principal: Annotated[Principal, Depends(api_principal)]) -> Principal:
        if not principal.allows(needed):
            raise forbidden(principal, needed)
        return principal

    return check


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


__all__ = [
    "ANONYMOUS",
    "SESSION_COOKIE",
    "Principal",
    "Role",
    "add_user",
    "api_principal",
    "authenticate",
    "authorize_api",
    "create_api_token",
    "create_user",
    "csrf_matches",
    "end_session",
    "hash_password",
    "issue_token",
    "require_role",
    "revoke_token",
    "session_principal",
    "start_session",
    "token_principal",
    "update_user",
    "verify_password",
]
