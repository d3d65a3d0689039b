"""A tiny stdlib ``sd_notify``: tell systemd the agent is ready / alive.

Sends datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). Without the variable (not started by systemd with ``Type=notify``)
every call is a no-op that returns False. It never raises.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd. True when it was sent."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.warning("sd_notify %r to %r failed: %s", state, address, exc)
        return False
    return True


def notify_ready(env: Mapping[str, str] | None = None) -> bool:
    return notify("READY=1", env)


def notify_watchdog(env: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", env)


def notify_stopping(env: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", env)


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1: half of ``$WATCHDOG_USEC``; None when not watched.

    ``$WATCHDOG_PID``, when set, must be this process.
    """
    values = os.environ if env is None else env
    try:
        usec = int(values.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = values.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return usec / 2e6
