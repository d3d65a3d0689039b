"""Fleet ingest benchmark: N simulated devices at ``rate`` telemetry batches/s for D s
against Mosquitto (DESIGN §2 settings) and the real server process.

Run: ``.venv/bin/python bench/fleet.py --devices 500,1000,2000 --duration 30``
(``--postgres`` stores in a throwaway PostgreSQL cluster instead of SQLite).
Writes ``bench/results/fleet.json``: the keys of the largest run at the top level,
every run under ``runs``.

Phases, one invocation:

1. *ceiling* (broker only, no server): simfleet offers far more telemetry than the
   server ingests while a bare paho subscriber counts what the broker delivers on
   ``jetfleet/v1/d/+/telemetry``; its rate is the ceiling of the broker + one Python
   subscriber on this machine.
2. per N: a fresh server and database; ``bench/simfleet.py`` (its own process) connects
   N devices and sends for D s. The bench polls the telemetry table every
   ``--poll`` s for new rows; a row's latency is (poll time - sample ts), where ts is
   the device's send time: publish→stored, overstated by up to one poll interval.
   psutil samples the server's CPU (% of one core) and RSS. After the sim ends the bench
   waits for the stored count to settle, stops the server and counts rows by SQL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from bench.common import (  # noqa: E402
    ProcSampler,
    percentile,
    raise_nofile,
    server_metrics,
    start_broker,
    start_server,
    write_result,
)
from jetfleet import topics  # noqa: E402

SIMFLEET = ROOT / "bench" / "simfleet.py"


def run_sim(
    broker_url: str, devices: int, rate: float, duration: float, workdir: Path, prefix: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, ready = workdir / f"{prefix}-sim.json", workdir / f"{prefix}-ready.json"
    log = (workdir / f"{prefix}-sim.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(SIMFLEET), "--devices", str(devices), "--rate", str(rate),
         "--duration", str(duration), "--broker", broker_url, "--prefix", prefix,
         "--ready-file", str(ready), "--out", str(out)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    return proc, out, ready


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"simfleet exited with {proc.returncode} before {path.name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"simfleet did not write {path.name} in {timeout}s")
        time.sleep(0.1)


# -- phase 1: the broker's delivery ceiling ---------------------------------------------
class BareSubscriber:
    """A plain paho subscriber that only counts messages."""

    def __init__(self, host: str, port: int) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare-sub",
                                  protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topics.subscription("telemetry"), 1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def measure_ceiling(broker: Any, workdir: Path, seconds: float) -> dict[str, Any]:
    sub = BareSubscriber(broker.host, broker.port)
    try:
        if not sub.subscribed.wait(10):
            raise RuntimeError("bare subscriber did not subscribe")
        devices, rate = 200, 100.0  # offers 20,000 msg/s: more than one core of sim can send
        proc, out, _ready = run_sim(broker.url, devices, rate, seconds, workdir, "ceiling")
        proc.wait(seconds + 120)
        sim = json.loads(out.read_text())
        seen, deadline = -1, time.monotonic() + 60
        while sub.count < sim["sent"] and sub.count != seen and time.monotonic() < deadline:
            seen = sub.count
            time.sleep(1.0)  # the broker still delivers its backlog
    finally:
        sub.stop()
    span = max(sub.last - sub.first, 1e-9)
    return {
        "ceiling_rate": round(sub.count / span, 1),
        "ceiling_sent": sim["sent"],
        "ceiling_received": sub.count,
        "ceiling_offered_rate": round(sim["sent"] / max(
            sim["telemetry_ended"] - sim["telemetry_started"], 1e-9), 1),
    }


# -- phase 2: one fleet run -------------------------------------------------------------
class StoredPoller:
    """Polls the telemetry table for new rows; records (poll time - sample ts)."""

    def __init__(self, url: str, prefix: str, interval: float) -> None:
        self.engine = create_engine(url)
        self.prefix = prefix
        self.interval = interval
        self.latencies: list[float] = []
        self.first_stored = self.last_stored = 0.0
        self.count = 0
        self._last_id = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-poller", daemon=True)

    def start(self) -> StoredPoller:
        self._thread.start()
        return self

    def _loop(self) -> None:
        query = text(
            "SELECT id, ts FROM telemetry WHERE id > :last AND device_id LIKE :p ORDER BY id"
        )
        while not self._stop.wait(self.interval):
            try:
                with self.engine.connect() as conn:
                    rows = conn.execute(query, {"last": self._last_id,
                                                "p": self.prefix + "-%"}).all()
            except Exception:  # table not created yet, or locked for a moment
                continue
            now = time.time()
            if not rows:
                continue
            self._last_id = rows[-1][0]
            if not self.count:
                self.first_stored = now
            self.last_stored = now
            self.count += len(rows)
            self.latencies.extend(now - ts for _id, ts in rows)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def final_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                text("SELECT COUNT(*) FROM telemetry WHERE device_id LIKE :p"),
                {"p": self.prefix + "-%"},
            ).scalar_one())


def fleet_run(
    broker: Any, workdir: Path, devices: int, rate: float, duration: float, poll: float,
    database_url: str | None, profile: bool,
) -> dict[str, Any]:
    prefix = f"fleet{devices}"
    srvdir = workdir / prefix
    server = start_server(srvdir, broker.url, database_url=database_url)
    db_url = database_url or f"sqlite:///{srvdir / 'server' / 'fleet.db'}"
    poller = StoredPoller(db_url, prefix, poll).start()
    sampler: ProcSampler | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        proc, out, ready = run_sim(broker.url, devices, rate, duration, workdir, prefix)
        wait_file(ready, proc, 300)
        assert broker.proc is not None
        sampler = ProcSampler({"server": server.popen.pid, "broker": broker.proc.pid,
                               "sim": proc.pid}).start()
        if profile:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                 str(server.popen.pid), "-d", str(int(duration)), "-r", "50", "-f", "raw",
                 "-o", str(workdir / f"{prefix}-profile.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        proc.wait(duration + 180)
        sim = json.loads(out.read_text())
        sent = int(sim["sent"])
        # Drain: until everything is stored, or nothing new arrives for 5 s (max 120 s).
        deadline, last_change, seen = time.monotonic() + 120, time.monotonic(), -1
        while time.monotonic() < deadline and poller.count < sent:
            if poller.count != seen:
                seen, last_change = poller.count, time.monotonic()
            elif time.monotonic() - last_change > 5:
                break
            time.sleep(0.5)
        metrics = server_metrics(server)
        sampler.stop()
    finally:
        poller.stop()
        if sampler is not None:
            sampler.stop()
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        server.stop()
    stored = poller.final_count()
    t0, t1 = sim["telemetry_started"], sim["telemetry_ended"]
    srv = sampler.summary("server", t0, t1)
    ingest_span = max(poller.last_stored - t0, 1e-9)
    result = {
        "devices": devices,
        "rate_hz": rate,
        "duration_s": duration,
        "sent": sent,
        "stored": stored,
        "lost": sent - stored,
        "p50_latency_s": round(percentile(poller.latencies, 50), 3),
        "p99_latency_s": round(percentile(poller.latencies, 99), 3),
        "server_rss_mb": srv["rss_mb"],
        "server_cpu_pct": srv["cpu_pct"],
        "server_cpu_pct_max": srv["cpu_pct_max"],
        "ingest_rate": round(stored / ingest_span, 1),
        "offered_rate": round(sent / max(t1 - t0, 1e-9), 1),
        "connect_s": sim["connect_s"],
        "sim_unacked": sim["unacked"],
        "broker_cpu_pct": sampler.summary("broker", t0, t1)["cpu_pct"],
        "sim_cpu_pct": sampler.summary("sim", t0, t1)["cpu_pct"],
        "server_inbox_dropped": sum(v for k, v in metrics.items()
                                    if k.startswith("jetfleet_server_inbox_dropped_total")),
        "server_batches": metrics.get("jetfleet_server_ingest_batch_seconds_count", 0),
        "server_batch_seconds_mean": round(
            metrics.get("jetfleet_server_ingest_batch_seconds_sum", 0)
            / max(metrics.get("jetfleet_server_ingest_batch_seconds_count", 0), 1), 4),
        "latency_poll_s": poll,
        "database": "postgresql" if database_url else "sqlite",
    }
    if profile:
        result["profile"] = str(workdir / f"{prefix}-profile.txt")
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fleet ingest benchmark")
    parser.add_argument("--devices", default="5000",
                        help="device count, or a comma list run one after the other")
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=0.2, help="stored-row poll interval, s")
    parser.add_argument("--ceiling-s", type=float, default=8.0)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the server (raw stacks)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--out", default="fleet")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.devices.split(",")]
    raise_nofile(max(counts) * 2 + 4096)
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    broker = start_broker(workdir)
    pg = None
    runs: list[dict[str, Any]] = []
    try:
        ceiling = measure_ceiling(broker, workdir, args.ceiling_s)
        print(json.dumps(ceiling), flush=True)
        for n in counts:
            database_url = None
            if args.postgres:
                from tests.support.postgres import PostgresCluster

                pg = pg or PostgresCluster().start()
                database_url = pg.create_database(f"fleet{n}")
            runs.append(fleet_run(broker, workdir, n, args.rate, args.duration, args.poll,
                                  database_url, args.profile))
    finally:
        broker.stop()
        if pg is not None:
            pg.stop()
        if not args.keep and not args.profile:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    top = {**runs[-1], "ceiling_rate": ceiling["ceiling_rate"]}
    path = write_result(args.out, {**top, "ceiling": ceiling, "runs": runs,
                                   "workdir": str(workdir) if args.keep or args.profile else None})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
