"""OTA fan-out: one broadcast of an artifact's blocks on ``a/{sha256}/blocks`` per wave.

Agents subscribe to ``a/{sha256}/blocks`` before their first fetch request of that
artifact and fill their bitmap from every frame that arrives there (``edge_agent/ota.py``
takes frames it did not ask for), so after a broadcast they only ask, by unicast, for
what they missed (repair).

The trigger is the fetches themselves, not the rollout: the first fetch of an artifact
opens a *collection window* (``ota_broadcast_window`` seconds) in which requests for it
are held back. When the window closes:

- ``>= ota_broadcast_min_devices`` devices asked → every block is published once on
  ``a/{sha256}/blocks``; the held requests are dropped (their blocks went out);
- fewer → the held requests are served by unicast as usual (one device pays the window).

Requests arriving while the broadcast is being sent are dropped too (the agent asks
again after its fetch timeout, by then as repair). After a session, requests are served
by unicast (repair) until a device that was not part of it asks more than
``ota_broadcast_cooldown`` seconds later, which opens a new session (the next wave).

A rollout wave issues its desired assignments at once, so its devices start fetching
within a second of each other: one broadcast per wave, whatever the selector. With N
replicas the fetches are split between them, so each replica runs its own session:
at most N broadcasts per wave.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet_server.artifacts import ArtifactStore
from fleet_server.errors import ArtifactError
from fleet_server.metrics import ServerMetrics
from fleet_server.worker import Periodic
from jetfleet import topics
from jetfleet.frames import encode_frame
from jetfleet.messages import FetchRequest

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Publish = Callable[[str, bytes], Any]  # (topic, payload) → paho MQTTMessageInfo
Requeue = Callable[[str, FetchRequest], None]
CHUNK = 32  # frames published before waiting for the broker to take them
PUBLISH_WAIT = 30.0


@dataclass
class _Session:
    sha256: str
    count: int
    block_size: int
    opened_at: float
    state: str = "collecting"  # → "sending" → "done"
    done_at: float = 0.0
    devices: set[str] = field(default_factory=set)
    held: list[tuple[str, FetchRequest]] = field(default_factory=list)


class Broadcaster:
    """Decides which fetch requests go unicast; publishes broadcasts on its own thread."""

    def __init__(
        self,
        store: ArtifactStore,
        metrics: ServerMetrics,
        publish: Publish,
        requeue: Requeue,
        *,
        window: float = 1.0,
        min_devices: int = 2,
        cooldown: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.publish = publish
        self.requeue = requeue
        self.window = window
        self.min_devices = min_devices
        self.cooldown = cooldown
        self.clock = clock
        self.broadcasts = 0
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._worker = Periodic("jetfleet-broadcast", 0.05, self.poll, run_first=False)

    # -- called by the gateway's fetch thread ------------------------------------------
    def admit(
        self, device_id: str, request: FetchRequest, block_count: int, block_size: int
    ) -> bool:
        """True: serve ``request`` by unicast now. False: a broadcast covers it."""
        now = self.clock()
        with self._lock:
            session = self._sessions.get(request.sha256)
            if session is not None and session.state == "done":
                if device_id in session.devices or now - session.done_at < self.cooldown:
                    session.devices.add(device_id)
                    return True
                session = None
            if session is None:
                session = _Session(request.sha256, block_count, block_size, opened_at=now)
                self._sessions[request.sha256] = session
            session.devices.add(device_id)
            if session.state == "collecting":
                session.held.append((device_id, request))
            return False

    # -- thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._worker.stop(timeout)

    def poll(self) -> None:
        """Close every collection window that is due: broadcast or hand back to unicast."""
        now = self.clock()
        with self._lock:
            due = [
                s
                for s in self._sessions.values()
                if s.state == "collecting" and now - s.opened_at >= self.window
            ]
            for session in due:
                session.state = "sending" if len(session.devices) >= self.min_devices else "done"
        for session in due:
            if session.state == "done":
                session.done_at = now
                held, session.held = session.held, []
                for device_id, request in held:
                    self.requeue(device_id, request)
                continue
            try:
                self._send(session)
            except (ArtifactError, OSError) as exc:
                logger.error("broadcast of %s failed: %s", session.sha256[:12], exc)
            with self._lock:
                session.state, session.done_at, session.held = "done", self.clock(), []

    def _send(self, session: _Session) -> None:
        sha, count, size = session.sha256, session.count, session.block_size
        logger.info(
            "broadcasting %s (%d blocks) to %d device(s)", sha[:12], count, len(session.devices)
        )
        topic = topics.artifact_blocks(sha)
        for start in range(0, count, CHUNK):
            indices = list(range(start, min(start + CHUNK, count)))
            info = None
            for index, payload in zip(
                indices, self.store.read_blocks(sha, indices, size), strict=True
            ):
                frame = encode_frame(sha, index, count, index * size, payload)
                info = self.publish(topic, frame)
                self.metrics.egress_bytes.labels(mode="broadcast").inc(len(frame))
            if info is not None:
                _wait(info, self._worker.stop_event)
            if self._worker.stopping:
                return
        self.broadcasts += 1


def _wait(info: Any, stop: threading.Event) -> None:
    deadline = time.monotonic() + PUBLISH_WAIT
    try:
        while not info.is_published() and not stop.is_set() and time.monotonic() < deadline:
            info.wait_for_publish(0.2)
    except (RuntimeError, ValueError) as exc:  # paho: not queued / no connection
        logger.debug("broadcast frames not confirmed: %s", exc)
