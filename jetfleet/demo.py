"""``jetfleet demo``: embedded broker + fleet server + N agents as separate processes.

Builds a small digits classifier (scikit-learn's bundled handwritten digits), uploads
it, releases it, assigns it to every agent, and watches the fleet until every agent
serves it with replay traffic and its telemetry is stored.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jetfleet.client import ApiError, FleetClient

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Timeline:
    start: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {text}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Children:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        fh = log.open("wb")
        proc = subprocess.Popen(
            args, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        fh.close()
        self.procs.append((name, proc))

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode})" for name, p in self.procs if p.poll() is not None]

    def stop_all(self, timeout: float = 15.0) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _name, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _write_replay(path: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[-200:] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    np.save(path, x)


def _agent_yaml(workdir: Path, name: str, broker_url: str, replay: Path, site: str) -> Path:
    adir = workdir / "agents" / name
    adir.mkdir(parents=True, exist_ok=True)
    config = {
        "device_id": name,
        "broker_url": broker_url,
        "state_dir": str(adir / "state"),
        "tags": {"site": site, "demo": "true"},
        "telemetry_interval_s": 2,
        "api_host": "127.0.0.1",
        "api_port": 0,
        "bake_s": 10,
        "replay": {"file": str(replay), "rate_hz": 5},
    }
    path = adir / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _demo_admin(data_dir: Path, password: str) -> str:
    """Create the demo's admin user in the server's database; return an API token."""
    from fleet_server.auth import create_api_token, create_user
    from fleet_server.db import make_engine
    from fleet_server.settings import Settings

    engine = make_engine(Settings(data_dir=data_dir, database_url=None).db_url)
    create_user(engine, "admin", password, "admin")
    return create_api_token(engine, "admin", "demo")


def _wait(what: str, check: Any, timeout: float, children: Children, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = children.dead()
        if dead:
            raise RuntimeError(f"while waiting for {what}: process died: {', '.join(dead)}")
        try:
            value = check()
        except ApiError:
            value = None
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_demo(
    agents: int = 3, once: bool = False, workdir: Path = Path(".demo"), timeout: float = 300.0
) -> int:
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "logs").mkdir(parents=True)
    tl = Timeline()
    children = Children()
    broker_port, http_port = _free_port(), _free_port()
    base_url = f"http://127.0.0.1:{http_port}"
    env = dict(os.environ)
    env.update(
        {
            "JETFLEET_DATA_DIR": str(workdir / "server"),
            "JETFLEET_HTTP_PORT": str(http_port),
            "JETFLEET_EMBEDDED_BROKER_PORT": str(broker_port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("JETFLEET_BROKER_URL", None)
    agent_broker = f"mqtt://127.0.0.1:{broker_port}?protocol=3.1.1"  # amqtt: MQTT 3.1.1
    env.pop("JETFLEET_DATABASE_URL", None)
    py = sys.executable
    ok = False
    try:
        tl.say(f"starting fleet server (embedded MQTT broker on 127.0.0.1:{broker_port})")
        children.spawn(
            "server", [py, "-m", "jetfleet", "server", "run"], env, workdir / "logs" / "server.log"
        )
        client = FleetClient(base_url)

        tl.say("building the digits classifier (train, export ONNX, INT8 calibrate, package)")
        from model_builder import build_digits_package

        replay = workdir / "replay.npy"
        _write_replay(replay)
        built = build_digits_package(workdir / "dist")
        tl.say(
            f"package built: {built.path.name} ({built.length / 1024:.0f} KiB, "
            f"sha256 {built.sha256[:12]})"
        )

        _wait("server /healthz", lambda: client.get("/healthz"), 60, children)
        password = secrets.token_urlsafe(12)
        client = FleetClient(base_url, _demo_admin(workdir / "server", password))
        tl.say(f"server up: {base_url}  (API docs {base_url}/docs)")
        tl.say(f"console: {base_url}/console  (log in as admin / {password})")
        pkg = client.upload_package(built.path)
        tl.say(f"uploaded package {pkg['sha256'][:12]} ({pkg['name']} {pkg['version']})")
        release = client.post(
            "/api/v1/releases",
            {"name": "digits-v1", "package_sha256": built.sha256, "notes": "jetfleet demo"},
        )
        tl.say(f"release {release['name']} created")

        names = [f"demo-{i + 1}" for i in range(agents)]
        for i, name in enumerate(names):
            cfg = _agent_yaml(workdir, name, agent_broker, replay, site=f"site-{i % 2 + 1}")
            children.spawn(
                name,
                [py, "-m", "jetfleet", "agent", "run", "--config", str(cfg)],
                env,
                workdir / "logs" / f"{name}.log",
            )
        tl.say(f"started {agents} agents: {', '.join(names)}")

        def online() -> bool:
            devs = {d["id"]: d for d in client.get("/api/v1/devices")}
            return all(devs.get(n, {}).get("online") for n in names)

        _wait("all agents online", online, 120, children)
        tl.say("all agents online; assigning digits-v1 to every agent")
        client.post("/api/v1/assignments", {"release": "digits-v1", "device_ids": names})

        seen: set[str] = set()

        def serving() -> bool:
            for ev in client.get("/api/v1/events?limit=500"):
                key = f"{ev['device_id']}/{ev.get('id') or ev.get('event_id')}"
                if key not in seen and not ev["type"].startswith("ota.progress"):
                    seen.add(key)
                    tl.say(f"{ev['device_id']:<8} {ev['type']:<22} {ev.get('message', '')}")
            devs = {d["id"]: d for d in client.get("/api/v1/devices")}
            if not all(
                devs.get(n, {}).get("active_sha256") == built.sha256 and devs[n].get("serving")
                for n in names
            ):
                return False
            for n in names:
                rows = client.get(f"/api/v1/telemetry?device_id={n}&limit=50")
                if not any((r.get("inference_count") or 0) > 0 for r in rows):
                    return False
            return True

        _wait("all agents serving digits-v1 with telemetry", serving, timeout, children, 1.0)
        tl.say(
            f"ALL SERVING: {agents} agents serve digits-v1, telemetry stored "
            f"({tl.elapsed:.1f}s since start)"
        )
        for n in names:
            rows = client.get(f"/api/v1/telemetry?device_id={n}&limit=1")
            last = rows[0] if rows else {}
            gpu = last.get("gpu_load_pct")
            gpu_text = "absent (no GPU on this host)" if gpu is None else f"{gpu:.0f} %"
            tl.say(
                f"{n}: p95 {_num(last.get('p95_ms'), '.2f')} ms, "
                f"cpu {_num(last.get('cpu_pct'), '.0f')} %, "
                f"agent rss {_num(last.get('agent_rss_mb'), '.0f')} MB, gpu {gpu_text}"
            )
        ok = True
        if once:
            print(
                f"demo: OK — released, {agents}/{agents} agents active and serving, "
                f"telemetry stored; wall time {tl.elapsed:.1f}s",
                flush=True,
            )
            return 0
        print(
            f"\nFleet server: {base_url}   API docs: {base_url}/docs\n"
            f"Logs: {workdir / 'logs'}\nCtrl-C stops every process.",
            flush=True,
        )
        while not children.dead():
            time.sleep(1.0)
        print(f"a process exited: {', '.join(children.dead())}", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0 if ok else 130
    except (RuntimeError, TimeoutError, ApiError, OSError) as exc:
        print(f"demo: FAILED — {exc}\nlogs: {workdir / 'logs'}", flush=True)
        return 1
    finally:
        children.stop_all()
