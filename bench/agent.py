"""Agent benchmark: inference overhead, local API throughput, RSS.

Run: ``.venv/bin/python bench/agent.py``; writes ``bench/results/agent.json``.

1. *overhead*: the agent's in-process path (``InferenceService`` over an ``EngineSlot``
   holding an engine from ``load_engine`` with the ONNX Runtime backend) vs a bare
   ``onnxruntime.InferenceSession`` of the same model bytes and thread settings
   (intra-op 1, inter-op 1), batch 1. The two alternate call by call; per round the
   median of ``--runs`` calls each; the result is the median over ``--rounds`` rounds.
2. *API throughput* and *RSS*: broker + server + two real agent processes that receive
   the package over MQTT (OTA) and serve it: one with the default ``serving`` config
   (dynamic batching, ``max_batch_size`` 8), one with ``max_batch_size: 1``.
   ``--clients`` threads with keep-alive connections POST single-row JSON requests to
   ``/v1/infer`` for ``--seconds`` s per agent, alternating agents, ``--repeats`` times;
   the median throughput is reported. RSS is the agent process's, after serving.

The model is the digits package from ``model_builder.build_digits_package`` (trained in
tens of seconds; ``--tiny`` uses the test MLP instead).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench.common import start_broker, start_server, write_result  # noqa: E402
from tests.support.procs import AgentProc, wait_for  # noqa: E402


def build_package(out: Path, tiny: bool) -> Any:
    if not tiny:
        try:
            from model_builder import build_digits_package

            return build_digits_package(out)
        except ImportError as exc:
            print(f"model_builder unavailable ({exc}); using the tiny test model")
    from tests.support.tinymodel import make_package

    return make_package(out / "tiny.jfpkg")


def overhead(info: Any, runs: int, rounds: int) -> dict[str, Any]:
    import onnxruntime as ort

    from edge_agent.engine import EngineSlot, InferenceService, load_engine
    from edge_agent.runtime import backend_factory
    from edge_agent.telemetry import InferenceStats
    from jetfleet.package import read_package

    engine = load_engine(info.path, info.sha256, "bench", backend_factory("onnxruntime"), 1)
    slot = EngineSlot()
    slot.swap(engine)
    service = InferenceService(slot, InferenceStats())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    model = read_package(info.path).variant("onnxruntime")
    bare = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    spec = engine.inputs[0]
    shape = tuple(1 if d is None else d for d in spec.shape)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    feed = {spec.name: x}
    for _ in range(200):  # warm-up
        service.infer(feed)
        bare.run(None, feed)
    agent_med, bare_med = [], []
    clock = time.perf_counter
    for _ in range(rounds):
        a, b = [], []
        for _ in range(runs):
            t = clock()
            service.infer(feed)
            a.append(clock() - t)
            t = clock()
            bare.run(None, feed)
            b.append(clock() - t)
        agent_med.append(statistics.median(a))
        bare_med.append(statistics.median(b))
    agent_us = statistics.median(agent_med) * 1e6
    bare_us = statistics.median(bare_med) * 1e6
    slot.swap(None)
    return {
        "input_shape": list(shape),
        "agent_us": round(agent_us, 1),
        "bare_ort_us": round(bare_us, 1),
        "overhead_pct": round((agent_us - bare_us) / bare_us * 100, 2),
        "overhead_us": round(agent_us - bare_us, 1),
        "rounds": rounds,
        "runs_per_round": runs,
    }


def load(url: str, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    counts = [0] * clients
    errors = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/infer", body, headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                ok = False
            if ok:
                counts[k] += 1
                latencies[k].append(time.perf_counter() - t)
            else:
                errors[k] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    started = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    span = time.monotonic() - started
    lat = sorted(x for row in latencies for x in row)
    return {
        "rps": round(sum(counts) / span, 1),
        "errors": sum(errors),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else float("nan"),
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else float("nan"),
    }


def api_and_rss(info: Any, workdir: Path, clients: int, seconds: float,
                repeats: int) -> dict[str, Any]:
    from jetfleet.client import FleetClient

    broker = start_broker(workdir)
    server = start_server(workdir / "srv", broker.url)
    agents = {
        "batching": AgentProc(workdir / "agents", "bench-batching", broker.url,
                              telemetry_interval_s=5),
        "no_batching": AgentProc(workdir / "agents", "bench-nobatch", broker.url,
                                 telemetry_interval_s=5, serving={"max_batch_size": 1}),
    }
    try:
        FleetClient(server.url).upload_package(info.path)
        server.api("POST", "/api/v1/releases", {"name": "bench-1", "package_sha256": info.sha256})
        ids = [a.device_id for a in agents.values()]

        def online() -> bool:
            devs = {d["id"]: d for d in server.api("GET", "/api/v1/devices")}
            return all(devs.get(i, {}).get("online") for i in ids)

        wait_for("agents online", online, 60)
        rss_idle = {k: psutil.Process(a.popen.pid).memory_info().rss / 2**20
                    for k, a in agents.items()}
        server.api("POST", "/api/v1/assignments", {"release": "bench-1", "device_ids": ids})

        def serving() -> bool:
            devs = {d["id"]: d for d in server.api("GET", "/api/v1/devices")}
            return all(devs[i].get("active_sha256") == info.sha256 and devs[i].get("serving")
                       for i in ids)

        wait_for("agents serving", serving, 180)
        rss_loaded = {k: psutil.Process(a.popen.pid).memory_info().rss / 2**20
                      for k, a in agents.items()}
        urls = {k: a.api_url() for k, a in agents.items()}
        from jetfleet.package import read_package

        card = read_package(info.path).card
        spec = card.inputs[0]
        shape = [1 if not isinstance(d, int) else d for d in spec.shape]
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        body = json.dumps({"inputs": {spec.name: x.tolist()}}).encode()
        for url in urls.values():  # warm-up
            load(url, body, clients, 1.0)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in agents}
        for _ in range(repeats):
            for k, url in urls.items():
                runs[k].append(load(url, body, clients, seconds))
        rss_after = {k: psutil.Process(a.popen.pid).memory_info().rss / 2**20
                     for k, a in agents.items()}
    finally:
        for agent in agents.values():
            agent.stop()
        server.stop()
        broker.stop()
    out: dict[str, Any] = {"clients": clients, "seconds": seconds, "repeats": repeats}
    for k in agents:
        best = sorted(runs[k], key=lambda r: r["rps"])[len(runs[k]) // 2]
        out[k] = {"rps": best["rps"], "p50_ms": best["p50_ms"], "p99_ms": best["p99_ms"],
                  "errors": sum(r["errors"] for r in runs[k]),
                  "all_rps": [r["rps"] for r in runs[k]],
                  "rss_idle_mb": round(rss_idle[k], 1),
                  "rss_loaded_mb": round(rss_loaded[k], 1),
                  "rss_after_load_mb": round(rss_after[k], 1)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Agent inference/API/RSS benchmark")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the tiny test MLP, no training")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        (work / "pkg").mkdir()
        info = build_package(work / "pkg", args.tiny)
        result: dict[str, Any] = {"model": Path(info.path).name, "package_bytes": info.length}
        result["overhead"] = overhead(info, args.runs, args.rounds)
        print(result["overhead"], flush=True)
        result["api"] = api_and_rss(info, work, args.clients, args.seconds, args.repeats)
        print(result["api"], flush=True)
    b, n = result["api"]["batching"], result["api"]["no_batching"]
    result["summary"] = {
        "overhead_pct": result["overhead"]["overhead_pct"],
        "api_rps_batching": b["rps"],
        "api_rps_no_batching": n["rps"],
        "agent_rss_mb": max(b["rss_after_load_mb"], n["rss_after_load_mb"]),
    }
    print(write_result("agent", result))


if __name__ == "__main__":
    main()
