"""The console against a live server process and three REAL agents (real Mosquitto).

Agents serve replay traffic, so telemetry, trials, commits and a watchdog revert are the
real thing. The tests share one fleet and run in file order: the rollout of ``r1`` from
the console form first, then a slower ``r2`` that one agent's watchdog reverts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect

from fleet_server.auth import create_api_token, create_user
from fleet_server.db import make_engine
from fleet_server.settings import Settings
from tests.console.conftest import SHOTS
from tests.console.conftest import log_in as console_log_in
from tests.support.mosquitto import MosquittoBroker
from tests.support.procs import AgentProc, ServerProc, wait_for
from tests.support.tinymodel import make_package

pytestmark = pytest.mark.slow

DEVICES = ("lab-1", "lab-2", "lab-3")
# The slow release's p95 is far above twice r1's: the watchdog reverts it during trial.
P95_RULE = {"metric": "p95_latency_ratio", "threshold": 2.0, "window_s": 5, "min_requests": 20}


@dataclass
class Fleet:
    url: str
    token: dict[str, str]
    server: ServerProc
    agents: list[AgentProc]
    tmp: Path
    errors: list[str] = field(default_factory=list)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.token, timeout=15)

    def devices(self) -> dict[str, dict[str, Any]]:
        with self.api() as http:
            return {d["id"]: d for d in http.get("/api/v1/devices").json()}


def upload_release(fleet: Fleet, name: str, **package: Any) -> str:
    info = make_package(fleet.tmp / f"{name}.jfpkg", name="tiny", version=name, **package)
    with fleet.api() as http, info.path.open("rb") as fh:
        r = http.post("/api/v1/packages", files={"file": (info.path.name, fh)})
        assert r.status_code in (200, 201), r.text
        r = http.post("/api/v1/releases", json={"name": name, "package_sha256": info.sha256})
        assert r.status_code == 201, r.text
    return info.sha256


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("console-agents")
    mosquitto = MosquittoBroker(tmp / "mosquitto")
    mosquitto.start()
    server = ServerProc(
        tmp / "srv",
        mosquitto.url,
        extra_env={"JETFLEET_AUTH_ENABLED": "true", "JETFLEET_ROLLOUT_TICK_INTERVAL": "0.5"},
    )
    replay = tmp / "replay.npy"
    np.save(replay, np.random.default_rng(3).random((64, 64), dtype=np.float32))
    agents = [
        AgentProc(
            tmp / "agents",
            device_id,
            mosquitto.url,
            tags={"site": "lab"},
            bake_s=2,
            telemetry_interval_s=1,
            replay={"file": str(replay), "rate_hz": 40},
            watchdog={"interval_s": 0.2, "rules": [P95_RULE]},
        )
        for device_id in DEVICES
    ]
    try:
        server.wait_ready()
        engine = make_engine(Settings(data_dir=tmp / "srv" / "server", database_url=None).db_url)
        for name, role in (("ada", "admin"), ("otto", "operator"), ("vic", "viewer")):
            create_user(engine, name, f"{name}-password", role)
        token = {"Authorization": f"Bearer {create_api_token(engine, 'ada', 'test')}"}
        engine.dispose()
        fleet = Fleet(server.url, token, server, agents, tmp)
        wait_for(
            "three agents online",
            lambda: all(fleet.devices().get(d, {}).get("online") for d in DEVICES),
            60,
        )
        upload_release(fleet, "r1")
        yield fleet
    finally:
        for proc in (*agents, server):
            proc.stop()
        mosquitto.stop()
        for proc in (server, *agents):
            if proc.popen.returncode not in (0, -15):
                print(f"--- {proc.name} log ---\n{proc.output()[-4000:]}")


def log_in(browser: Browser, fleet: Fleet, user: str) -> tuple[Page, list[str]]:
    return console_log_in(browser, fleet.url, user, "/console/rollouts")


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"agents-{name}.png", full_page=True)


def test_rollout_from_the_form_completes_on_real_agents(fleet: Fleet, browser: Browser) -> None:
    page, errors = log_in(browser, fleet, "otto")
    expect(page.get_by_test_id("no-rollouts")).to_contain_text("Start one above")
    form = page.get_by_test_id("rollout-form")
    form.locator('[name="release"]').select_option("r1")
    form.locator('[name="selector"]').fill("site=lab")
    form.locator('[name="waves"]').fill("1,50%")  # leaves a device out: refused, values kept
    form.locator('[name="bake_s"]').fill("2")
    form.get_by_role("button", name="Start rollout").click()
    expect(page.get_by_test_id("form-error")).to_contain_text("last wave")
    expect(form.locator('[name="selector"]')).to_have_value("site=lab")
    expect(form.locator('[name="bake_s"]')).to_have_value("2")
    shot(page, "rollout-create-refused")
    # The refused form comes back as a 422 page, which Chromium logs; nothing else may.
    assert [e for e in errors if "status of 422" not in e] == []
    errors.clear()

    form.locator('[name="waves"]').fill("1,100%")
    form.locator('[name="wave_timeout_s"]').fill("90")
    shot(page, "rollout-create")
    form.get_by_role("button", name="Start rollout").click()
    expect(page).to_have_url(re.compile(r"/console/rollouts/\d+"))
    expect(page.locator(".flash.ok")).to_contain_text("started on 3 device(s) in 2 wave(s)")
    expect(page.get_by_test_id("rollout-pause")).to_be_visible()
    # Live: the page polls; no reload until the rollout has gone through both waves.
    expect(page.get_by_test_id("rollout-devices")).to_contain_text("lab-1", timeout=20_000)
    shot(page, "rollout-running")
    expect(page.get_by_test_id("rollout-status")).to_have_text("completed", timeout=90_000)
    devices = page.get_by_test_id("rollout-devices")
    for device_id in DEVICES:
        expect(devices.locator(f'tr[data-device="{device_id}"] .dstatus')).to_have_text(
            "committed", timeout=30_000
        )
    gates = page.get_by_test_id("gates")
    expect(gates.locator("tbody tr")).to_have_count(2)
    expect(gates).to_contain_text("reached")  # the numbers each decision used
    expect(page.get_by_test_id("rollout-pause")).to_have_count(0)
    expect(page.get_by_test_id("rollout-rollback")).to_be_visible()
    shot(page, "rollout-completed")
    page.goto(f"{fleet.url}/console/rollouts")
    expect(page.get_by_test_id("rollouts")).to_contain_text("completed")
    shot(page, "rollouts")
    assert all(d["active_release"] == "r1" for d in fleet.devices().values())
    assert errors == []


def test_watchdog_revert_shows_on_the_chart_and_in_events(fleet: Fleet, browser: Browser) -> None:
    upload_release(fleet, "r2", extra_matmuls=600)
    page, errors = log_in(browser, fleet, "otto")
    page.goto(f"{fleet.url}/console/devices/lab-1?window=15m")
    expect(page.locator("#charts .chart").first).to_be_visible(timeout=15_000)
    assert page.locator("#charts .mark.revert").count() == 0
    with fleet.api() as http:
        r = http.post("/api/v1/assignments", json={"release": "r2", "device_ids": ["lab-1"]})
        assert r.status_code in (200, 201), r.text
    # The agent tries r2 under replay load, its watchdog reverts to r1; the page updates.
    expect(page.locator("#charts .mark.revert").first).to_be_attached(timeout=60_000)
    expect(page.get_by_test_id("engine-history")).to_contain_text(
        "activation.reverted", timeout=15_000
    )
    shot(page, "device-revert")
    page.goto(f"{fleet.url}/console/events?type=activation.reverted")
    expect(page.locator("main")).to_contain_text("lab-1")
    expect(page.locator("main")).to_contain_text("activation.reverted")
    shot(page, "events-revert")
    wait_for("lab-1 back on r1", lambda: fleet.devices()["lab-1"]["active_release"] == "r1", 30)
    assert errors == []


def test_every_page_renders_without_console_errors(fleet: Fleet, browser: Browser) -> None:
    page, errors = log_in(browser, fleet, "ada")
    for name in (
        "overview",
        "devices",
        "devices/lab-2",
        "models",
        "releases",
        "rollouts",
        "rollouts/1",
        "events",
        "audit",
        "settings",
    ):
        page.goto(f"{fleet.url}/console/{name}")
        expect(page.locator("h1")).to_be_visible()
        if name == "devices/lab-2":
            expect(page.locator("#charts .chart").first).to_be_visible(timeout=15_000)
        if name == "audit":
            expect(page.locator("main")).to_contain_text("rollout.create")
        shot(page, name.replace("/", "-"))
    assert errors == []


def test_viewer_sees_no_mutating_buttons_and_forged_posts_fail(
    fleet: Fleet, browser: Browser
) -> None:
    page, errors = log_in(browser, fleet, "vic")
    expect(page.get_by_test_id("rollout-form")).to_have_count(0)
    for name in ("rollouts", "rollouts/1", "devices/lab-1", "releases", "models"):
        page.goto(f"{fleet.url}/console/{name}")
        expect(page.locator("h1")).to_be_visible()
        assert page.locator("main form[method=post]").count() == 0, name
        assert page.locator("main button:not([disabled])").count() == 0, name
    shot(page, "viewer-rollout")
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content") or ""
    as_viewer = page.request.post(
        f"{fleet.url}/console/rollouts/1/rollback", form={"csrf_token": csrf}
    )
    assert as_viewer.status == 403
    no_csrf = page.request.post(
        f"{fleet.url}/console/rollouts", form={"release": "r1", "selector": "site=lab"}
    )
    assert no_csrf.status == 403
    with fleet.api() as http:
        assert http.get("/api/v1/rollouts/1").json()["status"] == "completed"
    assert errors == []
