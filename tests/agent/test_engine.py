from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_agent.engine import (
    EngineSlot,
    InferenceService,
    check_engine,
    load_engine,
)
from edge_agent.errors import ActivationError, BadRequest, NotServing
from edge_agent.runtime import OnnxRuntimeBackend
from edge_agent.telemetry import InferenceStats
from tests.support.tinymodel import make_mlp_onnx, run_onnx


def engine_for(info, release="r"):
    return load_engine(info.path, info.sha256, release, OnnxRuntimeBackend, 1)


def test_load_and_check_a_real_package(packages):
    engine = engine_for(packages["v1"])
    check = check_engine(engine, budget_ms=1000)
    assert check.golden_max_error < 1e-4
    assert check.latency_ms < 1000
    assert [s.name for s in engine.inputs] == ["input"]
    assert engine.inputs[0].shape == (None, 64)


def test_bad_golden_and_latency_budget_fail_testing(packages):
    with pytest.raises(ActivationError, match="golden"):
        check_engine(engine_for(packages["bad_golden"]), budget_ms=1000)
    with pytest.raises(ActivationError, match="budget"):
        check_engine(engine_for(packages["v1"]), budget_ms=0.0)


def test_wrong_sha_is_refused(packages):
    with pytest.raises(ActivationError, match="does not match"):
        load_engine(packages["v1"].path, packages["v2"].sha256, "r", OnnxRuntimeBackend, 1)


def test_input_validation(packages):
    service = InferenceService(EngineSlot(), InferenceStats())
    with pytest.raises(NotServing):
        service.infer({"input": np.zeros((1, 64), np.float32)})
    service.slot.swap(engine_for(packages["v1"]))
    with pytest.raises(BadRequest, match="axis 1 must be 64"):
        service.infer({"input": np.zeros((1, 63), np.float32)})
    with pytest.raises(BadRequest, match="unknown input"):
        service.infer({"image": np.zeros((1, 64), np.float32)})
    with pytest.raises(BadRequest, match="2 dimensions"):
        service.infer({"input": np.zeros(64, np.float32)})
    out = service.infer({"input": np.ones((2, 64), np.float64)})  # cast to float32
    assert out.outputs["logits"].shape == (2, 10)
    assert service.stats.total_rejected == 3


def test_swap_under_concurrent_requests_has_zero_failures(packages):
    v1, v2 = packages["v1"], packages["v2"]
    slot = EngineSlot()
    service = InferenceService(slot, InferenceStats())
    first = engine_for(v1, "r1")
    slot.swap(first)
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    expected = {v1.sha256: run_onnx(make_mlp_onnx(seed=1), x),
                v2.sha256: run_onnx(make_mlp_onnx(seed=2), x)}
    failures: list[BaseException] = []
    served: dict[str, int] = {v1.sha256: 0, v2.sha256: 0}
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            try:
                result = service.infer({"input": x})
                np.testing.assert_allclose(result.outputs["logits"], expected[result.sha256],
                                           rtol=1e-5, atol=1e-6)
                with lock:
                    served[result.sha256] += 1
            except BaseException as exc:  # any failure at all is what this test looks for
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    engines = [first, engine_for(v2, "r2"), engine_for(v1, "r1"), engine_for(v2, "r2")]
    for new in engines[1:]:
        time.sleep(0.1)
        slot.swap(new)
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert served[v1.sha256] > 0
    assert served[v2.sha256] > 0
    assert all(e.closed for e in engines[:-1])
    assert not engines[-1].closed
