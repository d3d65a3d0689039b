"""Which release the console's "Roll back" assigns."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session

from fleet_server.console.views import rollback_target
from fleet_server.db import create_tables, make_engine
from fleet_server.models import Assignment, Device, Package, Release


def _fleet(tmp_path: Path, history: list[tuple[str, str]], active: str, known_good: str):
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_tables(engine)
    session = Session(engine)
    for i, name in enumerate(("r1", "r2", "r3")):
        sha = f"{i}" * 64
        session.add(Package(sha256=sha, name=name, version="1", length=1, created_at=0.0))
        session.commit()
        session.add(Release(name=name, package_sha256=sha, created_at=0.0))
    device = Device(
        id="cam-1", registered_at=0.0, active_release=active, known_good_release=known_good
    )
    session.add(device)
    session.commit()
    for seq, (release, status) in enumerate(history, start=1):
        session.add(
            Assignment(
                device_id="cam-1",
                release=release,
                sha256="0" * 64,
                length=1,
                block_size=1,
                sequence=seq,
                issued_at=float(seq),
                status=status,
                payload="{}",
            )
        )
    session.commit()
    return session, device


def test_on_trial_goes_back_to_known_good(tmp_path):
    session, device = _fleet(tmp_path, [("r1", "committed"), ("r2", "trial")], "r2", "r1")
    assert rollback_target(session, device) == "r1"


def test_after_a_revert_it_never_offers_the_reverted_release(tmp_path):
    session, device = _fleet(tmp_path, [("r1", "committed"), ("r2", "reverted")], "r1", "r1")
    assert rollback_target(session, device) is None


def test_committed_release_goes_back_to_the_one_before(tmp_path):
    history = [("r1", "superseded"), ("r3", "failed"), ("r2", "committed")]
    session, device = _fleet(tmp_path, history, "r2", "r2")
    assert rollback_target(session, device) == "r1"
