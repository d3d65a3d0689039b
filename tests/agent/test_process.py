"""The agent as a real process: SIGKILL mid-download, restart, resume; SIGTERM stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil

from edge_agent import AgentClient
from tests.agent.conftest import package_bytes
from tests.agent.fleet import read_json, write_agent_yaml
from tests.support.polling import wait_until
from tests.support.tinymodel import make_mlp_onnx, run_onnx

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 8
BLOCK = 16384


def start_agent(config: Path) -> subprocess.Popen[bytes]:
    code = "import edge_agent, sys; sys.exit(edge_agent.run_agent(sys.argv[1]))"
    return subprocess.Popen([sys.executable, "-c", code, str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_mid_download_resumes_without_refetching(tmp_path, mosquitto, server, packages):
    big = packages["big"]
    data = package_bytes(big)
    config = write_agent_yaml(tmp_path / "agent.yaml", mosquitto.url,
                              fetch_window_blocks=WINDOW, fetch_timeout_s=3.0)
    server.block_delay_s = 0.004
    server.assign(big.sha256, data, release="big-3", sequence=1, block_size=BLOCK)
    blocks = -(-len(data) // BLOCK)

    proc = start_agent(config)
    try:
        wait_until(lambda: len(server.sent) >= blocks // 3, timeout=30, what="a third sent")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        sent_before_kill = server.bytes_sent
        assert sent_before_kill < len(data), "the transfer finished before the kill"

        proc = start_agent(config)
        api = wait_until(lambda: (tmp_path / "state" / "api.json").exists()
                         and read_json(tmp_path / "state" / "api.json")["pid"] == proc.pid
                         and read_json(tmp_path / "state" / "api.json")["url"],
                         timeout=30, what="restarted agent's API")
        client = AgentClient(api)
        wait_until(lambda: client.health()["sha256"] == big.sha256, timeout=60,
                   what="restarted agent serving the package")

        refetched = server.bytes_sent - len(data)
        assert 0 <= refetched <= WINDOW * BLOCK, f"re-downloaded {refetched} bytes"
        resumed = [e for e in server.events if e.type == "ota.resumed"]
        assert resumed
        assert resumed[0].data["verified_blocks"] >= blocks // 3 - WINDOW
        print(f"resume: re-downloaded {refetched} bytes of {len(data)}")

        rss_mb = psutil.Process(proc.pid).memory_info().rss / 1e6
        print(f"agent RSS with the model loaded: {rss_mb:.0f} MB")
        assert rss_mb < 300

        x = np.random.default_rng(9).random((2, 64), dtype=np.float32)
        np.testing.assert_allclose(client.infer(x), run_onnx(make_mlp_onnx(seed=3), x),
                                   rtol=1e-5, atol=1e-6)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        wait_until(lambda: server.latest_state() and not server.latest_state().online,
                   what="offline state on clean stop")
        assert server.latest_state().device_id == "dev-1"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
