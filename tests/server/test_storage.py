"""The artifact store, the SQLite setup, and batch ingest straight into the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from fleet_server.artifacts import ArtifactStore
from fleet_server.db import create_tables, make_engine
from fleet_server.errors import ArtifactError
from fleet_server.ingest import Ingested, write_batch
from fleet_server.models import Device, Event
from jetfleet.messages import EventMessage, StateMessage


def test_artifact_store_reads_blocks_by_index(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    data = bytes(range(256)) * 10  # 2560 bytes: 2 full 1 KiB blocks and a 512-byte tail
    sha = store.put_bytes(data)
    assert store.path(sha) == tmp_path / "artifacts" / "sha256" / sha[:2] / sha
    assert store.length(sha) == len(data)
    assert store.read_block(sha, 0, 1024) == data[:1024]
    assert store.read_block(sha, 2, 1024) == data[2048:]
    assert list(store.read_blocks(sha, [1, 0], 1024)) == [data[1024:2048], data[:1024]]
    with pytest.raises(ArtifactError, match="outside"):
        store.read_block(sha, 3, 1024)
    with pytest.raises(ArtifactError, match="invalid sha256"):
        store.path("../../etc/passwd")
    assert list(store.tmp_dir.iterdir()) == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db' / 'fleet.db'}")
    create_tables(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000


def test_write_batch_is_one_transaction_and_idempotent(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_tables(engine)
    state = StateMessage(device_id="cam-1", online=True, tags={"site": "lab"})
    event = EventMessage(device_id="cam-1", id="e1", ts=5.0, type="agent.started")
    batch = [
        Ingested("state", "cam-1", state, retained=False, received_at=10.0),
        Ingested("events", "cam-1", event, retained=False, received_at=11.0),
        Ingested("events", "cam-1", event, retained=False, received_at=12.0),
    ]
    with Session(engine) as session:
        write_batch(session, batch)
    with Session(engine) as session:
        write_batch(session, batch)  # a re-delivery changes nothing
        device = session.get(Device, "cam-1")
        assert device is not None
        assert (device.online, device.last_seen, device.tags) == (True, 12.0, {"site": "lab"})
        assert len(session.exec(select(Event)).all()) == 1
    # An event for a device with no state yet registers the device too.
    other = EventMessage(device_id="cam-2", id="e1", ts=1.0, type="agent.started")
    with Session(engine) as session:
        write_batch(session, [Ingested("events", "cam-2", other, False, 20.0)])
        assert session.get(Device, "cam-2") is not None
        assert len(session.exec(select(Event)).all()) == 2
