"""Activation, trial, commit, revert — and what a restart after SIGKILL at each step serves."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from edge_agent import Agent
from edge_agent.activation import Activator
from edge_agent.engine import EngineSlot
from edge_agent.runtime import OnnxRuntimeBackend
from edge_agent.slots import SlotStore
from edge_agent.state import AgentState, StateStore, TrialRecord
from jetfleet.messages import DesiredAssignment, SlotStatus
from tests.agent.fleet import agent_config
from tests.support.polling import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def place(state_dir: Path, info) -> None:
    slot = state_dir / "slots" / info.sha256
    slot.mkdir(parents=True, exist_ok=True)
    shutil.copy(info.path, slot / "package.jfpkg")


def activator(state_dir: Path, clock: Clock, events: list[str], bake_s: float = 10.0):
    store = StateStore(state_dir)
    act = Activator(
        state=store.load(), store=store, slots=SlotStore(state_dir / "slots"),
        engines=EngineSlot(), factory=OnnxRuntimeBackend, threads=1, bake_s=bake_s,
        clock=clock, emit=lambda type, **kw: events.append(type.value), on_change=lambda: None,
    )
    return act


def test_trial_then_commit_after_bake(tmp_path, packages):
    v1 = packages["v1"]
    place(tmp_path, v1)
    clock, events = Clock(), []
    act = activator(tmp_path, clock, events)
    assert act.activate(v1.sha256, "r1", 1)
    assert act.engines.current.sha256 == v1.sha256
    assert act.state.trial is not None
    assert act.state.known_good_sha256 is None
    clock.now += 5
    assert not act.tick()
    clock.now += 6
    assert act.tick()
    saved = StateStore(tmp_path).load()
    assert saved.known_good_sha256 == v1.sha256
    assert saved.trial is None
    assert saved.slots[v1.sha256].status is SlotStatus.COMMITTED
    assert events == ["activation.staged", "activation.testing", "activation.trial",
                      "activation.committed"]


def committed_v1_then(tmp_path, packages, **state_changes) -> None:
    """state.json as a crash would leave it: v1 known-good, plus ``state_changes``."""
    v1 = packages["v1"]
    place(tmp_path, v1)
    place(tmp_path, packages["v2"])
    state = AgentState(active_sha256=v1.sha256, active_release="r1",
                       known_good_sha256=v1.sha256, known_good_release="r1")
    state.set_slot(v1.sha256, SlotStatus.COMMITTED, now=1.0, release="r1")
    for key, value in state_changes.items():
        setattr(state, key, value)
    StateStore(tmp_path).save(state)


def test_killed_after_the_pointer_moved_serves_new_engine_and_counts_the_boot(tmp_path, packages):
    v2 = packages["v2"]
    committed_v1_then(tmp_path, packages, active_sha256=v2.sha256, active_release="r2",
                      trial=TrialRecord(sha256=v2.sha256, release="r2", started_at=999.0))
    act = activator(tmp_path, Clock(), [])
    act.boot()
    assert act.engines.current.sha256 == v2.sha256
    assert StateStore(tmp_path).load().trial.boots == 1


def test_crash_loop_during_trial_reverts_to_known_good(tmp_path, packages):
    v1, v2 = packages["v1"], packages["v2"]
    committed_v1_then(tmp_path, packages, active_sha256=v2.sha256, active_release="r2",
                      trial=TrialRecord(sha256=v2.sha256, release="r2", started_at=999.0,
                                        boots=3))
    events: list[str] = []
    act = activator(tmp_path, Clock(), events)
    act.boot()
    assert act.engines.current.sha256 == v1.sha256
    saved = StateStore(tmp_path).load()
    assert saved.active_sha256 == v1.sha256
    assert saved.trial is None
    assert saved.reverted == [v2.sha256]
    assert saved.slots[v2.sha256].status is SlotStatus.REVERTED
    assert "crash loop" in saved.slots[v2.sha256].reason
    assert events == ["activation.reverted"]


def test_active_package_missing_falls_back_to_known_good(tmp_path, packages):
    v1, v2 = packages["v1"], packages["v2"]
    committed_v1_then(tmp_path, packages, active_sha256=v2.sha256, active_release="r2")
    (tmp_path / "slots" / v2.sha256 / "package.jfpkg").write_bytes(b"torn")
    act = activator(tmp_path, Clock(), [])
    act.boot()
    assert act.engines.current.sha256 == v1.sha256


def test_killed_before_the_pointer_moved_serves_old_then_finishes(tmp_path, mosquitto, packages):
    """SIGKILL during testing: state still points at v1; the restart serves v1 and then
    completes the activation of v2 from its (complete) slot."""
    v1, v2 = packages["v1"], packages["v2"]
    assignment = DesiredAssignment(device_id="dev-1", release="r2", target="packages/x.jfpkg",
                                   sha256=v2.sha256, length=v2.length, sequence=2,
                                   issued_at=time.time())
    state_dir = tmp_path / "state"
    committed_v1_then(state_dir, packages, assignment_sequence=2,
                      assignment_raw=assignment.to_bytes().decode())
    state = StateStore(state_dir).load()
    state.set_slot(v2.sha256, SlotStatus.TESTING, now=2.0, release="r2")
    StateStore(state_dir).save(state)

    agent = Agent(agent_config(tmp_path, mosquitto.url, bake_s=30))
    served: list[str] = []
    original_swap = agent.engines.swap
    agent.engines.swap = lambda e: (served.append(e.sha256), original_swap(e))[1]
    agent.start()
    try:
        assert served == [v1.sha256, v2.sha256]
        assert agent.state.active_sha256 == v2.sha256
        assert agent.state.trial is not None
        assert agent.state.known_good_sha256 == v1.sha256
        wait_until(lambda: agent.health()[0], what="serving")
    finally:
        agent.stop()
