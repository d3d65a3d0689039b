"""Self-heal benchmark (issue 5): revert speed and local latency during a good swap.

Run: ``.venv/bin/python bench/selfheal.py`` → ``bench/results/selfheal.json``.

1. Trips: a known-good release serves steady in-process traffic; a release ~4x slower
   goes on trial; the p95 rule trips; we time trip → serving known-good (the watchdog's
   own measure, from the trip decision to the pointer swap done) over >= 20 trips.
2. Swap: concurrent clients over the local HTTP API; p99 in steady state, then p99
   while good releases are swapped in repeatedly; every non-200 counts as failed.
All engines are real ONNX Runtime sessions of tiny packages (tests/support/tinymodel.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.activation import Activator  # noqa: E402
from edge_agent.api import ApiServer  # noqa: E402
from edge_agent.batching import Batcher  # noqa: E402
from edge_agent.engine import EngineSlot, InferenceService  # noqa: E402
from edge_agent.errors import AgentError  # noqa: E402
from edge_agent.rules import RequestRule, ServingConfig, WatchdogConfig  # noqa: E402
from edge_agent.runtime import OnnxRuntimeBackend  # noqa: E402
from edge_agent.slots import SlotStore  # noqa: E402
from edge_agent.state import StateStore  # noqa: E402
from edge_agent.telemetry import InferenceStats, percentile  # noqa: E402
from edge_agent.watchdog import RequestLog, Watchdog  # noqa: E402
from tests.support.tinymodel import make_package  # noqa: E402


class Stack:
    def __init__(self, root: Path, packages: list) -> None:
        for info in packages:
            slot = root / "slots" / info.sha256
            slot.mkdir(parents=True, exist_ok=True)
            shutil.copy(info.path, slot / "package.jfpkg")
        self.now = 1000.0
        store = StateStore(root)
        self.engines = EngineSlot()
        self.activator = Activator(
            state=store.load(), store=store, slots=SlotStore(root / "slots"),
            engines=self.engines, factory=OnnxRuntimeBackend, threads=1, bake_s=1e9,
            clock=lambda: self.now, emit=lambda *a, **k: None, on_change=lambda: None,
        )
        self.service = InferenceService(self.engines, InferenceStats())
        self.log = RequestLog()
        self.service.observer = self.log.record
        self.batcher = Batcher(self.service, ServingConfig(max_batch_size=8,
                                                           max_queue_delay_ms=1, workers=2))
        rule = RequestRule(metric="p95_latency_ratio", threshold=2.0, window_s=5,
                           min_requests=30)
        self.watchdog = Watchdog(
            WatchdogConfig(interval_s=0.01, rules=[rule]), activator=self.activator,
            log=self.log, limiter=None, gpu=None, emit=lambda *a, **k: None,
            on_change=lambda: None,
        )

    def commit(self, info) -> None:
        assert self.activator.activate(info.sha256, "good", 1)
        self.now += 2e9
        assert self.activator.tick()


def in_process_clients(stack: Stack, n: int, stop: threading.Event, out: list[bool]) -> list:
    def run(seed: int) -> None:
        x = np.random.default_rng(seed).random((1, 64), dtype=np.float32)
        while not stop.is_set():
            try:
                stack.batcher.infer({"input": x})
                out.append(True)
            except AgentError:
                out.append(False)
            time.sleep(0.0005)
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def bench_trips(root: Path, good, slow, trips: int) -> dict:
    stack = Stack(root / "trips", [good, slow])
    stack.commit(good)
    stack.batcher.start()
    stop, results = threading.Event(), []
    threads = in_process_clients(stack, 2, stop, results)
    times: list[float] = []
    time.sleep(0.5)  # baseline traffic on known-good
    for _ in range(trips):
        assert stack.activator.activate(slow.sha256, "slow", 2)
        stack.now += 1
        deadline = time.monotonic() + 20
        while stack.engines.current.sha256 != good.sha256:  # type: ignore[union-attr]
            stack.watchdog.tick()
            if time.monotonic() > deadline:
                raise SystemExit("the watchdog did not trip within 20 s")
            time.sleep(0.002)
        assert stack.watchdog.last_revert_ms is not None
        times.append(stack.watchdog.last_revert_ms)
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(5)
    stack.batcher.stop()
    times.sort()
    return {"revert_ms_p50": round(statistics.median(times), 3),
            "revert_ms_p99": round(percentile(times, 99) or 0.0, 3), "trips": len(times),
            "trip_failed_requests": results.count(False), "trip_requests": len(results)}


def http_clients(url: tuple[str, int], n: int, stop: threading.Event,
                 out: list[tuple[float, int]]) -> list:
    def run(seed: int) -> None:
        x = np.random.default_rng(seed).random((1, 64), dtype=np.float32)
        body = json.dumps({"inputs": {"input": x.tolist()}}).encode()
        conn = http.client.HTTPConnection(*url, timeout=10)
        while not stop.is_set():
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/infer", body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(*url, timeout=10)
            out.append(((time.perf_counter() - start) * 1000.0, status))
        conn.close()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def bench_swap(root: Path, releases: list, clients: int, phase_s: float, swaps: int) -> dict:
    stack = Stack(root / "swap", releases)
    stack.commit(releases[0])
    stack.batcher.start()
    api = ApiServer(("127.0.0.1", 0), stack.batcher, lambda: (True, {}), lambda: "")
    api.start()
    address = (str(api.server_address[0]), int(api.server_address[1]))
    stop = threading.Event()
    steady: list[tuple[float, int]] = []
    threads = http_clients(address, clients, stop, steady)
    time.sleep(0.5)
    steady.clear()  # warm-up excluded
    time.sleep(phase_s)
    swapping: list[tuple[float, int]] = []
    for t in threads:
        stop.set()
        t.join(10)
    stop = threading.Event()
    threads = http_clients(address, clients, stop, swapping)
    for i in range(swaps):
        info = releases[1 + i % (len(releases) - 1)]
        stack.activator.activate(info.sha256, f"r{i}", 2 + i)
        stack.activator.commit()
        time.sleep(phase_s / swaps)
    stop.set()
    for t in threads:
        t.join(10)
    api.stop()
    stack.batcher.stop()
    steady_ms = sorted(ms for ms, _ in steady)
    swap_ms = sorted(ms for ms, _ in swapping)
    return {
        "swap_failed_requests": sum(1 for _, s in swapping if s != 200),
        "swap_requests": len(swapping), "swaps": swaps,
        "swap_p99_ms": round(percentile(swap_ms, 99) or 0.0, 3),
        "steady_p99_ms": round(percentile(steady_ms, 99) or 0.0, 3),
        "steady_requests": len(steady),
        "steady_failed_requests": sum(1 for _, s in steady if s != 200),
        "clients": clients,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=25)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--phase-s", type=float, default=5.0)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/selfheal.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        good = make_package(root / "good.jfpkg", version="1", seed=1)
        alt = make_package(root / "alt.jfpkg", version="2", seed=2)
        slow = make_package(root / "slow.jfpkg", version="3", seed=1, extra_matmuls=600)
        result = bench_trips(root, good, slow, args.trips)
        result.update(bench_swap(root, [good, alt, good], args.clients, args.phase_s,
                                 args.swaps))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
