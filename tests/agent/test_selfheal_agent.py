"""Self-heal in the whole agent: real Mosquitto, fake fleet server, local HTTP traffic."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_agent import Agent
from jetfleet.messages import SlotStatus
from tests.agent.conftest import package_bytes
from tests.agent.fleet import agent_config
from tests.agent.test_batching import post
from tests.agent.test_fleet_loop import ManualClock, activate, serving
from tests.agent.test_watchdog import slow  # noqa: F401  (fixture)
from tests.support.polling import wait_until

P95_RULE = {"metric": "p95_latency_ratio", "threshold": 2.0, "window_s": 5, "min_requests": 50}


class Traffic:
    """Clients posting to the agent's local API; every answer is kept."""

    def __init__(self, agent: Agent, clients: int = 4) -> None:
        self.agent = agent
        self.codes: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        x = np.random.default_rng().random((1, 64), dtype=np.float32)
        while not self._stop.is_set():
            status, body, _h, _t = post(self.agent.api, x)  # type: ignore[arg-type]
            self.codes.append((status, body.get("sha256")))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def start_agent(tmp_path, mosquitto, clock, **overrides) -> Agent:
    config = agent_config(tmp_path, mosquitto.url, bake_s=60,
                          watchdog={"interval_s": 0.05, "rules": [P95_RULE]}, **overrides)
    agent = Agent(config, clock=clock)
    agent.start()
    return agent


def test_good_swap_under_local_traffic_fails_no_request(tmp_path, mosquitto, server, packages,
                                                        clock):
    v1, v2 = packages["v1"], packages["v2"]
    agent = start_agent(tmp_path, mosquitto, clock)
    try:
        activate(server, agent, v1, "tiny-1", 1)
        with Traffic(agent) as traffic:
            wait_until(lambda: len(traffic.codes) > 100, what="steady traffic")
            activate(server, agent, v2, "tiny-2", 2)
            wait_until(lambda: sum(1 for _, s in traffic.codes if s == v2.sha256) > 100,
                       what="traffic on v2")
        assert {code for code, _ in traffic.codes} == {200}
        assert agent.state.trial is not None
        assert agent.state.reverted == []
    finally:
        agent.stop()


def test_reverted_release_is_not_retried_until_a_new_sequence(tmp_path, mosquitto, server,
                                                              packages, slow, clock):  # noqa: F811
    v1 = packages["v1"]
    agent = start_agent(tmp_path, mosquitto, clock)
    try:
        activate(server, agent, v1, "tiny-1", 1)
        clock.now += 61
        wait_until(lambda: agent.state.known_good_sha256 == v1.sha256, what="v1 committed")
        with Traffic(agent, clients=2) as traffic:
            wait_until(lambda: len(traffic.codes) > 300, what="baseline traffic")
            assignment = activate(server, agent, slow, "slow", 2)
            wait_until(lambda: serving(agent, v1.sha256), what="watchdog revert")
        assert agent.state.reverted == [slow.sha256]
        assert {code for code, _ in traffic.codes} == {200}
        wait_until(lambda: "activation.reverted" in server.event_types(), what="revert event")
        trip = next(e for e in server.events if e.type == "selfheal.action")
        assert trip.data["action"] == "revert"
        assert trip.data["metric"] == "p95_latency_ratio"
        wait_until(lambda: (s := server.latest_state()) is not None
                   and s.active_sha256 == v1.sha256, what="state published")
        assert "jetfleet_agent_watchdog_reverts_total" in agent.metrics_text()

        server.publish_desired(assignment.to_bytes())  # retained re-delivery
        time.sleep(0.5)
        assert serving(agent, v1.sha256)
        assert agent.state.slots[slow.sha256].status is SlotStatus.REVERTED

        server.assign(slow.sha256, package_bytes(slow), release="slow", sequence=3)
        wait_until(lambda: serving(agent, slow.sha256), what="new sequence applies it again")
        assert agent.state.reverted == []
    finally:
        agent.stop()
