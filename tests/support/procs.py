"""Real processes for end-to-end tests: the fleet server and agents, as users run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.mosquitto import free_port
from tests.support.postgres import database_for


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, poll: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as fh:
            self.popen = subprocess.Popen(
                args, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETFLEET_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerProc(Proc):
    def __init__(
        self,
        workdir: Path,
        broker_url: str | None,
        port: int | None = None,
        database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = base_env()
        env.update(
            {
                "JETFLEET_DATA_DIR": str(workdir / "server"),
                "JETFLEET_HTTP_PORT": str(self.port),
                "JETFLEET_AUTH_ENABLED": "false",
            }
        )
        if broker_url:
            env["JETFLEET_BROKER_URL"] = broker_url
        else:
            self.broker_port = free_port()
            env["JETFLEET_EMBEDDED_BROKER_PORT"] = str(self.broker_port)
        database_url = database_url or database_for(str(workdir.resolve()))
        if database_url:
            env["JETFLEET_DATABASE_URL"] = database_url
        self.database_url = database_url  # None: SQLite under the data dir
        env.update(extra_env or {})
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            "server",
            [sys.executable, "-m", "jetfleet", "server", "run"],
            env,
            workdir / "server.log",
        )

    def api(self, method: str, path: str, payload: Any = None, token: str | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> Any:
            if not self.alive():
                raise RuntimeError(f"server exited:\n{self.output()[-3000:]}")
            return self.api("GET", "/healthz")

        wait_for("server /healthz", ready, timeout)


class AgentProc(Proc):
    def __init__(
        self,
        workdir: Path,
        device_id: str,
        broker_url: str,
        python: str | None = None,
        **overrides: Any,
    ) -> None:
        self.device_id = device_id
        self.dir = workdir / device_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.dir / "state"
        config = {
            "device_id": device_id,
            "broker_url": broker_url,
            "state_dir": str(self.state_dir),
            "tags": {"site": "test"},
            "telemetry_interval_s": 1,
            "api_host": "127.0.0.1",
            "api_port": 0,
            "bake_s": 2,
        }
        config.update(overrides)
        self.config = self.dir / "agent.yaml"
        self.config.write_text(yaml.safe_dump(config))
        super().__init__(
            device_id,
            [
                python or sys.executable,
                "-m",
                "jetfleet",
                "agent",
                "run",
                "--config",
                str(self.config),
            ],
            base_env(),
            self.dir / "agent.log",
        )

    def api_url(self) -> str:
        return str(json.loads((self.state_dir / "api.json").read_text())["url"])

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "state.json").read_text()))
