"""The `jetfleet` CLI against a live server with auth on: what an operator types."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fleet_server.auth import create_api_token, create_user
from fleet_server.db import make_engine
from fleet_server.settings import Settings
from tests.support.procs import ServerProc
from tests.support.tinymodel import make_package

pytestmark = pytest.mark.slow


def cli(*args: str, token: str | None, server: ServerProc) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETFLEET_")}
    env["JETFLEET_SERVER_URL"] = server.url
    if token:
        env["JETFLEET_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "jetfleet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_operator_workflow_and_clear_errors(tmp_path, mosquitto):
    server = ServerProc(
        tmp_path / "srv", mosquitto.url, extra_env={"JETFLEET_AUTH_ENABLED": "true"}
    )
    try:
        server.wait_ready()
        db = (
            server.database_url
            or Settings(data_dir=tmp_path / "srv" / "server", database_url=None).db_url
        )
        engine = make_engine(db)
        create_user(engine, "ops", "correct horse battery", "operator")
        create_user(engine, "viv", "correct horse battery", "viewer")
        ops = create_api_token(engine, "ops", "cli")
        viewer = create_api_token(engine, "viv", "cli")

        denied = cli("device", "list", token=None, server=server)
        assert denied.returncode == 2
        assert "401" in denied.stderr

        info = make_package(tmp_path / "p.jfpkg")
        up = cli("package", "upload", str(info.path), token=ops, server=server)
        assert up.returncode == 0, up.stderr
        assert info.sha256 in up.stdout
        forbidden = cli(
            "release", "create", "r1", "--package", info.sha256, token=viewer, server=server
        )
        assert forbidden.returncode == 2
        assert "403" in forbidden.stderr
        made = cli("release", "create", "r1", "--package", info.sha256, token=ops, server=server)
        assert made.returncode == 0, made.stderr

        nobody = cli(
            "rollout", "create", "r1", "--selector", "site=nowhere", token=ops, server=server
        )
        assert nobody.returncode == 2
        assert "matches no device" in nobody.stderr
        bad_bake = cli(
            "rollout",
            "create",
            "r1",
            "--selector",
            "site=lab",
            "--bake",
            "soon",
            token=ops,
            server=server,
        )
        assert bad_bake.returncode != 0
        assert "duration" in bad_bake.stderr

        for name in ("cam-1", "cam-2"):
            server.api("POST", "/api/v1/devices", {"id": name, "tags": {"site": "lab"}}, token=ops)
        created = cli(
            "rollout",
            "create",
            "r1",
            "--selector",
            "site=lab",
            "--waves",
            "1,100%",
            "--bake",
            "5s",
            token=ops,
            server=server,
        )
        assert created.returncode == 0, created.stderr
        assert "rollout 1  r1  [running]" in created.stdout
        shown = cli("rollout", "show", "1", token=viewer, server=server)
        assert shown.returncode == 0, shown.stderr
        assert "cam-1" in shown.stdout
        paused = cli("rollout", "pause", "1", token=ops, server=server)
        assert paused.returncode == 0, paused.stderr
        assert "[paused]" in paused.stdout
        aborted = cli("rollout", "abort", "1", token=ops, server=server)
        assert "[aborted]" in aborted.stdout
    finally:
        server.stop()
