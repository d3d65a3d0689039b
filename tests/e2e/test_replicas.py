"""Scale-out end to end: two server replicas (real processes) on one PostgreSQL and one
Mosquitto, telemetry split by shared subscriptions, rollouts driven by the lease holder."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet_server.db import make_engine
from fleet_server.lease import ROLLOUT_LEASE, holder_of
from fleet_server.models import Telemetry
from jetfleet.client import FleetClient
from jetfleet.messages import TelemetryBatch, TelemetrySample
from jetfleet.mqtt import BrokerAddress
from tests.server.conftest import SimDevice
from tests.server.test_rollouts import Agent
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import PostgresCluster, find_pg_bin
from tests.support.procs import ServerProc, wait_for
from tests.support.tinymodel import make_package

pytestmark = pytest.mark.slow

LEASE_TTL = 3.0


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    if find_pg_bin() is None:
        pytest.fail("PostgreSQL is not installed; `make test` installs it")
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster, tmp_path: Path) -> str:
    return pg_cluster.create_database(f"r{abs(hash(tmp_path.name)) % 10**8}")


def replica(tmp_path: Path, name: str, broker: str, db: str) -> ServerProc:
    env = {
        "JETFLEET_DATA_DIR": str(tmp_path / "shared"),  # artifacts on shared storage
        "JETFLEET_CLIENT_ID": f"replica-{name}",
        "JETFLEET_SHARED_SUBSCRIPTIONS": "true",
        "JETFLEET_LEASE_TTL": str(LEASE_TTL),
        "JETFLEET_ROLLOUT_TICK_INTERVAL": "0.3",
        "JETFLEET_INGEST_BATCH_INTERVAL": "0.05",
    }
    return ServerProc(tmp_path / name, broker, database_url=db, extra_env=env)


def ingested(server: ServerProc, kind: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    pattern = rf'^jetfleet_server_messages_ingested_total{{kind="{kind}"}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def replicas(
    tmp_path: Path, mosquitto: MosquittoBroker, pg_url: str
) -> Iterator[tuple[ServerProc, ServerProc]]:
    a = replica(tmp_path, "a", mosquitto.url, pg_url)
    try:
        a.wait_ready()  # A first: it creates the tables and takes the rollout lease
        b = replica(tmp_path, "b", mosquitto.url, pg_url)
        try:
            b.wait_ready()
            time.sleep(0.5)  # both shared subscriptions in place
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def test_telemetry_is_split_between_replicas_and_stored_exactly_once(
    replicas: tuple[ServerProc, ServerProc], mosquitto: MosquittoBroker, pg_url: str
) -> None:
    a, b = replicas
    names = [f"tele-{i}" for i in range(8)]
    for name in names:
        a.api("POST", "/api/v1/devices", {"id": name})
    broker = BrokerAddress(mosquitto.host, mosquitto.port)
    sims = [SimDevice(name, broker).start() for name in names]
    batches, per_batch = 25, 4
    try:
        for i in range(batches):
            for sim in sims:
                samples = [
                    TelemetrySample(ts=1_000.0 + i * per_batch + j, seq=i * per_batch + j)
                    for j in range(per_batch)
                ]
                sim.send("telemetry", TelemetryBatch(device_id=sim.id, samples=samples))
    finally:
        for sim in sims:
            sim.stop()
    expected = len(names) * batches * per_batch
    engine = make_engine(pg_url)
    try:

        def stored() -> int:
            with Session(engine) as session:
                return int(session.exec(select(func.count()).select_from(Telemetry)).one())

        wait_for("every sample stored", lambda: stored() >= expected, 30)
        time.sleep(0.5)  # a duplicate would show up now
        with Session(engine) as session:
            rows = session.exec(select(Telemetry.device_id, Telemetry.seq)).all()
            per_device = session.exec(
                select(Telemetry.device_id, func.count()).group_by(col(Telemetry.device_id))
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == expected
    assert len(set(rows)) == expected  # no sample twice
    assert dict(per_device) == dict.fromkeys(names, batches * per_batch)
    on_a, on_b = ingested(a, "telemetry"), ingested(b, "telemetry")
    assert on_a > 0, (on_a, on_b)  # both replicas took a share
    assert on_b > 0, (on_a, on_b)
    assert on_a + on_b == len(names) * batches


def test_rollout_survives_the_lease_holder_being_killed(
    replicas: tuple[ServerProc, ServerProc],
    mosquitto: MosquittoBroker,
    pg_url: str,
    tmp_path: Path,
) -> None:
    a, b = replicas
    engine = make_engine(pg_url)
    lab = ["ro-a", "ro-b", "ro-c", "ro-d"]
    broker = BrokerAddress(mosquitto.host, mosquitto.port)
    for name in lab:
        b.api("POST", "/api/v1/devices", {"id": name, "tags": {"site": "lab"}})
    agents = {name: Agent(SimDevice(name, broker).start()) for name in lab}
    stop = threading.Event()

    def pump() -> None:
        while not stop.wait(0.03):
            for agent in agents.values():
                agent.step()

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    try:
        client = FleetClient(b.url)
        for version in ("1", "2"):
            pkg = make_package(
                tmp_path / "pkgs" / f"r{version}.jfpkg", version=version, seed=int(version)
            ).path
            sha = client.upload_package(pkg)["sha256"]
            b.api("POST", "/api/v1/releases", {"name": f"r{version}", "package_sha256": sha})
        b.api("POST", "/api/v1/assignments", {"release": "r1", "device_ids": lab})

        def on_r1() -> bool:
            devices = {d["id"]: d for d in b.api("GET", "/api/v1/devices")}
            return all(devices[n].get("active_release") == "r1" for n in lab)

        wait_for("the lab on r1", on_r1, 30)
        assert holder_of(engine, ROLLOUT_LEASE, time.time()) == "replica-a"
        body = {
            "release": "r2",
            "selector": "site=lab",
            "waves": "1,50%,100%",
            "bake_s": 2.0,
            "wave_timeout_s": 30.0,
        }
        rollout_id = b.api("POST", "/api/v1/rollouts", body)["id"]

        def canary_committed() -> bool:
            # Wait for its events to be stored: a SIGKILL loses what sat in A's inbox.
            rollout = b.api("GET", f"/api/v1/rollouts/{rollout_id}")
            return [d["status"] for d in rollout["devices"]] == ["committed"]

        wait_for("the canary wave issued by replica A", canary_committed, 20)
        assert b.api("GET", f"/api/v1/rollouts/{rollout_id}")["status"] == "running"
        a.kill()
        wait_for(
            "replica B holding the rollout lease",
            lambda: holder_of(engine, ROLLOUT_LEASE, time.time()) == "replica-b",
            LEASE_TTL * 4,
        )

        def completed() -> dict[str, object] | None:
            rollout: dict[str, object] = b.api("GET", f"/api/v1/rollouts/{rollout_id}")
            return rollout if rollout["status"] in ("completed", "halted") else None

        done = wait_for("the rollout finished by replica B", completed, 60)
        assert done["status"] == "completed", done
        statuses = {d["device_id"]: d["status"] for d in done["devices"]}  # type: ignore[attr-defined]
        assert statuses == dict.fromkeys(lab, "committed")
        assert all(agents[n].releases().count("r2") == 1 for n in lab)  # issued once each
    finally:
        stop.set()
        pumper.join(5)
        for agent in agents.values():
            agent.sim.stop()
        engine.dispose()
