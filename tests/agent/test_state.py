from __future__ import annotations

import json

from edge_agent.state import AgentState, StateStore
from jetfleet.messages import SlotStatus

SHA = "a" * 64


def test_round_trip_and_no_temp_files_left(tmp_path):
    store = StateStore(tmp_path)
    state = AgentState(active_sha256=SHA, active_release="r1", assignment_sequence=3,
                       assignment_raw='{"v":1}')
    state.set_slot(SHA, SlotStatus.COMMITTED, now=1.0, release="r1")
    store.save(state)
    loaded = store.load()
    assert loaded == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_missing_file_gives_fresh_state(tmp_path):
    assert StateStore(tmp_path / "new").load() == AgentState()


def test_corrupt_file_is_backed_up_and_a_fresh_state_starts(tmp_path, caplog):
    store = StateStore(tmp_path)
    store.path.write_text('{"active_sha256": "a')  # torn write of an older, non-atomic tool
    assert store.load() == AgentState()
    backup = tmp_path / "state.json.corrupt-0"
    assert backup.read_text() == '{"active_sha256": "a'
    assert "corrupt" in caplog.text

    store.path.write_text(json.dumps({"active_sha256": "not-a-sha"}))  # valid JSON, bad value
    assert store.load() == AgentState()
    assert (tmp_path / "state.json.corrupt-1").exists()


def test_save_replaces_atomically(tmp_path):
    store = StateStore(tmp_path)
    store.save(AgentState(boots=1))
    inode_before = store.path.stat().st_ino
    store.save(AgentState(boots=2))
    assert store.path.stat().st_ino != inode_before  # a rename, not an in-place rewrite
    assert store.load().boots == 2
