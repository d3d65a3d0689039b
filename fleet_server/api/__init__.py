"""REST API routers, one module per noun, mounted under ``/api/v1`` by ``create_app``."""

from __future__ import annotations

from fastapi import APIRouter

from fleet_server.api import assignments, devices, events, packages, releases, telemetry

API_PREFIX = "/api/v1"


def api_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)
    for module in (devices, packages, releases, assignments, events, telemetry):
        router.include_router(module.router)
    return router


__all__ = ["API_PREFIX", "api_router"]
