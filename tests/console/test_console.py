"""The web console in headless Chromium against a live server, real Mosquitto and
simulated devices (``SimDevice``) publishing state, telemetry and events."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect

from fleet_server import create_app
from fleet_server.auth import create_api_token, create_user
from jetfleet.messages import (
    EventMessage,
    GpuMetrics,
    InferenceMetrics,
    SystemMetrics,
    TelemetryBatch,
    TelemetrySample,
)
from jetfleet.mqtt import BrokerAddress
from jetfleet.package import Golden, GoldenSpec, ModelCard, TensorSpec, write_package
from tests.console.conftest import SHOTS, log_in
from tests.server.conftest import SimDevice, make_settings, wait_for
from tests.support.mosquitto import MosquittoBroker
from tests.support.tinymodel import make_mlp_onnx, run_onnx

pytestmark = pytest.mark.slow

PAGES = (
    "overview",
    "devices",
    "devices/cam-1",
    "models",
    "releases",
    "rollouts",
    "events",
    "audit",
    "settings",
)


@dataclass
class Live:
    url: str
    admin: dict[str, str]  # bearer header
    sims: dict[str, SimDevice]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def staged_package(out: Path) -> Path:
    """A real package whose card carries a builder stage table."""
    model = make_mlp_onnx(0)
    x = np.random.default_rng(1).random((4, 64), dtype=np.float32)
    stages = [
        {"stage": "baseline", "size_bytes": 90_000, "latency_ms_p50": 1.9, "accuracy": 0.981},
        {"stage": "pruned", "size_bytes": 52_000, "latency_ms_p50": 1.2, "accuracy": 0.975},
        {"stage": "int8", "size_bytes": 15_000, "latency_ms_p50": 0.6, "accuracy": 0.972},
    ]
    card = ModelCard(
        name="digits",
        version="2",
        inputs=[TensorSpec(name="input", shape=["batch", 64], dtype="float32")],
        outputs=[TensorSpec(name="logits", shape=["batch", 10], dtype="float32")],
        variants={"onnxruntime": "model.onnx"},
        golden=GoldenSpec(count=4, rtol=1e-3, atol=1e-4),
        stages=stages,
    )
    golden = Golden(
        inputs={"input": x}, outputs={"logits": run_onnx(model, x)}, rtol=1e-3, atol=1e-4
    )
    return write_package(out, card, {"model.onnx": model}, golden).path


def telemetry(sim: SimDevice, start: float, count: int, gpu: bool) -> None:
    samples = [
        TelemetrySample(
            ts=start + 5 * i,
            seq=i,
            system=SystemMetrics(cpu_pct=20 + (i % 7) * 5, mem_pct=40 + i % 5),
            gpu=GpuMetrics(source="sysfs", load_pct=30 + i % 9, temp_c=48.0, power_mw=5200)
            if gpu
            else None,
            inference=InferenceMetrics(count=100 + i, errors=i % 3 == 0, p95_ms=3 + (i % 4)),
        )
        for i in range(count)
    ]
    sim.send("telemetry", TelemetryBatch(device_id=sim.id, samples=samples))


def event(sim: SimDevice, kind: str, ts: float, message: str = "", **data: Any) -> None:
    sim.send(
        "events",
        EventMessage(
            device_id=sim.id,
            id=f"{kind}-{ts}",
            ts=ts,
            type=kind,
            release="digits-2",
            message=message,
            data=data,
        ),
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("console")
    broker = MosquittoBroker(tmp / "mosquitto")
    broker.start()
    settings = make_settings(tmp, broker_url=broker.url, auth_enabled=True)
    app = create_app(settings)
    engine = app.state.context.engine
    for name, role in (("ada", "admin"), ("otto", "operator"), ("vic", "viewer")):
        create_user(engine, name, f"{name}-password", role)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started and app.state.context.gateway.connected, 15, "server")
    address = BrokerAddress(broker.host, broker.port)
    sims = {d: SimDevice(d, address).start() for d in ("cam-1", "cam-2", "jet-3")}
    now = time.time()
    for i, sim in enumerate(sims.values()):
        sim.state(
            active_release="digits-2",
            known_good_release="digits-1",
            profile="sm87-trt10.3" if i else "cpu",
            serving=True,
            backend="onnxruntime",
            tags={"site": "lab" if i < 2 else "yard"},
        )
        telemetry(sim, now - 600, 100, gpu=bool(i))
    event(sims["cam-1"], "activation.trial", now - 400, "trial started")
    event(sims["jet-3"], "selfheal.action", now - 60, "restarted runtime", reason="crash")
    sims["cam-2"].state(online=False)  # what its will says when it drops
    admin = {"Authorization": f"Bearer {create_api_token(engine, 'ada', 'test')}"}
    try:
        yield Live(f"http://127.0.0.1:{port}", admin, sims)
    finally:
        for sim in sims.values():
            sim.stop()
        server.should_exit = True
        thread.join(15)
        broker.stop()


def open_as(browser: Browser, live: Live, user: str) -> tuple[Page, list[str]]:
    return log_in(browser, live.url, user, "/console/devices")


def setup_release(live: Live, tmp_path: Path) -> None:
    import httpx

    with httpx.Client(base_url=live.url, headers=live.admin) as http:
        path = staged_package(tmp_path / "digits-2.jfpkg")
        with path.open("rb") as fh:
            pkg = http.post("/api/v1/packages", files={"file": (path.name, fh)}).json()
        for name in ("digits-1", "digits-2"):
            r = http.post("/api/v1/releases", json={"name": name, "package_sha256": pkg["sha256"]})
            assert r.status_code in (201, 409), r.text


def test_every_page_renders_without_errors(live: Live, browser: Browser, tmp_path: Path) -> None:
    setup_release(live, tmp_path)
    page, errors = open_as(browser, live, "ada")
    wait_for(lambda: page.locator("#device-rows tr").count() == 3, 10, "three devices listed")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name in PAGES:
        page.goto(f"{live.url}/console/{name}")
        expect(page.locator("h1")).to_be_visible()
        if name == "devices/cam-1":
            expect(page.locator("#charts .chart").first).to_be_visible()
            expect(page.locator(".no-gpu")).to_be_visible()  # cam-1 reports no GPU
        page.screenshot(path=SHOTS / f"{name.replace('/', '-')}.png", full_page=True)
    page.goto(f"{live.url}/console/devices/jet-3")
    expect(page.locator('#charts .chart[data-key="gpu_temp"]')).to_be_visible()
    page.screenshot(path=SHOTS / "devices-jet-3-gpu.png", full_page=True)
    page.goto(f"{live.url}/console/devices?status=offline")
    expect(page.locator("#device-rows")).to_contain_text("cam-2")
    expect(page.locator("#device-rows")).not_to_contain_text("cam-1")
    page.goto(f"{live.url}/console/models")
    expect(page.locator("table.stages")).to_contain_text("int8")
    page.emulate_media(color_scheme="dark")
    page.goto(f"{live.url}/console/overview")
    page.screenshot(path=SHOTS / "overview-dark.png", full_page=True)
    assert errors == []


def test_device_chart_marks_a_revert_live(live: Live, browser: Browser) -> None:
    page, errors = open_as(browser, live, "otto")
    page.goto(f"{live.url}/console/devices/cam-1?window=15m")
    expect(page.locator("#charts .chart").first).to_be_visible()
    assert page.locator(".mark.revert").count() == 0
    event(
        live.sims["cam-1"],
        "activation.reverted",
        time.time() - 30,
        "p95 latency 3.1x baseline",
        reason="latency",
    )
    # The charts refresh every few seconds: the revert appears without a reload.
    expect(page.locator("#charts .mark.revert").first).to_be_attached(timeout=15_000)
    expect(page.locator('[data-testid="engine-history"]')).to_contain_text(
        "activation.reverted", timeout=10_000
    )
    expect(page.locator('[data-testid="device-status"]')).to_have_text("degraded")
    expect(page.locator('[data-testid="rollback"]')).to_be_enabled()
    expect(page.locator('[data-testid="restart"]')).to_be_enabled()
    page.screenshot(path=SHOTS / "device-revert.png", full_page=True)
    page.locator('[data-testid="rollback"]').click()
    expect(page.locator(".flash.ok")).to_contain_text("Assigned digits-1 again")
    live.sims["cam-1"].wait_desired(1)
    assert live.sims["cam-1"].desired[-1].release == "digits-1"
    page.locator('[data-testid="restart"]').click()
    expect(page.locator(".flash.ok")).to_contain_text("Restart runtime sent (command sequence 1)")
    page.locator('[data-testid="resync"]').click()
    expect(page.locator(".flash.ok")).to_contain_text("Resync sent (command sequence 2)")
    assert errors == []


def test_viewer_sees_no_mutating_buttons_and_forged_posts_fail(
    live: Live, browser: Browser
) -> None:
    page, errors = open_as(browser, live, "vic")
    for name in ("devices/cam-1", "releases", "models"):
        page.goto(f"{live.url}/console/{name}")
        expect(page.locator("h1")).to_be_visible()
        assert page.locator("main form[method=post]").count() == 0, name
    assert page.locator('a[href="/console/settings"]').count() == 0
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    forged = page.request.post(
        f"{live.url}/console/devices/cam-1/rollback", form={"csrf_token": csrf or ""}
    )
    assert forged.status == 403
    no_csrf = page.request.post(
        f"{live.url}/console/assign", form={"release": "digits-2", "device_ids": "cam-1"}
    )
    assert no_csrf.status == 403
    page.screenshot(path=SHOTS / "viewer-device.png", full_page=True)
    assert errors == []
