"""Local API admission and dynamic batching: merged batches, 429 and 503 at once."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from edge_agent.api import ApiServer
from edge_agent.batching import Batcher
from edge_agent.engine import EngineSlot, InferenceService, load_engine
from edge_agent.errors import Overloaded
from edge_agent.rules import ServingConfig
from edge_agent.runtime import OnnxRuntimeBackend
from edge_agent.telemetry import InferenceStats
from tests.agent.faults import model_bytes
from tests.support.tinymodel import run_onnx


def make_batcher(info, **config) -> Batcher:
    slot = EngineSlot()
    slot.swap(load_engine(info.path, info.sha256, "r1", OnnxRuntimeBackend, 1))
    return Batcher(InferenceService(slot, InferenceStats()), ServingConfig(**config))


@pytest.fixture
def served() -> Iterator[list[ApiServer | Batcher]]:
    things: list[ApiServer | Batcher] = []
    yield things
    for thing in things:
        thing.stop()


def serve(served, batcher: Batcher, start: bool = True) -> ApiServer:
    if start:
        batcher.start()
    api = ApiServer(("127.0.0.1", 0), batcher, lambda: (True, {}), lambda: "")
    api.start()
    served += [api, batcher]
    return api


def post(api: ApiServer, rows: np.ndarray) -> tuple[int, dict, dict, float]:
    host, port = api.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=10)
    body = json.dumps({"inputs": {"input": rows.tolist()}}).encode()
    start = time.perf_counter()
    conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    elapsed = time.perf_counter() - start
    conn.close()
    return resp.status, data, dict(resp.getheaders()), elapsed


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(packages, served):
    v1 = packages["v1"]
    batcher = make_batcher(v1, max_batch_size=8, max_queue_delay_ms=50, workers=1)
    batcher.start()
    served.append(batcher)
    rng = np.random.default_rng(0)
    inputs = [rng.random((1 + i % 3, 64), dtype=np.float32) for i in range(16)]
    outputs: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(inputs))

    def call(i: int) -> None:
        barrier.wait()
        outputs[i] = batcher.infer({"input": inputs[i]}).outputs["logits"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    model = model_bytes(v1.path)
    for i, x in enumerate(inputs):
        np.testing.assert_allclose(outputs[i], run_onnx(model, x), rtol=1e-4, atol=1e-5)
    assert max(batcher.batch_sizes) > 1
    assert sum(size * n for size, n in batcher.batch_sizes.items()) == len(inputs)
    assert batcher.batches < len(inputs)


def test_rate_limit_answers_429_at_once(packages, served):
    api = serve(served, make_batcher(packages["v1"], rate_limit_rps=1, rate_limit_burst=2))
    x = np.zeros((1, 64), dtype=np.float32)
    codes = [post(api, x) for _ in range(4)]
    assert [c[0] for c in codes] == [200, 200, 429, 429]
    _status, body, headers, elapsed = codes[2]
    assert "admission rate" in body["error"]
    assert headers["Retry-After"] == "1"
    assert elapsed < 0.05
    assert api.service.rejected_rate == 2  # type: ignore[attr-defined]


def test_full_queue_answers_503_at_once_and_queued_requests_are_served(packages, served):
    batcher = make_batcher(packages["v1"], max_queue=2, workers=1)
    api = serve(served, batcher, start=False)  # workers not started yet: the queue fills
    x = np.ones((1, 64), dtype=np.float32)
    waiting: list[int] = []
    threads = [threading.Thread(target=lambda: waiting.append(post(api, x)[0]))
               for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while batcher.queued() < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    status, body, headers, elapsed = post(api, x)
    assert status == 503
    assert "queue is full" in body["error"]
    assert elapsed < 0.05
    assert headers["Retry-After"] == "1"
    with pytest.raises(Overloaded):
        batcher.infer({"input": x})
    batcher.start()
    for t in threads:
        t.join(10)
    assert waiting == [200, 200]
    assert batcher.rejected_full == 2
