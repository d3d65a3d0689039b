"""Console plumbing: templates, the logged-in user, CSRF checks, rendering, formatting."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from fleet_server.auth import ANONYMOUS, SESSION_COOKIE, Principal, csrf_matches, session_principal
from fleet_server.auth_models import Role
from fleet_server.deps import ContextDep

HERE = Path(__file__).parent
CSRF_COOKIE = "jetfleet_csrf"  # double-submit token: login form, and the console with auth off
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


class LoginRequired(Exception):
    """Raised by :func:`console_principal` when there is no valid session."""


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    delta = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: Any) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def _num(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _numval(value: Any) -> str:
    """A gate number: floats to 4 significant digits, lists joined, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, ".4g")
    if isinstance(value, list | tuple):
        return ", ".join(_numval(v) for v in value) or "none"
    return str(value)


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(ago=_ago, when=_when, size=_size, num=_num, numval=_numval)


def console_principal(request: Request, context: ContextDep) -> Principal:
    """The console user (session cookie); anonymous admin when auth is disabled."""
    if not context.settings.auth_enabled:
        token = request.cookies.get(CSRF_COOKIE)
        if not token:
            token = secrets.token_urlsafe(32)
            request.state.new_csrf_cookie = token
        principal = Principal(ANONYMOUS, Role.ADMIN, "console", csrf_token=token)
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        found = None
        if cookie:
            with Session(context.engine) as session:
                found = session_principal(session, cookie)
        if found is None:
            raise LoginRequired
        principal = found
    request.state.principal = principal
    return principal


ConsoleUser = Annotated[Principal, Depends(console_principal)]


async def submitted_csrf(request: Request) -> str | None:
    """The CSRF token a request carries: header (HTMX), query (uploads) or form field."""
    given = request.headers.get(CSRF_HEADER) or request.query_params.get(CSRF_FIELD)
    content_type = request.headers.get("content-type", "")
    if not given and content_type.startswith("application/x-www-form-urlencoded"):
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return given


def console_action(needed: Role) -> Callable[..., Awaitable[Principal]]:
    """Dependency for a console POST: a valid CSRF token (else 403), then at least ``needed``."""

    async def check(request: Request, principal: ConsoleUser) -> Principal:
        if not csrf_matches(principal.csrf_token, await submitted_csrf(request)):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        if not principal.allows(needed):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{principal.name} is {principal.role.value}; this needs {needed.value}",
            )
        return principal

    return check


ViewerAction = Annotated[Principal, Depends(console_action(Role.VIEWER))]
OperatorAction = Annotated[Principal, Depends(console_action(Role.OPERATOR))]
AdminAction = Annotated[Principal, Depends(console_action(Role.ADMIN))]


def require_page_role(principal: Principal, needed: Role) -> None:
    if not principal.allows(needed):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this page needs {needed.value}")


def render(
    request: Request,
    name: str,
    principal: Principal | None,
    **context: Any,
) -> Response:
    values = {
        "me": principal,
        "csrf": principal.csrf_token if principal else None,
        "can_operate": bool(principal and principal.allows(Role.OPERATOR)),
        "is_admin": bool(principal and principal.allows(Role.ADMIN)),
        "msg": request.query_params.get("msg", ""),
        "error": request.query_params.get("error", ""),
        "path": request.url.path,
        **context,
    }
    response = templates.TemplateResponse(request, name, values)
    new_token = getattr(request.state, "new_csrf_cookie", None)
    if new_token:
        response.set_cookie(CSRF_COOKIE, new_token, httponly=True, samesite="lax", path="/console")
    return response


def back(url: str, msg: str = "", error: str = "") -> RedirectResponse:
    """Post/redirect/get with a one-line message."""
    sep = "&" if "?" in url else "?"
    if msg:
        url += f"{sep}msg={quote(msg)}"
    elif error:
        url += f"{sep}error={quote(error)}"
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


async def login_required_handler(request: Request, exc: Exception) -> Response:
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": "/console/login"})
    if request.method != "GET":
        return Response("login required", status_code=401)
    return RedirectResponse(
        f"/console/login?next={quote(request.url.path)}", status_code=status.HTTP_303_SEE_OTHER
    )
