"""REST API routers, one module per noun, mounted under ``/api/v1`` by ``create_app``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from fleet_server.api import (
    assignments,
    devices,
    engines,
    events,
    packages,
    releases,
    rollouts,
    telemetry,
    users,
)
from fleet_server.auth import authorize_api

API_PREFIX = "/api/v1"


def api_router() -> APIRouter:
    # Reads need a viewer, anything else an operator (users.router: admin).
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(authorize_api)])
    for module in (devices, packages, releases, engines, assignments, events, telemetry,
                   rollouts):
        router.include_router(module.router)
    router.include_router(users.router)
    return router


__all__ = ["API_PREFIX", "api_router"]
