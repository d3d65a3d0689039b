"""Render BENCHMARKS.md from bench/results/*.json (so the page always shows what was measured).

python bench/report.py            # writes BENCHMARKS.md at the repository root
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _load(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(value: Any, fmt: str = ".2f") -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def compress() -> list[str]:
    rows = _load("compress")
    if not rows:
        return ["_not run: `make bench-compress`_"]
    lines = [
        "ONNX Runtime on CPU, batch 1, intra-op threads = cores, warm-up then the median of",
        "≥ 50 timed runs, each variant in its own session one after another (idle ORT sessions",
        "spin their threads and distort side-by-side timing). `bench/compress.py`.",
        "",
    ]
    lines += _table(
        [
            "model",
            "variant",
            "size (B)",
            "p50 ms",
            "speedup",
            "size ×",
            "accuracy",
            "top-1 agreement (all / FP32 p≥0.3)",
        ],
        [
            [
                r["model"],
                r["variant"],
                f"{r['size_bytes']:,}",
                _f(r["latency_ms_p50"], ".3f"),
                _f(r["speedup_vs_fp32"]),
                _f(r["size_ratio_vs_fp32"]),
                _f(r["accuracy"] * 100 if r["accuracy"] is not None else None, ".2f"),
                _agreement(r),
            ]
            for r in rows
        ],
    )
    return lines


def _agreement(r: dict[str, Any]) -> str:
    every = _f(_pct(r.get("top1_agreement")))
    return f"{every} / {_f(_pct(r.get('top1_agreement_confident')))}"


def _pct(v: Any) -> Any:
    return None if v is None else v * 100


def selfheal() -> list[str]:
    d = _load("selfheal")
    if not d:
        return ["_not run: `python bench/selfheal.py`_"]
    return [
        "In-process agent with real ONNX Runtime engines; revert = from the watchdog's trip",
        "decision to serving on the known-good engine (it stays loaded during trial);",
        "swap = 10 good swaps under 8 concurrent HTTP clients. `bench/selfheal.py`.",
        "",
        *_table(
            ["figure", "measured", "target"],
            [
                [
                    "revert p50 / p99",
                    f"{_f(d['revert_ms_p50'])} / {_f(d['revert_ms_p99'])} ms ({d['trips']} trips)",
                    "≤ 1000 ms",
                ],
                [
                    "failed requests during trips",
                    f"{d.get('trip_failed_requests')} of {d.get('trip_requests')}",
                    "0",
                ],
                [
                    "failed requests during swaps",
                    f"{d['swap_failed_requests']} of {d['swap_requests']}",
                    "0",
                ],
                [
                    "p99 during swap / steady",
                    f"{_f(d['swap_p99_ms'])} / {_f(d['steady_p99_ms'])} ms",
                    "≤ 2×",
                ],
            ],
        ),
    ]


def fleet() -> list[str]:
    d = _load("fleet")
    if not d:
        return ["_not run: `python bench/fleet.py`_"]
    lines = [
        f"Mosquitto 2 (tcp_nodelay, raised queues) + the real server process "
        f"({d.get('database', 'sqlite')}); simulated devices in one asyncio process, one MQTT",
        "connection each, 1 telemetry batch per device per second, QoS 1. Latency = time the",
        "bench saw the row stored − sample send time (overstated by ≤ 0.2 s). Lost = sent −",
        "stored rows (SQL after the server stops). Ceiling = a bare paho subscriber on the",
        "same broker. `bench/fleet.py`.",
        "",
    ]
    runs = d.get("runs") or [d]
    lines += _table(
        [
            "devices",
            "offered msg/s",
            "ingest msg/s",
            "sent",
            "stored",
            "lost",
            "p50 s",
            "p99 s",
            "server CPU %",
            "server RSS MB",
        ],
        [
            [
                f"{r['devices']:,}",
                _f(r.get("offered_rate"), ".0f"),
                _f(r["ingest_rate"], ".0f"),
                f"{r['sent']:,}",
                f"{r['stored']:,}",
                str(r["lost"]),
                _f(r.get("p50_latency_s")),
                _f(r["p99_latency_s"]),
                _f(r["server_cpu_pct"], ".0f"),
                _f(r["server_rss_mb"], ".0f"),
            ]
            for r in runs
        ],
    )
    lines += ["", f"Broker ceiling (bare subscriber): {_f(d.get('ceiling_rate'), '.0f')} msg/s."]
    return lines


def ota() -> list[str]:
    d = _load("ota")
    if not d:
        return ["_not run: `python bench/ota.py`_"]
    lines = [
        f"A {d['package_bytes'] / 1e6:.1f} MB package in {d['block_size'] // 1024} KiB blocks to "
        f"{d['devices']} simulated devices using the agent's own download code. Broadcast sender: "
        f"{d.get('broadcast_sender', 'server')}. `bench/ota.py`.",
        "",
    ]
    lines += _table(
        [
            "mode",
            "devices",
            "time to first s",
            "time to all s",
            "egress × package",
            "blocks requested (held or unicast)",
        ],
        [
            [
                r["mode"],
                str(r["devices"]),
                _f(r["time_to_first_s"]),
                _f(r["time_to_all_s"]),
                _f(r["egress_x_package"]),
                str(r.get("repair_blocks_requested", "–")),
            ]
            for r in d["runs"]
        ],
    )
    return lines


def agent() -> list[str]:
    d = _load("agent")
    if not d:
        return ["_not run: `python bench/agent.py`_"]
    o, api = d["overhead"], d["api"]
    return [
        f"Model: {d['model']}. Overhead: the agent's in-process path vs a bare ORT session, "
        "alternating call by call, median of rounds. API: real agent processes, 8 keep-alive "
        "clients. `bench/agent.py`.",
        "",
        *_table(
            ["figure", "measured", "target"],
            [
                [
                    "in-process overhead",
                    f"{o['agent_us']} µs vs {o['bare_ort_us']} µs bare = "
                    f"+{o['overhead_us']} µs ({o['overhead_pct']} %)",
                    "≤ 5 %",
                ],
                [
                    "HTTP API, dynamic batching",
                    f"{api['batching']['rps']} req/s, p99 {api['batching']['p99_ms']} ms",
                    "–",
                ],
                [
                    "HTTP API, no batching",
                    f"{api['no_batching']['rps']} req/s, p99 {api['no_batching']['p99_ms']} ms",
                    "–",
                ],
                [
                    "agent RSS with the model loaded",
                    f"{d['summary']['agent_rss_mb']} MB",
                    "≤ 150 MB",
                ],
            ],
        ),
    ]


def main() -> None:
    parts = [
        "# jetfleet benchmarks",
        "",
        "Generated by `bench/report.py` from `bench/results/*.json` (`make bench` reruns all).",
        f"Machine: {platform.machine()}, 2 shared cores, Python {platform.python_version()}.",
        "Figures are medians of repeated runs on a shared, noisy machine; compare ratios, not",
        "absolute times. Targets are the issues'; a missed target is reported as measured.",
        "",
        "## Compression (model builder)",
        "",
        *compress(),
        "",
        "## Self-heal and swaps (agent)",
        "",
        *selfheal(),
        "",
        "## Fleet ingest (server)",
        "",
        *fleet(),
        "",
        "## OTA fan-out",
        "",
        *ota(),
        "",
        "## Agent inference path",
        "",
        *agent(),
        "",
    ]
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        parts += ["## Findings", "", notes.read_text().strip(), ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(ROOT / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
