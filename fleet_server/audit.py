"""The audit log: every mutating REST or console call, who made it, on what, with what result.

REST calls are recorded by :class:`AuditMiddleware` (method + route, the caller the auth
dependency found, the status, a redacted copy of a small JSON body). Console actions call
:func:`record` themselves with what the form did.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.auth_models import AuditEntry

logger = logging.getLogger(__name__)

MAX_BODY_KEPT = 4096
SECRET_KEYS = frozenset({"password", "token", "csrf_token", "secret", "new_password"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def redact(value: Any) -> Any:
    """``value`` with secret-looking keys blanked, recursively."""
    if isinstance(value, dict):
        return {k: "***" if k in SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def record(
    engine: Engine,
    actor: str,
    via: str,
    action: str,
    target: str = "",
    status: int = 200,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one audit row (its own transaction)."""
    entry = AuditEntry(
        ts=time.time(),
        actor=actor[:64],
        via=via,
        action=action[:128],
        target=target[:512],
        status=status,
        details=redact(details or {}),
    )
    with Session(engine) as session:
        session.add(entry)
        session.commit()


def list_audit(
    session: Session,
    actor: str | None = None,
    action: str | None = None,
    since: float | None = None,
    limit: int = 200,
) -> list[AuditEntry]:
    """The newest ``limit`` rows matching, newest first (``action`` is a substring)."""
    query = select(AuditEntry)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(col(AuditEntry.action).contains(action))
    if since is not None:
        query = query.where(col(AuditEntry.ts) >= since)
    query = query.order_by(col(AuditEntry.ts).desc(), col(AuditEntry.id).desc()).limit(limit)
    return list(session.exec(query).all())


def _body_details(body: bytes, content_type: str, truncated: bool) -> dict[str, Any]:
    if not body:
        return {}
    if "json" not in content_type or truncated:
        return {"body_bytes": len(body), "content_type": content_type.split(";")[0]}
    try:
        return {"body": json.loads(body)}
    except ValueError:
        return {"body_bytes": len(body)}


def _route_template(scope: Scope) -> str:
    """``/api/v1/devices/cam-1/x`` → ``/api/v1/devices/{device_id}/x`` (from path params)."""
    path: str = scope["path"]
    for name, value in scope.get("path_params", {}).items():
        path = path.replace(f"/{value}", f"/{{{name}}}", 1)
    return path


class AuditMiddleware:
    """ASGI middleware: records mutating ``/api/`` requests once they are answered.

    Unauthenticated calls (no principal, 401) are not recorded: only who could be named.
    """

    def __init__(self, app: ASGIApp, engine: Engine, prefix: str = "/api/") -> None:
        self.app = app
        self.engine = engine
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in MUTATING
            or not scope["path"].startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        kept = bytearray()
        truncated = False
        status_code = 500

        async def tee_receive() -> Message:
            nonlocal truncated
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if len(kept) + len(chunk) <= MAX_BODY_KEPT:
                    kept.extend(chunk)
                else:
                    truncated = True
            return message

        async def watch_send(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, tee_receive, watch_send)
        finally:
            principal = state.get("principal")
            if principal is not None:
                headers = dict(scope.get("headers", []))
                content_type = headers.get(b"content-type", b"").decode("latin-1")
                details = _body_details(bytes(kept), content_type, truncated)
                if scope.get("query_string"):
                    details["query"] = scope["query_string"].decode("latin-1")
                action = f"{scope['method']} {_route_template(scope)}"
                try:
                    await run_in_threadpool(
                        record,
                        self.engine,
                        principal.name,
                        "api",
                        action,
                        scope["path"],
                        status_code,
                        details,
                    )
                except Exception as exc:  # never fail the request over the log
                    logger.error("could not write audit entry for %s: %s", action, exc)
