"""Telemetry retention: raw rows past the window become 5-minute rollups.

Runs on SQLite, and on PostgreSQL with ``JETFLEET_TEST_DATABASE=postgres``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from fleet_server import create_app
from fleet_server.models import Device, Telemetry
from fleet_server.retention import BUCKET_S, Retention, TelemetryRollup, rollup_cutoff
from tests.server.conftest import make_settings

NOW = 1_700_000_100.0
RAW_S = 3600.0
CUTOFF = rollup_cutoff(NOW, RAW_S)
B0, B1 = CUTOFF - 2 * BUCKET_S, CUTOFF - BUCKET_S


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, telemetry_retention_interval=86_400)
    with TestClient(create_app(settings)) as client:
        yield client


def engine_of(http: TestClient) -> Any:
    return http.app.state.context.engine  # type: ignore[attr-defined]


def sample(seq: int, ts: float, **fields: Any) -> Telemetry:
    return Telemetry(device_id="cam-1", seq=seq, ts=ts, **fields)


def seed(engine: Any) -> None:
    with Session(engine) as session:
        session.add(Device(id="cam-1", registered_at=0.0))
        session.flush()
        session.add_all([
            sample(1, B0 + 10, inference_count=10, inference_errors=1, p95_ms=5.0,
                   cpu_pct=10.0, mem_pct=40.0, release="r1"),
            sample(2, B0 + 20, inference_count=20, inference_errors=0, p95_ms=9.0,
                   cpu_pct=20.0, mem_pct=50.0, release="r1"),
            sample(3, B0 + 30, inference_count=30, inference_errors=2, p95_ms=7.0,
                   cpu_pct=30.0, mem_pct=60.0, release="r2"),
            sample(4, B1 + 5, inference_count=1, gpu_load_pct=50.0, gpu_temp_c=60.0,
                   gpu_power_mw=5000.0, release="r2"),
            sample(5, CUTOFF + 10, release="r2"),  # its bucket has not fully elapsed
            sample(6, NOW - 10, release="r2"),  # inside the raw window
        ])
        ancient = TelemetryRollup(device_id="cam-1", bucket_start=NOW - 3 * 86_400, samples=1)
        session.add(ancient)
        session.commit()


def job(engine: Any, leader: bool = True) -> Retention:
    return Retention(engine, RAW_S, 2 * 86_400, clock=lambda: NOW, leader=lambda: leader)


def rollups(engine: Any) -> list[dict[str, Any]]:
    with Session(engine) as session:
        rows = session.exec(select(TelemetryRollup).order_by(col(TelemetryRollup.bucket_start)))
        return [r.model_dump(exclude={"id"}) for r in rows.all()]


def raw_ts(engine: Any) -> list[float]:
    with Session(engine) as session:
        return sorted(session.exec(select(Telemetry.ts)).all())


def test_old_raw_rows_become_buckets_and_rerunning_changes_nothing(http: TestClient) -> None:
    engine = engine_of(http)
    seed(engine)
    assert job(engine, leader=False).run_once().rolled_up == 0  # another replica's turn
    assert len(raw_ts(engine)) == 6

    result = job(engine).run_once()
    assert (result.rolled_up, result.buckets, result.expired_rollups) == (4, 2, 1)
    assert raw_ts(engine) == [CUTOFF + 10, NOW - 10]
    first, second = rollups(engine)
    assert first["bucket_start"] == B0
    assert first["bucket_s"] == BUCKET_S
    assert first["samples"] == 3
    assert (first["inference_count"], first["inference_errors"]) == (60, 3)
    assert (first["p95_ms_max"], first["p95_ms"]) == (9.0, pytest.approx(7.0))
    assert (first["cpu_pct"], first["mem_pct"]) == (pytest.approx(20.0), pytest.approx(50.0))
    assert first["gpu_load_pct"] is None
    assert first["release"] == "r2"
    assert second["bucket_start"] == B1
    assert (second["gpu_load_pct"], second["gpu_temp_c"], second["gpu_power_mw"]) == (
        50.0, 60.0, 5000.0
    )
    assert second["cpu_pct"] is None

    before = rollups(engine)
    again = job(engine).run_once()
    assert (again.rolled_up, again.buckets, again.expired_rollups) == (0, 0, 0)
    assert rollups(engine) == before
    assert raw_ts(engine) == [CUTOFF + 10, NOW - 10]


def test_a_late_sample_merges_into_its_rolled_up_bucket(http: TestClient) -> None:
    engine = engine_of(http)
    seed(engine)
    job(engine).run_once()
    with Session(engine) as session:
        session.add(sample(7, B0 + 40, inference_count=40, p95_ms=11.0, cpu_pct=40.0,
                           release="r3"))
        session.commit()
    assert job(engine).run_once().rolled_up == 1
    merged = rollups(engine)[0]
    assert merged["samples"] == 4
    assert merged["inference_count"] == 100
    assert merged["p95_ms_max"] == 11.0
    assert merged["cpu_pct"] == pytest.approx(25.0)
    assert merged["release"] == "r3"


def test_api_returns_rollups_for_an_old_range(http: TestClient) -> None:
    engine = engine_of(http)
    seed(engine)
    job(engine).run_once()
    base = {"device_id": "cam-1", "since": B0 - 1000}

    points = http.get("/api/v1/telemetry", params={**base, "resolution": "5m"}).json()
    assert [(p["ts"], p["bucket_s"], p["samples"]) for p in points] == [
        (B0, BUCKET_S, 3), (B1, BUCKET_S, 1)
    ]
    assert points[0]["inference_count"] == 60
    assert points[0]["p95_ms_max"] == 9.0

    raw = http.get("/api/v1/telemetry", params=base).json()
    assert [p["ts"] for p in raw] == [CUTOFF + 10, NOW - 10]

    auto = http.get("/api/v1/telemetry", params={**base, "resolution": "auto"}).json()
    assert [(p["ts"], "bucket_s" in p) for p in auto] == [
        (B0, True), (B1, True), (CUTOFF + 10, False), (NOW - 10, False)
    ]
    newest = http.get("/api/v1/telemetry", params={**base, "resolution": "auto", "limit": 3})
    assert [p["ts"] for p in newest.json()] == [B1, CUTOFF + 10, NOW - 10]
    bad = http.get("/api/v1/telemetry", params={**base, "resolution": "1h"})
    assert bad.status_code == 422
