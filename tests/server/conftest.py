"""Server test fixtures: a real server app (SQLite file in tmp_path), a real Mosquitto,
and :class:`SimDevice`, a device written against the protocol with ``jetfleet.mqtt``."""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from fleet_server import Settings, create_app
from fleet_server.context import ServerContext
from jetfleet import topics
from jetfleet.frames import BlockFrame, decode_frame
from jetfleet.messages import DesiredAssignment, StateMessage, decode
from jetfleet.mqtt import BrokerAddress, Connection, Inbound, MqttClient, Will
from tests.support.mosquitto import MosquittoBroker
from tests.support.polling import wait_until
from tests.support.postgres import PostgresCluster
from tests.support.tinymodel import make_package

T = TypeVar("T")
UNREACHABLE_BROKER = "mqtt://127.0.0.1:9"


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    return wait_until(predicate, timeout, what)


# JETFLEET_TEST_DATABASE=postgres: every test's server uses its own fresh database on one
# session-wide PostgresCluster (keyed by tmp_path, so a restarted server finds its data).
_PG: dict[str, Any] = {}


def _test_database_url(tmp_path: Path) -> str | None:
    if os.environ.get("JETFLEET_TEST_DATABASE", "sqlite") != "postgres":
        return None
    key = str(tmp_path)
    if key not in _PG:
        if "cluster" not in _PG:
            _PG["cluster"] = PostgresCluster().start()
        _PG[key] = _PG["cluster"].create_database(f"t{len(_PG)}")
    url: str = _PG[key]
    return url


@pytest.fixture(scope="session", autouse=True)
def _postgres_cluster() -> Iterator[None]:
    yield
    cluster = _PG.pop("cluster", None)
    if cluster is not None:
        cluster.stop()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "server",
        "broker_url": UNREACHABLE_BROKER,
        "ingest_batch_interval": 0.05,
        "desired_reconcile_delay": 0.3,
        "client_id": f"server-{tmp_path.name[-20:]}",
        "auth_enabled": False,  # auth has its own tests (test_auth.py)
    }
    if "database_url" not in overrides and (url := _test_database_url(tmp_path)):
        values["database_url"] = url
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningServer:
    http: TestClient
    context: ServerContext

    def bad(self, kind: str, reason: str) -> float:
        return self.context.metrics.bad_count(kind, reason)

    def device(self, device_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"/api/v1/devices/{device_id}")
        return response.json() if response.status_code == 200 else None


@pytest.fixture
def api(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[TestClient]:
    """The REST API on a fresh SQLite file (and a broker nobody else uses)."""
    with TestClient(create_app(make_settings(tmp_path, broker_url=mosquitto.url))) as client:
        yield client


@pytest.fixture
def server_factory(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> Iterator[Callable[..., RunningServer]]:
    """Start servers on the Mosquitto fixture (same data dir each time: restarts)."""
    clients: list[TestClient] = []

    def start(**overrides: Any) -> RunningServer:
        settings = make_settings(tmp_path, broker_url=mosquitto.url, **overrides)
        app = create_app(settings)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        running = RunningServer(client, app.state.context)
        wait_for(lambda: running.context.gateway.connected, what="gateway connection")
        return running

    yield start
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory()


class SimDevice:
    """A device that speaks protocol v1 over a real broker (no edge_agent code)."""

    def __init__(self, device_id: str, broker: BrokerAddress, client_cls: type = MqttClient):
        self.id = device_id
        will = Will(
            topics.state(device_id), StateMessage(device_id=device_id, online=False).to_bytes()
        )
        self.client: MqttClient = client_cls(f"sim-{device_id}", broker, will=will)
        self.desired: list[DesiredAssignment] = []
        self.frames: list[BlockFrame] = []
        self.client.subscribe(topics.desired(device_id))
        self.client.subscribe(topics.blocks(device_id))

    def start(self) -> SimDevice:
        self.client.start()
        assert self.client.wait_connected(5), "simulated device could not connect"
        return self

    def stop(self) -> None:
        self.client.stop()

    def publish(self, kind: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(
            topics.device_topic(self.id, kind), payload, qos=1, retain=retain
        )
        info.wait_for_publish(5)

    def send(self, kind: str, message: Any, retain: bool = False) -> None:
        self.publish(kind, message.to_bytes(), retain=retain)

    def state(self, **fields: Any) -> None:
        fields.setdefault("online", True)
        self.send("state", StateMessage(device_id=self.id, **fields), retain=True)

    def pump(self) -> None:
        """Move everything received so far into ``desired`` / ``frames``."""
        while True:
            try:
                item = self.client.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Connection) or not isinstance(item, Inbound):
                continue
            kind = item.topic.rsplit("/", 1)[-1]
            if kind == "desired":
                self.desired.append(decode("desired", item.payload, DesiredAssignment))
            elif kind == "blocks":
                self.frames.append(decode_frame(item.payload))

    def wait_desired(self, count: int = 1, timeout: float = 5.0) -> list[DesiredAssignment]:
        def enough() -> bool:
            self.pump()
            return len(self.desired) >= count

        wait_for(enough, timeout, f"{count} desired assignment(s) on {self.id}")
        return self.desired

    def wait_sequence(self, sequence: int, timeout: float = 5.0) -> DesiredAssignment:
        """Wait until the latest desired assignment received has ``sequence``."""

        def reached() -> bool:
            self.pump()
            return bool(self.desired) and self.desired[-1].sequence == sequence

        wait_for(reached, timeout, f"desired sequence {sequence} on {self.id}")
        return self.desired[-1]

    def wait_frames(self, count: int, timeout: float = 10.0) -> list[BlockFrame]:
        def enough() -> bool:
            self.pump()
            return len(self.frames) >= count

        wait_for(enough, timeout, f"{count} block frame(s) on {self.id}")
        return self.frames


@pytest.fixture
def devices(mosquitto: MosquittoBroker) -> Iterator[Callable[..., SimDevice]]:
    started: list[SimDevice] = []

    def make(device_id: str, client_cls: type = MqttClient, start: bool = True) -> SimDevice:
        sim = SimDevice(device_id, BrokerAddress(mosquitto.host, mosquitto.port), client_cls)
        started.append(sim)
        return sim.start() if start else sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def package_path(tmp_path: Path) -> Path:
    return make_package(tmp_path / "pkgs" / "tiny-1.jfpkg").path


def upload(http: TestClient, path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        response = http.post("/api/v1/packages", files={"file": (path.name, fh)})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def release(http: TestClient, path: Path, name: str = "tiny-1") -> dict[str, Any]:
    package = upload(http, path)
    response = http.post(
        "/api/v1/releases", json={"name": name, "package_sha256": package["sha256"]}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
