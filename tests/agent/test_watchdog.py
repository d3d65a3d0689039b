"""Self-heal (issue 5): watchdog rules, fast revert to the known-good engine, restarts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.activation import Activator
from edge_agent.batching import Batcher
from edge_agent.config import parse_config
from edge_agent.engine import EngineSlot, InferenceService
from edge_agent.errors import ConfigError, InferenceError
from edge_agent.rules import CrashRule, RequestRule, ServingConfig, WatchdogConfig
from edge_agent.runtime import Backend, OnnxRuntimeBackend
from edge_agent.slots import SlotStore
from edge_agent.state import StateStore
from edge_agent.telemetry import InferenceStats
from edge_agent.watchdog import RequestLog, Watchdog
from jetfleet.messages import SlotStatus
from tests.agent.faults import FaultyBackend, model_bytes
from tests.agent.test_activation import Clock, place
from tests.support.polling import wait_until
from tests.support.tinymodel import make_package


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory):
    """A correct release ~3-4x slower under the test load (600 extra MatMuls)."""
    root = tmp_path_factory.mktemp("slow")
    return make_package(root / "slow.jfpkg", version="9", seed=1, extra_matmuls=600)


class Stack:
    """The agent's serving path in-process: activator, engines, batcher, watchdog."""

    def __init__(self, state_dir: Path, factory: Callable[[], Backend],
                 rules: list, *, max_batch_size: int = 1) -> None:
        self.clock = Clock()
        self.events: list[tuple[str, dict]] = []
        self.store = StateStore(state_dir)
        self.engines = EngineSlot()
        self.activator = Activator(
            state=self.store.load(), store=self.store, slots=SlotStore(state_dir / "slots"),
            engines=self.engines, factory=factory, threads=1, bake_s=3600.0, clock=self.clock,
            emit=lambda type, **kw: self.events.append((type.value, kw)), on_change=lambda: None,
        )
        self.service = InferenceService(self.engines, InferenceStats())
        self.log = RequestLog()
        self.service.observer = self.log.record
        self.batcher = Batcher(self.service, ServingConfig(max_batch_size=max_batch_size,
                                                           max_queue_delay_ms=1, workers=2))
        self.watchdog = Watchdog(
            WatchdogConfig(interval_s=0.02, rules=rules), activator=self.activator,
            log=self.log, limiter=self.batcher.limiter, gpu=None,
            emit=lambda type, **kw: self.events.append((type.value, kw)), on_change=lambda: None,
        )
        self.results: list[tuple[float, str | None, str]] = []  # (t, sha or None, error)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def commit(self, info, release: str) -> None:
        assert self.activator.activate(info.sha256, release, 1)
        self.clock.now += 3601
        assert self.activator.tick()

    def start(self, clients: int = 4, watchdog: bool = True) -> None:
        self.batcher.start()
        for n in range(clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        if watchdog:
            thread = threading.Thread(target=self._watch, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.batcher.stop()

    def _client(self, n: int) -> None:
        rng = np.random.default_rng(n)
        while not self._stop.is_set():
            x = rng.random((1, 64), dtype=np.float32)
            try:
                result = self.batcher.infer({"input": x})
                self.results.append((time.perf_counter(), result.sha256, ""))
            except InferenceError as exc:
                self.results.append((time.perf_counter(), None, str(exc)))
            except Exception as exc:  # BackendError: a failed request
                self.results.append((time.perf_counter(), None, str(exc)))
            time.sleep(0.001)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.watchdog.tick()
            time.sleep(0.005)

    def serving(self, sha256: str) -> bool:
        engine = self.engines.current
        return engine is not None and engine.sha256 == sha256

    def types(self) -> list[str]:
        return [t for t, _ in self.events]

    def actions(self) -> list[str]:
        return [kw["data"]["action"] for t, kw in self.events if t == "selfheal.action"]


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    made: list[Stack] = []
    yield made
    for stack in made:
        stack.stop()


def make_stack(stacks: list[Stack], tmp_path: Path, packages: dict, factory, rules,
               **kw) -> Stack:
    for info in packages.values():
        place(tmp_path, info)
    stack = Stack(tmp_path, factory, rules, **kw)
    stacks.append(stack)
    return stack


# -- configuration ------------------------------------------------------------------------
def base(**extra) -> dict:
    return {"device_id": "dev-1", "state_dir": "/tmp/x", **extra}


def test_defaults_and_flat_api_keys_still_work():
    cfg = parse_config(base(api_host="0.0.0.0", api_port=9000,
                            serving={"max_batch_size": 4, "rate_limit_rps": 50}))
    assert (cfg.api_host, cfg.api_port, cfg.serving.max_batch_size) == ("0.0.0.0", 9000, 4)
    metrics = [r.metric for r in cfg.watchdog.rules]
    assert metrics == ["error_rate", "p95_latency_ratio", "runtime_crash", "gpu_temp_c"]


@pytest.mark.parametrize(("watchdog", "field"), [
    ({"rules": [{"metric": "error_rate", "op": ">"}]}, "watchdog.rules.0.error_rate.threshold"),
    ({"rules": [{"metric": "error_rate", "threshold": 0.1, "windw_s": 3}]},
     "watchdog.rules.0.error_rate.windw_s"),
    ({"rules": [{"metric": "error_rate", "threshold": 0.1, "op": "=>"}]},
     "watchdog.rules.0.error_rate.op"),
    ({"rules": [{"metric": "cpu_pct", "threshold": 1}]}, "watchdog.rules.0"),
    ({"rules": [{"metric": "runtime_crash", "max_restarts": -1}]},
     "watchdog.rules.0.runtime_crash.max_restarts"),
    ({"rules": [{"metric": "gpu_temp_c", "threshold": 85, "action": "revert"}]},
     "watchdog.rules.0.gpu_temp_c.action"),
    ({"interval_s": 0}, "watchdog.interval_s"),
])
def test_bad_rules_are_refused_naming_the_field(watchdog, field):
    with pytest.raises(ConfigError) as info:
        parse_config(base(watchdog=watchdog))
    assert f"field {field!r}" in str(info.value)


def test_bad_serving_key_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"serving\.max_queue"):
        parse_config(base(serving={"max_queue": 0}))


# -- revert rules ---------------------------------------------------------------------------
def test_error_rate_trips_and_reverts_fast_with_no_failures_after(tmp_path, packages, stacks):
    v1, v2 = packages["v1"], packages["v2"]
    bad = model_bytes(v2.path)
    rule = RequestRule(metric="error_rate", threshold=0.05, window_s=5, min_requests=20)
    stack = make_stack(stacks, tmp_path, {"v1": v1, "v2": v2},
                       lambda: FaultyBackend(bad, fail_every=5), [rule])
    stack.commit(v1, "r1")
    stack.start()
    wait_until(lambda: len(stack.results) > 50, what="steady traffic on v1")
    assert stack.activator.activate(v2.sha256, "r2", 2)
    assert stack.engines.standby is not None  # known-good stays loaded during the trial
    wait_until(lambda: stack.serving(v1.sha256), timeout=10, what="reverted to v1")
    reverted_at = time.perf_counter()
    wait_until(lambda: sum(1 for r in stack.results if r[0] > reverted_at) > 200,
               what="traffic after the revert")
    stack.stop()

    assert stack.watchdog.last_revert_ms is not None
    assert stack.watchdog.last_revert_ms < 1000  # trip → serving known-good
    failures = [r for r in stack.results if r[1] is None]
    assert failures
    assert all(r[2] == "injected fault" for r in failures)  # only v2's own
    assert not [r for r in failures if r[0] > reverted_at]
    assert "activation.reverted" in stack.types()
    trip = next(kw for t, kw in stack.events if t == "selfheal.action")
    assert trip["data"]["rule"] == "error_rate > 0.05"
    assert trip["data"]["value"] > 0.05
    saved = StateStore(tmp_path).load()
    assert saved.reverted == [v2.sha256]
    assert saved.slots[v2.sha256].status is SlotStatus.REVERTED
    assert saved.selfheal.last_action == "revert"


def test_slower_release_trips_the_p95_rule_and_reverts(tmp_path, packages, slow, stacks):
    v1 = packages["v1"]
    rule = RequestRule(metric="p95_latency_ratio", threshold=2.0, window_s=5, min_requests=50)
    stack = make_stack(stacks, tmp_path, {"v1": v1, "slow": slow}, OnnxRuntimeBackend, [rule])
    stack.commit(v1, "r1")
    stack.start(clients=2)
    wait_until(lambda: len(stack.results) > 300, what="baseline traffic on v1")
    assert stack.activator.activate(slow.sha256, "slow", 2)
    wait_until(lambda: stack.serving(v1.sha256), timeout=10, what="reverted to v1")
    stack.stop()
    trip = next(kw for t, kw in stack.events if t == "selfheal.action")
    assert trip["data"]["action"] == "revert"
    assert trip["data"]["p95_ms"] > 2 * trip["data"]["baseline_p95_ms"]
    assert not [r for r in stack.results if r[1] is None]
    assert StateStore(tmp_path).load().reverted == [slow.sha256]


# -- runtime crash ----------------------------------------------------------------------------
def test_crashing_runtime_is_restarted_then_reverted(tmp_path, packages, stacks):
    v1, v2 = packages["v1"], packages["v2"]
    bad = model_bytes(v2.path)
    rule = CrashRule(metric="runtime_crash", max_restarts=2, within_s=60)
    stack = make_stack(stacks, tmp_path, {"v1": v1, "v2": v2},
                       lambda: FaultyBackend(bad, crash_after=30), [rule])
    stack.commit(v1, "r1")
    stack.start(clients=2)
    assert stack.activator.activate(v2.sha256, "r2", 2)
    wait_until(lambda: stack.serving(v1.sha256), timeout=10, what="reverted to v1")
    stack.stop()
    assert stack.actions() == ["restart", "restart", "revert"]
    assert stack.types()[-1] == "activation.reverted"
    assert stack.watchdog.restarts == 2
    served_v2 = sum(1 for r in stack.results if r[1] == v2.sha256)
    assert served_v2 >= 60  # each restarted runtime served again until it crashed
    saved = StateStore(tmp_path).load()
    assert len(saved.selfheal.restarts) == 2
    assert saved.reverted == [v2.sha256]


def test_crashing_known_good_is_restarted_never_reverted(tmp_path, packages, stacks):
    v1 = packages["v1"]
    rule = CrashRule(metric="runtime_crash", max_restarts=2, within_s=60)
    stack = make_stack(stacks, tmp_path, {"v1": v1},
                       lambda: FaultyBackend(model_bytes(v1.path), crash_after=20), [rule])
    stack.commit(v1, "r1")
    stack.start(clients=2)
    wait_until(lambda: "restart_limit" in stack.actions(), timeout=10, what="restart limit")
    stack.stop()
    assert stack.actions() == ["restart", "restart", "restart_limit"]
    assert "activation.reverted" not in stack.types()
    assert stack.serving(v1.sha256)
