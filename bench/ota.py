"""OTA benchmark: a ~20 MB package to 100 simulated devices, unicast vs broadcast.

Run: ``.venv/bin/python bench/ota.py`` (``--devices 100 --mb 20``); writes
``bench/results/ota.json``.

* unicast (``JETFLEET_OTA_BROADCAST=false``): every device fetches its own blocks with
  ``FetchRequest`` and the server answers on ``d/{id}/blocks``.
* broadcast (``JETFLEET_OTA_BROADCAST=true``): devices fetch as the agent does and listen
  on ``a/{sha256}/blocks``; the server holds the first requests for a short window and,
  when several devices want the same artifact, publishes every block once on the
  broadcast topic; what a device still misses it fetches by unicast (repair).
Egress = the server's ``jetfleet_server_block_egress_bytes_total`` (both modes, frames
with headers).

Each mode runs with 1 device (time to one) and with N devices (time to all), with the
simulated devices in this process (simfleet, the agent's ``Download``/``Slot`` code,
slots on /dev/shm) and the real server process with SQLite. Times run from the
assignment request to a device's verified package (whole-file sha256 checked).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    ProcSampler,
    server_metrics,
    start_broker,
    start_server,
    write_result,
)
from bench.simfleet import FleetConfig, SimFleet  # noqa: E402
from jetfleet.messages import DEFAULT_BLOCK_SIZE  # noqa: E402
from tests.support.procs import ServerProc, wait_for  # noqa: E402
from tests.support.tinymodel import make_package  # noqa: E402


async def one_wave(
    server: ServerProc,
    broker_url: str,
    package: Path,
    sha256: str,
    release: str,
    devices: int,
    broadcast: bool,
    prefix: str,
    timeout: float,
) -> dict[str, Any]:
    fleet = SimFleet(
        FleetConfig(
            broker_url=broker_url,
            devices=devices,
            prefix=prefix,
            broadcast=broadcast,
            broadcast_quiet_s=2.0,
        )
    )
    try:
        await fleet.start()

        def online() -> bool:
            devs = server.api("GET", "/api/v1/devices?online=true&limit=10000")
            return {d["id"] for d in devs} >= set(fleet.device_ids)

        await asyncio.to_thread(wait_for, "devices online", online, 60)
        before = await asyncio.to_thread(server_metrics, server)
        started = time.time()
        await asyncio.to_thread(
            server.api,
            "POST",
            "/api/v1/assignments",
            {"release": release, "device_ids": fleet.device_ids},
        )
        records = await fleet.wait_downloads(sha256, timeout)
        after = await asyncio.to_thread(server_metrics, server)
    finally:
        await fleet.stop()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    served = delta("jetfleet_server_blocks_served_total")
    unicast = delta('jetfleet_server_block_egress_bytes_total{mode="unicast"}')
    broadcast_bytes = delta('jetfleet_server_block_egress_bytes_total{mode="broadcast"}')
    done = [r for r in records.values() if r.ok]
    size = package.stat().st_size
    egress = int(unicast + broadcast_bytes)
    return {
        "mode": "broadcast" if broadcast else "unicast",
        "devices": devices,
        "completed": len(done),
        "time_to_first_s": round(min((r.finished or 0) - started for r in done), 2)
        if done
        else None,
        "time_to_all_s": round(max((r.finished or 0) - started for r in done), 2)
        if len(done) == devices
        else None,
        "egress_bytes": egress,
        "egress_x_package": round(egress / size, 3),
        "server_unicast_blocks": int(served),
        "broadcast_bytes": int(broadcast_bytes),
        "unicast_bytes": int(unicast),
        "repair_blocks_requested": sum(r.repair_blocks_requested for r in records.values()),
        "duplicate_bytes": sum(r.bytes_duplicate for r in records.values()),
        "broadcast_blocks_received": sum(r.broadcast_blocks for r in records.values()),
    }


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    info = make_package(workdir / "big.jfpkg", pad_bytes=args.mb * 1024 * 1024)
    broker = start_broker(workdir)
    from jetfleet.client import FleetClient

    results: list[dict[str, Any]] = []
    try:
        for mode in ("unicast", "broadcast"):
            # One server per mode: broadcast is the server's JETFLEET_OTA_BROADCAST setting.
            # The 1-device and N-device runs are two waves: a short cooldown lets the
            # second one open its own broadcast session.
            env = {
                "JETFLEET_OTA_BROADCAST": "true" if mode == "broadcast" else "false",
                "JETFLEET_OTA_BROADCAST_COOLDOWN": "0",
            }
            server = start_server(workdir / f"srv-{mode}", broker.url, extra_env=env)
            assert broker.proc is not None
            sampler = ProcSampler({"server": server.popen.pid, "broker": broker.proc.pid}).start()
            try:
                FleetClient(server.url).upload_package(info.path)
                server.api(
                    "POST", "/api/v1/releases", {"name": "big-1", "package_sha256": info.sha256}
                )
                for n in (1, args.devices):
                    t0 = time.time()
                    result = await one_wave(
                        server,
                        broker.url,
                        info.path,
                        info.sha256,
                        "big-1",
                        n,
                        mode == "broadcast",
                        f"{mode[0]}{n}",
                        args.timeout,
                    )
                    result["mode"] = mode
                    result["server_cpu_pct"] = sampler.summary("server", t0, time.time())["cpu_pct"]
                    print(result, flush=True)
                    results.append(result)
            finally:
                sampler.stop()
                server.stop()
    finally:
        broker.stop()
    out: dict[str, Any] = {
        "package_bytes": info.length,
        "block_size": DEFAULT_BLOCK_SIZE,
        "devices": args.devices,
        "broadcast_sender": "fleet server (JETFLEET_OTA_BROADCAST)",
        "runs": results,
    }
    for mode in ("unicast", "broadcast"):
        one = next(r for r in results if r["mode"] == mode and r["devices"] == 1)
        many = next(r for r in results if r["mode"] == mode and r["devices"] == args.devices)
        out[mode] = {
            "time_to_one_s": one["time_to_first_s"],
            "time_to_all_s": many["time_to_all_s"],
            "all_over_one": round(many["time_to_all_s"] / one["time_to_first_s"], 2)
            if many["time_to_all_s"] and one["time_to_first_s"]
            else None,
            "egress_bytes": many["egress_bytes"],
            "egress_x_package": many["egress_x_package"],
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OTA unicast vs broadcast benchmark")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--mb", type=int, default=20, help="package padding, MiB")
    parser.add_argument("--timeout", type=float, default=240.0, help="per wave, s")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    print(write_result("ota", out))


if __name__ == "__main__":
    main()
