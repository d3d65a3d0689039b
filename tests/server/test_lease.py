"""Leases (fleet_server/lease.py) on the suite's database: SQLite, or PostgreSQL with
``JETFLEET_TEST_DATABASE=postgres``. One holder at a time; takeover only after expiry."""

from __future__ import annotations

import threading
from pathlib import Path

from fleet_server.db import create_tables, make_engine
from fleet_server.lease import LeaseKeeper, acquire, holder_of, release
from tests.server.conftest import make_settings


def test_one_holder_until_expiry_then_takeover(tmp_path: Path) -> None:
    engine = make_engine(make_settings(tmp_path).db_url)
    create_tables(engine)
    try:
        assert acquire(engine, "job", "a", ttl=10, now=100)
        assert not acquire(engine, "job", "b", ttl=10, now=105)  # a holds it
        assert acquire(engine, "job", "a", ttl=10, now=108)  # renewal → until 118
        assert not acquire(engine, "job", "b", ttl=10, now=115)
        assert holder_of(engine, "job", now=115) == "a"
        assert acquire(engine, "job", "b", ttl=10, now=119)  # a died: b takes over
        assert not acquire(engine, "job", "a", ttl=10, now=120)
        release(engine, "job", "b")
        assert acquire(engine, "job", "a", ttl=10, now=121)  # no wait after a release
        assert acquire(engine, "other", "b", ttl=10, now=121)  # leases are independent
    finally:
        engine.dispose()


def test_racing_replicas_never_both_hold(tmp_path: Path) -> None:
    engine = make_engine(make_settings(tmp_path).db_url)
    create_tables(engine)
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def contend(name: str) -> None:
        barrier.wait()
        if acquire(engine, "race", name, ttl=30, now=1_000):
            wins.append(name)

    threads = [threading.Thread(target=contend, args=(f"r{i}",)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(wins) == 1
        assert holder_of(engine, "race", now=1_000) == wins[0]
    finally:
        engine.dispose()


def test_keeper_renews_lazily_and_hands_over(tmp_path: Path) -> None:
    engine = make_engine(make_settings(tmp_path).db_url)
    create_tables(engine)
    now = [0.0]
    a = LeaseKeeper(engine, "ctl", "a", ttl=9, clock=lambda: now[0])
    b = LeaseKeeper(engine, "ctl", "b", ttl=9, clock=lambda: now[0])
    try:
        assert a.held()
        assert not b.held()
        now[0] = 8.0  # a renews when asked (a third of the TTL has passed)
        assert a.held()
        now[0] = 16.0
        assert not b.held()  # renewed at 8 → valid until 17
        now[0] = 18.0  # a stopped asking (died)
        assert b.held()
        assert not a.held()
        b.release()
        assert a.held()
    finally:
        engine.dispose()
