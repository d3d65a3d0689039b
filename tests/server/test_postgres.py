"""The same code on PostgreSQL (psycopg 3): a throwaway cluster started on a free port
(``tests/support/postgres.py``), or the scratch database ``JETFLEET_TEST_POSTGRES_URL``
names. Every test starts from empty tables."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, SQLModel

from fleet_server import create_app
from fleet_server.db import make_engine
from fleet_server.models import Package
from jetfleet.messages import EventMessage, TelemetryBatch, TelemetrySample
from tests.server.conftest import SimDevice, make_settings, release, wait_for
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import PostgresCluster, find_pg_bin


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    url = os.environ.get("JETFLEET_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if find_pg_bin() is None:
        pytest.fail("PostgreSQL is not installed; `make test` installs it")
    cluster = PostgresCluster().start()
    try:
        yield cluster.create_database("fleet")
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    engine = make_engine(pg_database)
    SQLModel.metadata.drop_all(engine)
    engine.dispose()
    return pg_database


def test_rest_flow_on_postgres(
    tmp_path: Path, mosquitto: MosquittoBroker, pg_url: str, package_path: Path
) -> None:
    settings = make_settings(tmp_path, broker_url=mosquitto.url, database_url=pg_url)
    with TestClient(create_app(settings)) as http:
        for device_id, site in (("cam-1", "lab"), ("cam-2", "yard")):
            assert (
                http.post(
                    "/api/v1/devices", json={"id": device_id, "tags": {"site": site}}
                ).status_code
                == 201
            )
        assert [
            d["id"] for d in http.get("/api/v1/devices", params={"tag": "site=yard"}).json()
        ] == ["cam-2"]
        rel = release(http, package_path)
        dup = http.post(
            "/api/v1/releases", json={"name": "tiny-1", "package_sha256": rel["package_sha256"]}
        )
        assert dup.status_code == 409
        body = {"release": "tiny-1", "device_ids": ["cam-1", "cam-2"]}
        assert http.post("/api/v1/assignments", json=body).status_code == 201
        assert http.post("/api/v1/assignments", json=body).status_code == 201
        history = http.get("/api/v1/devices/cam-1/assignments").json()
        assert [(a["sequence"], a["status"]) for a in history] == [(2, "issued"), (1, "superseded")]
        assert http.get("/healthz").json()["database"] is True


def test_gateway_ingest_on_postgres(
    tmp_path: Path, mosquitto: MosquittoBroker, pg_url: str, devices: Callable[..., SimDevice]
) -> None:
    settings = make_settings(tmp_path, broker_url=mosquitto.url, database_url=pg_url)
    with TestClient(create_app(settings)) as http:
        cam = devices("cam-1")
        cam.state(active_release="r1", tags={"site": "lab"})
        samples = [TelemetrySample(ts=100.0 + i, seq=i) for i in range(3)]
        batch = TelemetryBatch(device_id="cam-1", samples=samples, dropped=2)
        cam.send("telemetry", batch)
        cam.send("telemetry", batch)
        event = EventMessage(device_id="cam-1", id="e1", ts=1.0, type="agent.started")
        cam.send("events", event)
        cam.send("events", event)
        wait_for(lambda: len(http.get("/api/v1/events").json()) == 1, what="event")
        rows = http.get("/api/v1/telemetry", params={"device_id": "cam-1"}).json()
        assert [r["seq"] for r in rows] == [0, 1, 2]
        device = http.get("/api/v1/devices/cam-1").json()
        assert (device["online"], device["telemetry_dropped"], device["tags"]) == (
            True,
            2,
            {"site": "lab"},
        )


def test_package_lengths_past_int32_fit_on_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url)
    SQLModel.metadata.create_all(engine)
    big = 3 * 1024**3
    with Session(engine) as session:
        session.add(Package(sha256="b" * 64, name="big", version="1", length=big, created_at=1.0))
        session.commit()
    with Session(engine) as session:
        stored = session.get(Package, "b" * 64)
        assert stored is not None
        assert stored.length == big
    engine.dispose()
