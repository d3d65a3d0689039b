"""The fleet web console: server-rendered pages (Jinja2), HTMX for live parts, uPlot charts.

Everything it needs is in this package (templates, static files, vendored JS); it works
offline. :func:`mount_console` adds it to an app under ``/console``.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from fleet_server.console.web import HERE, LoginRequired, login_required_handler

CONSOLE_PREFIX = "/console"


def console_router() -> APIRouter:
    from fleet_server.console import actions, pages

    router = APIRouter(prefix=CONSOLE_PREFIX, include_in_schema=False)
    router.include_router(actions.router)
    router.include_router(pages.router)
    return router


def mount_console(app: FastAPI) -> None:
    """Routes under ``/console``, static files under ``/console/static``."""
    app.mount(
        f"{CONSOLE_PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static"
    )
    app.include_router(console_router())
    app.add_exception_handler(LoginRequired, login_required_handler)


__all__ = ["CONSOLE_PREFIX", "console_router", "mount_console"]
