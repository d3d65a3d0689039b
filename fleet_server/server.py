"""``run_server(settings)``: serve the app with uvicorn until SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import uvicorn

from fleet_server.app import create_app
from fleet_server.settings import Settings

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, but a caught SIGTERM/SIGINT ends :func:`run_server` normally
    (uvicorn re-raises the signal after shutdown, which would kill the CLI mid-exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_server(settings: Settings) -> None:
    """Run the fleet server in the foreground; returns after a clean shutdown.

    Logging is left to the caller (the CLI configures it); uvicorn's own loggers
    propagate to it.
    """
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    logger.info(
        "fleet server on http://%s:%d (docs at /docs)", settings.http_host, settings.http_port
    )
    server.run()
    if not server.started:
        raise SystemExit("fleet server failed to start; see the log above")
