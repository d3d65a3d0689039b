from __future__ import annotations

import hashlib
import os

import pytest

from edge_agent.errors import TransferError
from edge_agent.ota import Download, Outcome, to_ranges
from edge_agent.slots import SlotStore
from jetfleet.frames import BlockFrame
from jetfleet.messages import DesiredAssignment, FetchRequest

BS = 1024


def artifact(n_bytes: int = 10 * BS + 100) -> tuple[bytes, str]:
    data = os.urandom(n_bytes)
    return data, hashlib.sha256(data).hexdigest()


def assignment(data: bytes, sha: str) -> DesiredAssignment:
    return DesiredAssignment(device_id="dev-1", release="r", target=f"packages/{sha}.jfpkg",
                             sha256=sha, length=len(data), block_size=BS, sequence=1,
                             issued_at=0.0)


def frame(data: bytes, sha: str, i: int) -> BlockFrame:
    count = -(-len(data) // BS)
    return BlockFrame(sha, i, count, i * BS, data[i * BS : (i + 1) * BS])


class Sent:
    def __init__(self) -> None:
        self.requests: list[FetchRequest] = []
        self.online = True

    def __call__(self, request: FetchRequest) -> bool:
        if self.online:
            self.requests.append(request)
        return self.online

    def blocks(self) -> list[int]:
        return [i for r in self.requests for s, e in r.ranges for i in range(s, e)]


def test_to_ranges():
    assert to_ranges([5, 1, 2, 3, 9]) == [(1, 4), (5, 6), (9, 10)]
    assert to_ranges([]) == []


def test_window_refill_timeouts_and_bad_digest(tmp_path):
    data, sha = artifact()
    sent = Sent()
    dl = Download(assignment(data, sha), SlotStore(tmp_path).slot(sha, len(data), BS), sent,
                  window=4, timeout_s=1.0)
    dl.start(now=0.0)
    assert sent.blocks() == [0, 1, 2, 3]
    dl.on_frame(frame(data, sha, 0), now=0.1)
    dl.on_frame(frame(data, sha, 1), now=0.1)
    assert sent.blocks()[4:] == [4, 5]  # refilled at half a window
    dl.on_bad_block(2, now=0.2)
    assert sent.blocks()[-1] == 2
    assert dl.counters.hash_mismatches == 1
    dl.tick(now=1.5)  # 3, 4, 5 are late: asked for again
    assert sorted(sent.blocks()[-4:]) == [2, 3, 4, 5]
    assert dl.counters.bytes_rerequested >= 3 * BS
    for i in range(11):
        outcome = dl.on_frame(frame(data, sha, i), now=2.0)
    assert outcome is Outcome.COMPLETE
    assert (tmp_path / sha / "package.jfpkg").read_bytes() == data
    assert not (tmp_path / sha / "blocks.bitmap").exists()
    assert dl.counters.bytes_duplicate == 2 * BS  # blocks 0 and 1 came twice


def test_resume_asks_only_for_missing_blocks(tmp_path):
    data, sha = artifact()
    slots = SlotStore(tmp_path)
    first = Download(assignment(data, sha), slots.slot(sha, len(data), BS), Sent(), window=16)
    first.start(now=0.0)
    for i in (0, 1, 2, 5, 7):
        first.on_frame(frame(data, sha, i), now=0.0)
    first.close()  # as if killed: no final sync, only the in-place bitmap writes

    sent = Sent()
    second = Download(assignment(data, sha), slots.slot(sha, len(data), BS), sent, window=16)
    second.start(now=0.0)
    assert second.resumed
    assert second.counters.resumed_blocks == 5
    assert sent.blocks() == [3, 4, 6, 8, 9, 10]
    assert sent.requests[0].ranges == [(3, 5), (6, 7), (8, 11)]
    for i in sent.blocks():
        outcome = second.on_frame(frame(data, sha, i), now=0.0)
    assert outcome is Outcome.COMPLETE


def test_whole_file_mismatch_fails_and_bounds_are_enforced(tmp_path):
    data, _ = artifact()
    wrong_sha = hashlib.sha256(b"other").hexdigest()
    dl = Download(assignment(data, wrong_sha), SlotStore(tmp_path).slot(wrong_sha, len(data), BS),
                  Sent(), window=32)
    dl.start(now=0.0)
    with pytest.raises(TransferError, match="offset"):
        dl.on_frame(BlockFrame(wrong_sha, 1, 11, 5, data[:BS]), now=0.0)
    with pytest.raises(TransferError, match="bytes"):  # last block longer than the length
        dl.on_frame(BlockFrame(wrong_sha, 10, 11, 10 * BS, b"x" * BS), now=0.0)
    with pytest.raises(TransferError, match="blocks"):
        dl.on_frame(BlockFrame(wrong_sha, 0, 12, 0, data[:BS]), now=0.0)
    for i in range(11):
        outcome = dl.on_frame(frame(data, wrong_sha, i), now=0.0)
    assert outcome is Outcome.FAILED
    assert "does not match" in (dl.error or "")
    assert (tmp_path / wrong_sha / "package.partial").stat().st_size == len(data)
    assert not (tmp_path / wrong_sha / "package.jfpkg").exists()


def test_resumed_bitmap_that_lies_gets_one_clean_retry(tmp_path):
    data, sha = artifact()
    slots = SlotStore(tmp_path)
    first = Download(assignment(data, sha), slots.slot(sha, len(data), BS), Sent(), window=16)
    first.start(now=0.0)
    bad = frame(data, sha, 4)
    first.on_frame(BlockFrame(sha, 4, bad.count, bad.offset, b"\0" * BS), now=0.0)  # as if
    first.close()  # a power cut kept the bit but not the block's data
    sent = Sent()
    second = Download(assignment(data, sha), slots.slot(sha, len(data), BS), sent, window=16)
    second.start(now=0.0)
    for i in range(11):
        outcome = second.on_frame(frame(data, sha, i), now=0.0)
    assert outcome is Outcome.RUNNING  # whole-file check failed → starting over once
    for i in range(11):
        outcome = second.on_frame(frame(data, sha, i), now=0.0)
    assert outcome is Outcome.COMPLETE


def test_stall_deadline_and_offline_pause(tmp_path):
    data, sha = artifact()
    sent = Sent()
    dl = Download(assignment(data, sha), SlotStore(tmp_path).slot(sha, len(data), BS), sent,
                  window=4, timeout_s=1.0)
    sent.online = False
    dl.start(now=0.0)
    assert sent.requests == []
    assert dl.outstanding == {}
    sent.online = True
    dl.resume(now=0.5)
    assert sent.blocks() == [0, 1, 2, 3]
    assert dl.tick(now=5.0) is Outcome.RUNNING
    assert dl.tick(now=100.0) is Outcome.FAILED
    assert "stalled" in (dl.error or "")


def test_cleanup_keeps_named_slots(tmp_path):
    store = SlotStore(tmp_path)
    for name in ("a" * 64, "b" * 64, "c" * 64):
        (tmp_path / name).mkdir()
    assert store.cleanup({"a" * 64, None, "c" * 64}) == ["b" * 64]
    assert store.names() == ["a" * 64, "c" * 64]


def test_broadcast_stream_holds_back_unicast_requests(tmp_path):
    """Blocks arriving unasked (a broadcast on a/{sha}/blocks) mean the transfer is moving:
    the agent neither re-requests its window nor asks for more until the stream pauses,
    then asks only for what is still missing (repair)."""
    data, sha = artifact(20 * BS)
    sent = Sent()
    dl = Download(assignment(data, sha), SlotStore(tmp_path).slot(sha, len(data), BS), sent,
                  window=4, timeout_s=1.0)
    dl.start(now=0.0)
    assert sent.blocks() == [0, 1, 2, 3]  # the first window (the server may hold it)
    t = 0.0
    for i in range(4, 18):  # the broadcast streams 4..17 over 2.8 s; 0..3 and 18, 19 missed
        t += 0.2
        assert dl.on_frame(frame(data, sha, i), now=t) is Outcome.RUNNING
        dl.tick(now=t)
    assert sent.blocks() == [0, 1, 2, 3]  # nothing re-requested or added while streaming
    dl.tick(now=t + 1.1)  # the stream paused past the timeout: repair the gaps only
    assert sorted(sent.blocks()[4:]) == [0, 1, 2, 3]
    for i in (0, 1, 2, 3):
        dl.on_frame(frame(data, sha, i), now=t + 1.2)
    assert sorted(sent.blocks()[8:]) == [18, 19]
    for i in (18, 19):
        outcome = dl.on_frame(frame(data, sha, i), now=t + 1.3)
    assert outcome is Outcome.COMPLETE
    assert dl.counters.bytes_duplicate == 0


def test_slow_drip_transfer_hits_its_deadline(tmp_path):
    """An endless/slow transfer: blocks keep trickling in just fast enough never to
    stall, but the whole transfer is bounded by its deadline (floor + length / rate)."""
    data, sha = artifact(50 * BS)
    sent = Sent()
    dl = Download(assignment(data, sha), SlotStore(tmp_path).slot(sha, len(data), BS), sent,
                  window=4, timeout_s=1.0, deadline_s=10.0)
    dl.start(now=0.0)
    t, i = 0.0, 0
    outcome = Outcome.RUNNING
    while outcome is Outcome.RUNNING and i < 50:
        t += 0.9  # under the per-request timeout: never "stalled"
        dl.on_frame(frame(data, sha, i), now=t)
        outcome = dl.tick(now=t)
        i += 1
    assert outcome is Outcome.FAILED
    assert "deadline" in (dl.error or "")
    assert 10.0 < t < 12.0  # failed at the deadline, not at the end
    assert not (tmp_path / sha / "package.jfpkg").exists()
