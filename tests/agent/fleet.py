"""Test helpers: a small fake fleet server on real MQTT, agent configs, polling."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, parse_config
from jetfleet import topics
from jetfleet.frames import encode_frame
from jetfleet.messages import (
    DesiredAssignment,
    EventMessage,
    FetchRequest,
    StateMessage,
    TelemetryBatch,
    decode,
)
from jetfleet.mqtt import BrokerAddress, Connection, Inbound, MqttClient


def agent_config(tmp_path: Path, broker_url: str, **overrides: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "device_id": "dev-1",
        "broker_url": broker_url,
        "state_dir": str(tmp_path / "state"),
        "tags": {"site": "lab"},
        "telemetry_interval_s": 0.5,
        "api_port": 0,
        "bake_s": 0.3,
        "fetch_window_blocks": 8,
        "fetch_timeout_s": 1.0,
    }
    data.update(overrides)
    return parse_config(data)


def write_agent_yaml(path: Path, broker_url: str, **overrides: Any) -> Path:
    import yaml

    data: dict[str, Any] = {
        "device_id": "dev-1",
        "broker_url": broker_url,
        "state_dir": "./state",
        "telemetry_interval_s": 0.5,
        "api_port": 0,
        "bake_s": 0.3,
        "fetch_window_blocks": 8,
        "fetch_timeout_s": 1.0,
    }
    data.update(overrides)
    path.write_text(yaml.safe_dump(data))
    return path


class FakeServer:
    """Answers FetchRequests with frames and records what the agent publishes."""

    def __init__(self, broker_url: str, device_id: str = "dev-1") -> None:
        self.device_id = device_id
        self.inbox: queue.Queue[Inbound | Connection] = queue.Queue()
        self.client = MqttClient(f"fake-server-{uuid.uuid4().hex[:8]}",
                                 BrokerAddress.from_url(broker_url), self.inbox)
        for kind in ("fetch", "telemetry", "events", "state", "upload"):
            self.client.subscribe(topics.device_topic(device_id, kind), 1)
        self.artifacts: dict[str, bytes] = {}
        self.block_sizes: dict[str, int] = {}
        self.sent: Counter[tuple[str, int]] = Counter()
        self.bytes_sent = 0
        self.corrupt_once: set[tuple[str, int]] = set()
        self.block_delay_s = 0.0
        self.paused = threading.Event()
        self.telemetry: list[TelemetryBatch] = []
        self.events: list[EventMessage] = []
        self.states: list[StateMessage] = []
        self.requests: list[FetchRequest] = []
        self.uploads: list[bytes] = []  # raw d/{id}/upload payloads (announce + frames)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeServer:
        self.client.start()
        assert self.client.wait_connected(10)
        self._thread.start()
        time.sleep(0.2)  # let the SUBACKs land before the agent talks
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.stop()

    # -- server side -------------------------------------------------------------------
    def offer(self, sha256: str, data: bytes, block_size: int) -> None:
        self.artifacts[sha256] = data
        self.block_sizes[sha256] = block_size

    def assign(self, sha256: str, data: bytes, *, release: str, sequence: int,
               block_size: int = 16384, **extra: Any) -> DesiredAssignment:
        self.offer(sha256, data, block_size)
        assignment = DesiredAssignment(
            device_id=self.device_id, release=release, target=f"packages/{sha256}.jfpkg",
            sha256=sha256, length=len(data), block_size=block_size, sequence=sequence,
            issued_at=time.time(), **extra,
        )
        self.publish_desired(assignment.to_bytes())
        return assignment

    def publish_desired(self, payload: bytes, retain: bool = True) -> None:
        self.client.publish(topics.desired(self.device_id), payload, retain=retain)

    def event_types(self) -> list[str]:
        return [e.type for e in list(self.events)]

    def latest_state(self) -> StateMessage | None:
        return self.states[-1] if self.states else None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if not isinstance(item, Inbound):
                continue
            kind = topics.parse(item.topic).kind
            if kind == "fetch":
                self._serve(decode("fetch", item.payload))
            elif kind == "telemetry":
                self.telemetry.append(decode("telemetry", item.payload))
            elif kind == "events":
                self.events.append(decode("events", item.payload))
            elif kind == "upload":
                self.uploads.append(item.payload)
            elif kind == "state" and item.payload:
                self.states.append(decode("state", item.payload))

    def _serve(self, request: FetchRequest) -> None:
        self.requests.append(request)
        data = self.artifacts.get(request.sha256)
        if data is None:
            return
        size = self.block_sizes[request.sha256]
        count = -(-len(data) // size)
        for start, end in request.ranges:
            for index in range(start, min(end, count)):
                while self.paused.is_set() and not self._stop.is_set():
                    time.sleep(0.01)
                payload = data[index * size : (index + 1) * size]
                frame = encode_frame(request.sha256, index, count, index * size, payload)
                key = (request.sha256, index)
                if key in self.corrupt_once:
                    self.corrupt_once.discard(key)
                    frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
                self.sent[key] += 1
                self.bytes_sent += len(payload)
                self.client.publish(topics.blocks(self.device_id), frame)
                if self.block_delay_s:
                    time.sleep(self.block_delay_s)


def read_json(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result
