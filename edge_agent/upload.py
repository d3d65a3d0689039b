"""Engine upload (DESIGN §4, issue 6): the first device of a profile builds for the rest.

After an engine is built here and passed its golden vectors, :class:`EngineUploader`
sends it to the server on ``d/{device}/upload``: one JSON
:class:`~jetfleet.messages.EngineUpload` announce, then the plan as the same binary block
frames the server sends packages with. It runs on the agent's main loop and sends at most
``frames_per_tick`` frames per :meth:`tick` so serving and OTA are never starved.

Best effort: an upload cut by a disconnect starts over on reconnect; one cut by an agent
restart is not resumed (the next device of the profile builds and uploads instead).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.enginebuild import EngineLoaded
from jetfleet import topics
from jetfleet.errors import FrameError, MqttError
from jetfleet.frames import encode_frame
from jetfleet.messages import DEFAULT_BLOCK_SIZE, MAX_ENGINE_BYTES, EngineUpload, EventType

logger = logging.getLogger(__name__)

FRAMES_PER_TICK = 16
MAX_QUEUED = 4


@dataclass
class _Job:
    announce: EngineUpload
    path: Path
    next_index: int = -1  # -1: the announce is still to be sent


class EngineUploader:
    def __init__(
        self,
        *,
        device_id: str,
        publish: Callable[[str, bytes], Any],
        is_connected: Callable[[], bool],
        emit: Callable[..., None],
        block_size: int = DEFAULT_BLOCK_SIZE,
        frames_per_tick: int = FRAMES_PER_TICK,
    ) -> None:
        self.device_id = device_id
        self.publish = publish
        self.is_connected = is_connected
        self.emit = emit
        self.block_size = block_size
        self.frames_per_tick = frames_per_tick
        self.jobs: deque[_Job] = deque()
        self.sent: list[str] = []  # plan sha256s fully handed to MQTT, oldest first

    def offer(self, loaded: EngineLoaded) -> bool:
        """Queue a freshly built engine for upload; False if it is not one to upload."""
        if loaded.source != "built" or loaded.release is None:
            return False
        length = loaded.path.stat().st_size
        if not 0 < length <= MAX_ENGINE_BYTES:
            logger.warning("engine %s of %d bytes is not uploaded", loaded.plan_sha256[:12], length)
            return False
        if any(j.announce.sha256 == loaded.plan_sha256 for j in self.jobs):
            return False
        if len(self.jobs) >= MAX_QUEUED:
            logger.warning("engine upload queue full; dropping %s", self.jobs[0].announce.sha256)
            self.jobs.popleft()
        announce = EngineUpload(
            device_id=self.device_id, release=loaded.release,
            package_sha256=loaded.package_sha256, engine_key=loaded.engine_key,
            sha256=loaded.plan_sha256, length=length, block_size=self.block_size,
        )
        self.jobs.append(_Job(announce, loaded.path))
        return True

    def on_connected(self, connected: bool) -> None:
        if connected and self.jobs:
            self.jobs[0].next_index = -1  # the server drops partial uploads: start over

    def tick(self) -> None:
        if not self.jobs or not self.is_connected():
            return
        job = self.jobs[0]
        a = job.announce
        topic = topics.upload(self.device_id)
        try:
            if job.next_index < 0:
                self.publish(topic, a.to_bytes())
                job.next_index = 0
            with job.path.open("rb") as fh:
                for _ in range(self.frames_per_tick):
                    if job.next_index >= a.block_count:
                        break
                    i = job.next_index
                    fh.seek(i * a.block_size)
                    payload = fh.read(a.block_size)
                    self.publish(topic, encode_frame(a.sha256, i, a.block_count,
                                                     i * a.block_size, payload))
                    job.next_index += 1
        except (OSError, FrameError) as exc:  # the cached plan went away (pruned)
            logger.warning("engine upload of %s abandoned: %s", a.sha256[:12], exc)
            self.jobs.popleft()
            return
        except MqttError as exc:
            logger.warning("engine upload paused: %s", exc)
            return
        if job.next_index >= a.block_count:
            self.jobs.popleft()
            self.sent.append(a.sha256)
            self.emit(EventType.ENGINE_UPLOADED, sha256=a.package_sha256, release=a.release,
                      data={"plan_sha256": a.sha256, "engine_key": a.engine_key,
                            "length": a.length})
