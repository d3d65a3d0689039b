"""Console form posts: login/logout and the operator/admin actions. Each one is audited.

Every post here needs the session's CSRF token (hidden field, ``X-CSRF-Token`` header, or
for the multipart upload the ``csrf_token`` query parameter); the login form uses a
double-submit cookie instead since there is no session yet.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from fleet_server import audit
from fleet_server.api.packages import _register
from fleet_server.api.releases import create_release
from fleet_server.assignments import issue_assignments
from fleet_server.auth import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    add_user,
    authenticate,
    csrf_matches,
    end_session,
    issue_token,
    revoke_token,
    start_session,
    update_user,
)
from fleet_server.auth_models import User
from fleet_server.console import views
from fleet_server.console.pages import rollouts_context, settings_context
from fleet_server.console.web import (
    CSRF_COOKIE,
    AdminAction,
    OperatorAction,
    ViewerAction,
    back,
    render,
    templates,
)
from fleet_server.context import ServerContext
from fleet_server.deps import ContextDep, RolloutsDep, SessionDep
from fleet_server.errors import ConflictError, FleetServerError, NotFoundError
from fleet_server.models import Device, ReleaseCreate
from fleet_server.rollout_models import RolloutCreate
from fleet_server.uploads import receive_file

router = APIRouter()
FormText = Annotated[str, Form(max_length=4000)]


def _audit(
    context: ServerContext, who: str, action: str, target: str, status: int = 200, **details: Any
) -> None:
    audit.record(context.engine, who, "console", action, target, status, details)


# -- login -----------------------------------------------------------------------------
def _safe_next(value: str) -> str:
    return value if value.startswith("/console/") and "//" not in value else "/console/overview"


@router.get("/login")
def login_page(request: Request, context: ContextDep, next: str = "") -> Response:
    if not context.settings.auth_enabled:
        return RedirectResponse("/console/overview", status_code=303)
    token = secrets.token_urlsafe(32)
    response = templates.TemplateResponse(
        request, "login.html", {"me": None, "csrf": token, "next": _safe_next(next), "error": ""}
    )
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="lax", path="/console")
    return response


@router.post("/login")
def login(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    name: FormText,
    password: FormText,
    csrf_token: FormText = "",
    next: FormText = "",
) -> Response:
    if not csrf_matches(request.cookies.get(CSRF_COOKIE), csrf_token):
        raise HTTPException(403, "missing or wrong CSRF token; reload the login page")
    user = authenticate(session, name, password)
    if user is None:
        _audit(context, name[:64] or "?", "console.login", name, 401, result="refused")
        return templates.TemplateResponse(
            request,
            "login.html",
            {
                "me": None,
                "csrf": csrf_token,
                "next": _safe_next(next),
                "error": "Wrong user name or password.",
            },
            status_code=401,
        )
    cookie = start_session(session, user)
    _audit(context, user.name, "console.login", user.name)
    redirect = RedirectResponse(_safe_next(next), status_code=303)
    redirect.set_cookie(
        SESSION_COOKIE,
        cookie,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
        max_age=int(SESSION_TTL_S),
    )
    return redirect


@router.post("/logout")
def logout(
    request: Request, me: ViewerAction, context: ContextDep, session: SessionDep
) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        end_session(session, cookie)
    _audit(context, me.name, "console.logout", me.name)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- operator actions ------------------------------------------------------------------
def _assign(context: ServerContext, release: str, device_ids: list[str]) -> int:
    with context.assign_lock, Session(context.engine) as session:
        try:
            issued = issue_assignments(
                session, release, device_ids, context.settings.block_size, time.time()
            )
        except IntegrityError as exc:
            session.rollback()
            raise ConflictError("a concurrent assignment won the race; retry") from exc
        context.gateway.publish_desired(issued)
        return len(issued)


@router.post("/devices/{device_id}/rollback")
def rollback(
    device_id: str, me: OperatorAction, context: ContextDep, session: SessionDep
) -> Response:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    target = views.rollback_target(session, device)
    url = f"/console/devices/{device_id}"
    if target is None:
        _audit(context, me.name, "device.rollback", device_id, 409, result="no earlier release")
        return back(url, error="No known-good or earlier release to roll back to.")
    _assign(context, target, [device_id])
    _audit(
        context,
        me.name,
        "device.rollback",
        device_id,
        release=target,
        previous=device.active_release,
    )
    return back(url, msg=f"Assigned {target} again (a new, higher sequence).")


_CONSOLE_COMMANDS = {"restart-runtime": "Restart runtime", "resync": "Resync"}


@router.post("/devices/{device_id}/command")
def device_command(
    device_id: str, me: OperatorAction, context: ContextDep, command: FormText
) -> Response:
    """The device page's signed-command buttons (fleet_server/commands.py)."""
    url = f"/console/devices/{device_id}"
    if command not in _CONSOLE_COMMANDS or context.commands is None:
        _audit(context, me.name, "device.command", device_id, 422, command=command[:32])
        return back(url, error=f"Unknown command {command[:32]!r}.")
    sent = context.commands.publish_command(device_id, command, {})  # type: ignore[arg-type]
    _audit(context, me.name, "device.command", device_id, command=command, sequence=sent.sequence)
    return back(url, msg=f"{_CONSOLE_COMMANDS[command]} sent (command sequence {sent.sequence}).")


@router.post("/models/upload")
async def upload(request: Request, me: OperatorAction, context: ContextDep) -> Response:
    tmp = context.store.new_temp()
    try:
        received = await receive_file(request, tmp, context.settings.max_package_bytes)
        package, created = await run_in_threadpool(_register, context, received)
    except FleetServerError as exc:
        await run_in_threadpool(_audit, context, me.name, "package.upload", "", 422, error=str(exc))
        return back("/console/models", error=str(exc))
    finally:
        tmp.unlink(missing_ok=True)
    await run_in_threadpool(
        _audit,
        context,
        me.name,
        "package.upload",
        package.sha256,
        name=package.name,
        version=package.version,
        created=created,
    )
    note = "uploaded" if created else "was already stored"
    return back("/console/models", msg=f"{package.name} {package.version} {note}.")


@router.post("/releases")
def new_release(
    me: OperatorAction,
    context: ContextDep,
    session: SessionDep,
    name: FormText,
    package_sha256: FormText,
    notes: FormText = "",
) -> Response:
    try:
        body = ReleaseCreate(name=name, package_sha256=package_sha256, notes=notes)
        create_release(body, session)
    except (ValidationError, FleetServerError) as exc:
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        _audit(context, me.name, "release.create", name, 422, error=reason)
        return back("/console/releases", error=f"Release not created: {reason}")
    _audit(context, me.name, "release.create", name, package_sha256=package_sha256)
    return back("/console/releases", msg=f"Release {name} created.")


@router.post("/assign")
def assign(
    me: OperatorAction,
    context: ContextDep,
    session: SessionDep,
    release: FormText,
    device_ids: Annotated[list[str], Form()] = [],  # noqa: B006
    tag: FormText = "",
) -> Response:
    targets = list(dict.fromkeys(device_ids))
    if tag.strip():
        targets += [
            r.device.id
            for r in views.device_rows(session, {"tag": tag})
            if r.device.id not in targets
        ]
    if not targets:
        return back("/console/releases", error="Pick devices (or a tag) to assign to.")
    try:
        count = _assign(context, release, targets)
    except FleetServerError as exc:
        _audit(context, me.name, "release.assign", release, 404, error=str(exc))
        return back("/console/releases", error=str(exc))
    _audit(context, me.name, "release.assign", release, device_ids=targets)
    return back("/console/releases", msg=f"Assigned {release} to {count} device(s).")


# -- rollouts --------------------------------------------------------------------------
def _form_reason(exc: ValidationError | FleetServerError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return str(exc)


@router.post("/rollouts")
async def new_rollout(
    request: Request, me: OperatorAction, context: ContextDep, rollouts: RolloutsDep
) -> Response:
    """The create form: the same :meth:`RolloutController.create` as ``POST /api/v1/rollouts``.

    A refused form is shown again with its values and the reason (422).
    """
    form = await request.form()
    values: dict[str, Any] = {
        name: str(form.get(name, "")).strip()[:4000] for name in views.ROLLOUT_FIELDS
    }
    values["auto_rollback"] = form.get("auto_rollback") == "1"
    body = {k: v for k, v in values.items() if v != ""}
    try:
        created = await run_in_threadpool(rollouts.create, RolloutCreate.model_validate(body))
    except (ValidationError, FleetServerError) as exc:
        reason = _form_reason(exc)
        await run_in_threadpool(
            _audit, context, me.name, "rollout.create", values["release"], 422, error=reason
        )
        with Session(context.engine) as session:
            page = render(
                request,
                "rollouts.html",
                me,
                form_error=f"Rollout not created: {reason}",
                **rollouts_context(session, values),
            )
        page.status_code = 422
        return page
    await run_in_threadpool(
        _audit,
        context,
        me.name,
        "rollout.create",
        str(created.id),
        release=created.release,
        selector=created.selector,
        waves=created.waves,
        plan=created.plan,
    )
    return back(
        f"/console/rollouts/{created.id}",
        msg=f"Rollout {created.id} of {created.release} started on {len(created.targets)} "
        f"device(s) in {len(created.plan)} wave(s).",
    )


@router.post("/rollouts/{rollout_id}/{action}")
def steer_rollout(
    rollout_id: int, action: str, me: OperatorAction, context: ContextDep, rollouts: RolloutsDep
) -> Response:
    """Pause, resume, abort or roll back (the controller's own checks say when)."""
    steps = {
        "pause": rollouts.pause,
        "resume": rollouts.resume,
        "abort": rollouts.abort,
        "rollback": rollouts.rollback,
    }
    if action not in steps:
        raise NotFoundError(f"no rollout action {action!r}")
    url = f"/console/rollouts/{rollout_id}"
    try:
        rollout = steps[action](rollout_id)
    except NotFoundError:
        raise
    except FleetServerError as exc:
        _audit(context, me.name, f"rollout.{action}", str(rollout_id), 409, error=str(exc))
        return back(url, error=str(exc))
    _audit(context, me.name, f"rollout.{action}", str(rollout_id), status_after=rollout.status)
    return back(url, msg=f"Rollout {rollout_id} is now {rollout.status.replace('_', ' ')}.")


# -- admin: users and tokens -----------------------------------------------------------
@router.post("/settings/users")
def new_user(
    me: AdminAction,
    context: ContextDep,
    session: SessionDep,
    name: FormText,
    password: FormText,
    role: FormText = "viewer",
) -> Response:
    try:
        add_user(session, name, password, role)
    except FleetServerError as exc:
        _audit(context, me.name, "user.create", name, 422, error=str(exc))
        return back("/console/settings", error=str(exc))
    _audit(context, me.name, "user.create", name, role=role)
    return back("/console/settings", msg=f"User {name} created ({role}).")


@router.post("/settings/users/{user_id}")
def edit_user(
    user_id: int,
    me: AdminAction,
    context: ContextDep,
    session: SessionDep,
    role: FormText = "",
    disabled: FormText = "",
) -> Response:
    if user_id == me.user_id and (disabled == "1" or (role and role != "admin")):
        return back("/console/settings", error="You cannot demote or disable yourself.")
    flag = None if disabled == "" else disabled == "1"
    try:
        user = update_user(session, user_id, role=role or None, disabled=flag)
    except FleetServerError as exc:
        return back("/console/settings", error=str(exc))
    _audit(context, me.name, "user.update", user.name, role=user.role, disabled=user.disabled)
    return back("/console/settings", msg=f"User {user.name} updated.")


@router.post("/settings/tokens")
def new_token(
    request: Request,
    me: AdminAction,
    context: ContextDep,
    session: SessionDep,
    name: FormText,
    user: FormText = "",
) -> Response:
    owner = session.exec(select(User).where(User.name == (user or me.name))).first()
    if owner is None:
        return back("/console/settings", error=f"User {user or me.name!r} does not exist.")
    try:
        row, token = issue_token(session, owner, name)
    except FleetServerError as exc:
        return back("/console/settings", error=str(exc))
    _audit(context, me.name, "token.create", f"{owner.name}/{row.name}", token_id=row.id)
    return render(
        request,
        "settings.html",
        me,
        new_token=token,
        new_token_name=row.name,
        **settings_context(session),
    )


@router.post("/settings/tokens/{token_id}/revoke")
def revoke(token_id: int, me: AdminAction, context: ContextDep, session: SessionDep) -> Response:
    try:
        row = revoke_token(session, token_id)
    except FleetServerError as exc:
        return back("/console/settings", error=str(exc))
    _audit(context, me.name, "token.revoke", row.name, token_id=token_id)
    return back("/console/settings", msg=f"Token {row.name} revoked.")
