"""Shared helpers of the benchmarks: paths, the fd limit, a Mosquitto with the DESIGN §2
settings, the real server process, a psutil sampler, percentiles and result files.

Import it from a bench script as ``from bench.common import ...`` after putting the
repository root on ``sys.path`` (every bench script does that first).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.support.mosquitto import PLAIN_CONFIG, MosquittoBroker  # noqa: E402
from tests.support.procs import ServerProc  # noqa: E402

RESULTS = ROOT / "bench" / "results"

# DESIGN §2: tcp_nodelay and raised queue limits (already in the test config), plus room
# for thousands of clients and a bigger inflight window for block fan-out.
BENCH_BROKER_CONFIG = PLAIN_CONFIG.replace(
    "max_queued_messages 100000", "max_queued_messages 1000000\nmax_queued_bytes 0"
) + "max_connections -1\n"


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's open-file limit towards ``want`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_broker(workdir: Path) -> MosquittoBroker:
    raise_nofile()
    return MosquittoBroker(workdir / "mosquitto", BENCH_BROKER_CONFIG).start()


def start_server(
    workdir: Path,
    broker_url: str,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> ServerProc:
    server = ServerProc(workdir, broker_url, database_url=database_url, extra_env=extra_env)
    server.wait_ready()
    return server


def server_metrics(server: ServerProc) -> dict[str, float]:
    """The server's Prometheus counters (``name{labels}`` → value)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


@dataclass
class Sample:
    t: float
    cpu_pct: float
    rss_mb: float


@dataclass
class ProcSampler:
    """Samples CPU % (of one core) and RSS of some processes once per ``interval``."""

    pids: dict[str, int]
    interval: float = 1.0
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ProcSampler:
        procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        for proc in procs.values():
            proc.cpu_percent(None)
        self.samples = {name: [] for name in procs}

        def loop() -> None:
            while not self._stop.wait(self.interval):
                now = time.time()
                for name, proc in procs.items():
                    try:
                        cpu = proc.cpu_percent(None)
                        rss = proc.memory_info().rss / 2**20
                    except psutil.Error:
                        continue
                    self.samples[name].append(Sample(now, cpu, rss))

        self._thread = threading.Thread(target=loop, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, name: str, start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
        window = [s for s in self.samples.get(name, []) if start <= s.t <= end]
        if not window:
            return {"cpu_pct": float("nan"), "cpu_pct_max": float("nan"), "rss_mb": float("nan")}
        return {
            "cpu_pct": round(statistics.fmean(s.cpu_pct for s in window), 1),
            "cpu_pct_max": round(max(s.cpu_pct for s in window), 1),
            "rss_mb": round(max(s.rss_mb for s in window), 1),
        }


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path
