"""Telemetry ingest semantics (the fast path: Core insert that skips duplicates, Core
``last_seen`` updates), on SQLite and, with JETFLEET_TEST_DATABASE=postgres, PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import Session, func, select

from fleet_server.db import create_tables, make_engine
from fleet_server.ingest import Ingested, write_batch
from fleet_server.models import Device, Telemetry
from jetfleet.messages import StateMessage, TelemetryBatch
from tests.server.conftest import make_settings


def batch(device: str, seqs: list[int], dropped: int = 0, base: float = 1000.0) -> TelemetryBatch:
    samples: list[dict[str, Any]] = [
        {"seq": s, "ts": base + s, "system": {"cpu_pct": 1.0}, "inference": {}} for s in seqs
    ]
    return TelemetryBatch.model_validate(
        {"device_id": device, "samples": samples, "dropped": dropped}
    )


def test_duplicates_last_seen_and_dropped(tmp_path: Path) -> None:
    engine = make_engine(make_settings(tmp_path).db_url)
    create_tables(engine)

    def run(*items: Ingested) -> None:
        with Session(engine) as session:
            write_batch(session, list(items))

    def device(name: str) -> Device:
        with Session(engine) as session:
            found = session.get(Device, name)
            assert found is not None
            return found

    def count(name: str) -> int:
        with Session(engine) as session:
            query = select(func.count()).select_from(Telemetry).where(Telemetry.device_id == name)
            return int(session.exec(query).one())

    def tel(name: str, seqs: list[int], at: float, **kw: Any) -> Ingested:
        retained = kw.pop("retained", False)
        return Ingested("telemetry", name, batch(name, seqs, **kw), retained, at)

    run(tel("a", [0, 1, 2], 10.0))  # a new device is registered from telemetry alone
    assert (count("a"), device("a").last_seen) == (3, 10.0)
    run(tel("a", [1, 2, 3], 12.0), tel("a", [3, 4], 11.0))  # re-delivery + in-batch repeat
    assert (count("a"), device("a").last_seen) == (5, 12.0)
    run(tel("a", [5], 9.0), tel("a", [6], 50.0, retained=True))  # never moves back
    assert (count("a"), device("a").last_seen) == (7, 12.0)
    run(tel("a", [7, 8], 13.0, dropped=4))
    run(tel("a", [7, 8], 14.0, dropped=4))  # the same batch again: dropped counted once
    assert (device("a").telemetry_dropped, device("a").last_seen, count("a")) == (4, 14.0, 9)
    run(tel("a", [0, 1], 15.0, base=5000.0))  # a counter restart after a reboot is new data
    assert count("a") == 11
    run(tel("b", [0], 1.0))
    run(
        Ingested(
            "state", "a", StateMessage(device_id="a", online=True, tags={"x": "y"}), False, 16.0
        ),
        tel("a", [9], 17.0),
        tel("b", [0, 1], 18.0),
    )
    a = device("a")
    assert (a.online, a.last_seen, a.tags, count("a")) == (True, 17.0, {"x": "y"}, 12)
    assert (device("b").last_seen, count("b")) == (18.0, 2)
    run(Ingested("state", "c", StateMessage(device_id="c", online=False), True, 1.0))
    with Session(engine) as session:
        c = session.get(Device, "c")
        assert c is not None
        c.last_seen = None
        session.add(c)
        session.commit()
    run(tel("c", [0], 30.0))
    assert device("c").last_seen == 30.0
