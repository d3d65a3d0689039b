"""Console pages (GET): full pages, and the fragments HTMX polls for live parts."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlmodel import col, select

from fleet_server.audit import list_audit
from fleet_server.auth_models import ApiToken, Role, User
from fleet_server.console import views
from fleet_server.console.web import ConsoleUser, render, require_page_role
from fleet_server.deps import SessionDep
from fleet_server.errors import NotFoundError
from fleet_server.models import Assignment, Device, Package, Release
from fleet_server.rollout_models import Rollout

router = APIRouter()
Text = Annotated[str, Query(max_length=200)]


def _window(name: str) -> tuple[str, int]:
    return (name, views.WINDOWS[name]) if name in views.WINDOWS else ("1h", 3600)


@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/console/overview", status_code=303)


@router.get("/overview")
def overview_page(request: Request, me: ConsoleUser, session: SessionDep) -> Response:
    return render(request, "overview.html", me, **views.overview(session))


@router.get("/overview/live")
def overview_live(request: Request, me: ConsoleUser, session: SessionDep) -> Response:
    return render(request, "_overview_live.html", me, **views.overview(session))


def device_filters(
    search: Text = "", tag: Text = "", status: Text = "", release: Text = "", profile: Text = ""
) -> dict[str, str]:
    """The devices table's filters, from the query string."""
    return {"search": search, "tag": tag, "status": status, "release": release, "profile": profile}


DeviceFilters = Annotated[dict[str, str], Depends(device_filters)]


@router.get("/devices")
def devices_page(
    request: Request, me: ConsoleUser, session: SessionDep, filters: DeviceFilters
) -> Response:
    return render(
        request,
        "devices.html",
        me,
        rows=views.device_rows(session, filters),
        filters=filters,
        statuses=views.STATUSES,
        **views.filter_choices(session),
    )


@router.get("/devices/rows")
def devices_rows(
    request: Request, me: ConsoleUser, session: SessionDep, filters: DeviceFilters
) -> Response:
    return render(request, "_device_rows.html", me, rows=views.device_rows(session, filters))


def _device_context(session: SessionDep, device_id: str) -> dict[str, object]:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    failure = views.recent_failures(session, time.time() - views.DEGRADED_WINDOW_S).get(device_id)
    assignments = session.exec(
        select(Assignment)
        .where(Assignment.device_id == device_id)
        .order_by(col(Assignment.sequence).desc())
        .limit(10)
    ).all()
    return {
        "row": views.classify(device, failure),
        "device": device,
        "rollback_to": views.rollback_target(session, device),
        "assignments": assignments,
        "history": views.events_for(session, device_id, types=views.ENGINE_TYPES, limit=50),
        "events": views.events_for(session, device_id, limit=50),
    }


@router.get("/devices/{device_id}")
def device_page(
    request: Request, device_id: str, me: ConsoleUser, session: SessionDep, window: Text = "1h"
) -> Response:
    name, _ = _window(window)
    return render(
        request,
        "device.html",
        me,
        window=name,
        windows=list(views.WINDOWS),
        **_device_context(session, device_id),
    )


@router.get("/devices/{device_id}/live")
def device_live(request: Request, device_id: str, me: ConsoleUser, session: SessionDep) -> Response:
    return render(request, "_device_live.html", me, **_device_context(session, device_id))


@router.get("/devices/{device_id}/series.json")
def device_series(
    device_id: str, me: ConsoleUser, session: SessionDep, window: Text = "1h"
) -> JSONResponse:
    if session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} does not exist")
    return JSONResponse(views.series(session, device_id, _window(window)[1]))


@router.get("/models")
def models_page(request: Request, me: ConsoleUser, session: SessionDep) -> Response:
    packages = session.exec(select(Package).order_by(col(Package.created_at).desc())).all()
    return render(request, "models.html", me, packages=packages)


@router.get("/releases")
def releases_page(request: Request, me: ConsoleUser, session: SessionDep) -> Response:
    releases = session.exec(select(Release).order_by(col(Release.created_at).desc())).all()
    packages = {p.sha256: p for p in session.exec(select(Package)).all()}
    devices = session.exec(select(Device).order_by(col(Device.id))).all()
    running: dict[str, int] = {}
    for d in devices:
        if d.active_release:
            running[d.active_release] = running.get(d.active_release, 0) + 1
    return render(
        request,
        "releases.html",
        me,
        releases=releases,
        packages=packages,
        devices=devices,
        running=running,
    )


def rollouts_context(
    session: SessionDep, form: dict[str, object] | None = None
) -> dict[str, object]:
    """The rollouts page: the list, and the create form (``form``: values to show again)."""
    return {
        "rollouts": views.rollout_list(session),
        "form": form or views.rollout_form_defaults(),
        **views.rollout_form_choices(session),
    }


@router.get("/rollouts")
def rollouts_page(request: Request, me: ConsoleUser, session: SessionDep) -> Response:
    return render(request, "rollouts.html", me, **rollouts_context(session))


@router.get("/rollouts/rows")
def rollouts_rows(request: Request, me: ConsoleUser, session: SessionDep) -> Response:
    return render(request, "_rollout_rows.html", me, rollouts=views.rollout_list(session))


def _rollout(session: SessionDep, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id} does not exist")
    return rollout


@router.get("/rollouts/{rollout_id}")
def rollout_page(
    request: Request, rollout_id: int, me: ConsoleUser, session: SessionDep
) -> Response:
    context = views.rollout_context(session, _rollout(session, rollout_id))
    return render(request, "rollout.html", me, **context)


@router.get("/rollouts/{rollout_id}/live")
def rollout_live(
    request: Request, rollout_id: int, me: ConsoleUser, session: SessionDep
) -> Response:
    context = views.rollout_context(session, _rollout(session, rollout_id))
    return render(request, "_rollout_live.html", me, **context)


@router.get("/events")
def events_page(
    request: Request,
    me: ConsoleUser,
    session: SessionDep,
    device: Text = "",
    type: Text = "",
    window: Text = "24h",
    live: bool = False,
) -> Response:
    name, seconds = _window(window)
    events = views.events_for(session, device, type, since=time.time() - seconds, limit=300)
    template = "_event_rows.html" if live else "events.html"
    return render(
        request,
        template,
        me,
        events=events,
        filters={"device": device, "type": type, "window": name},
        types=views.event_types(session),
        windows=list(views.WINDOWS),
        failure_types=views.FAILURE_TYPES,
    )


@router.get("/audit")
def audit_page(
    request: Request, me: ConsoleUser, session: SessionDep, actor: Text = "", action: Text = ""
) -> Response:
    require_page_role(me, Role.ADMIN)
    entries = list_audit(session, actor or None, action or None, limit=300)
    actors = sorted(session.exec(select(User.name)).all())
    return render(
        request,
        "audit.html",
        me,
        entries=entries,
        filters={"actor": actor, "action": action},
        actors=actors,
    )


@router.get("/settings")
def settings_page(request: Request, me: ConsoleUser, session: SessionDep) -> Response:
    require_page_role(me, Role.ADMIN)
    return render(request, "settings.html", me, **settings_context(session))


def settings_context(session: SessionDep) -> dict[str, object]:
    users = session.exec(select(User).order_by(col(User.name))).all()
    return {
        "users": users,
        "user_names": {u.id: u.name for u in users},
        "tokens": session.exec(select(ApiToken).order_by(col(ApiToken.created_at).desc())).all(),
        "roles": [r.value for r in Role],
    }
