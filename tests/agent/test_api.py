from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import numpy as np
import pytest

from edge_agent import AgentClient
from edge_agent.api import ApiServer, prometheus
from edge_agent.engine import EngineSlot, InferenceService, load_engine
from edge_agent.errors import BadRequest, NotServing
from edge_agent.replay import Replay
from edge_agent.runtime import OnnxRuntimeBackend
from edge_agent.telemetry import InferenceStats
from tests.support.polling import wait_until
from tests.support.tinymodel import make_mlp_onnx, run_onnx


@pytest.fixture
def api() -> Iterator[ApiServer]:
    service = InferenceService(EngineSlot(), InferenceStats())

    def health():
        engine = service.slot.current
        return engine is not None, {"release": engine.release if engine else None}

    server = ApiServer(("127.0.0.1", 0), service, health, lambda: "up 1\n")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def load(api: ApiServer, info) -> None:
    api.service.slot.swap(load_engine(info.path, info.sha256, "r1", OnnxRuntimeBackend, 1))


def post(api: ApiServer, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    host, port = api.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=5)
    conn.request("POST", "/v1/infer", body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else {}


def test_no_model_is_503(api):
    client = AgentClient(api.url)
    assert client.health()["serving"] is False
    with pytest.raises(NotServing):
        client.infer(np.zeros((1, 64), np.float32))


def test_json_and_raw_inference_match_onnxruntime(api, packages):
    load(api, packages["v1"])
    client = AgentClient(api.url)
    x = np.random.default_rng(1).random((5, 64), dtype=np.float32)
    expected = run_onnx(make_mlp_onnx(seed=1), x)
    np.testing.assert_allclose(client.infer(x), expected, rtol=1e-5, atol=1e-6)
    reply = client.infer_json({"input": x})
    np.testing.assert_allclose(np.asarray(reply["outputs"]["logits"]), expected, rtol=1e-5,
                               atol=1e-6)
    assert reply["release"] == "r1"
    assert reply["sha256"] == packages["v1"].sha256
    assert client.health() == {"release": "r1", "serving": True}
    assert client.metrics() == "up 1\n"


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{nope", {"Content-Type": "application/json"}, "not valid JSON"),
        (b'{"input": [1]}', {"Content-Type": "application/json"}, '{"inputs"'),
        (b'{"inputs": {"input": [[1, 2], [3]]}}', {}, "rectangular"),
        (b'{"inputs": {"input": [["a"]]}}', {}, "numbers"),
        (b'{"inputs": {"input": [[1, 2]]}}', {}, "axis 1 must be 64"),
        (b'{"inputs": {"pixels": [[1]]}}', {}, "unknown input"),
        (b"\0" * 256, {"Content-Type": "application/octet-stream"}, "X-Shape header"),
        (b"\0" * 256, {"Content-Type": "application/octet-stream", "X-Shape": "1,64",
                       "X-Dtype": "float64"}, "needs 512 bytes"),
        (b"\0" * 255, {"Content-Type": "application/octet-stream", "X-Shape": "1,64"},
         "body has 255"),
        (b"\0" * 256, {"Content-Type": "application/octet-stream", "X-Shape": "1,x"},
         "comma-separated"),
        (b"\0" * 256, {"Content-Type": "application/octet-stream", "X-Shape": "1,64",
                       "X-Dtype": "complex128"}, "not supported"),
    ],
)
def test_bad_bodies_are_400_with_a_message(api, packages, body, headers, message):
    load(api, packages["v1"])
    status, reply = post(api, body, headers)
    assert status == 400
    assert message in reply["error"]


def test_unknown_route_and_too_large(api, packages):
    load(api, packages["v1"])
    host, port = api.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=5)
    conn.request("GET", "/nope")
    assert conn.getresponse().status == 404
    conn.close()
    conn = http.client.HTTPConnection(str(host), port, timeout=5)
    conn.putrequest("POST", "/v1/infer")
    conn.putheader("Content-Length", str(1 << 40))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    with pytest.raises(BadRequest):
        AgentClient(api.url).infer(np.zeros((1, 3), np.float32))


def test_replay_counts_as_traffic(api, packages):
    load(api, packages["v1"])
    samples = np.random.default_rng(2).random((4, 64), dtype=np.float32)  # no batch axis
    replay = Replay(api.service, samples, rate_hz=200)
    replay.start()
    wait_until(lambda: api.service.stats.total_count >= 10, what="replayed requests")
    replay.stop()
    assert replay.failed == 0
    assert replay.sent >= 10


def test_prometheus_text_format():
    text = prometheus([("x_total", "counter", "help text", [({"a": 'q"uote'}, 3.0)]),
                       ("y", "gauge", "g", [({}, 0.25)])])
    assert text == ('# HELP x_total help text\n# TYPE x_total counter\nx_total{a="q\\"uote"} 3\n'
                    "# HELP y g\n# TYPE y gauge\ny 0.25\n")
