"""Property tests of the transfer bookkeeping."""

from __future__ import annotations

import hashlib
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.ota import to_ranges
from edge_agent.slots import Slot


@given(st.sets(st.integers(min_value=0, max_value=500)))
def test_ranges_cover_exactly_the_indices(indices):
    ranges = to_ranges(indices)
    covered = [i for start, end in ranges for i in range(start, end)]
    assert covered == sorted(indices)
    assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(ranges))


@settings(max_examples=30, deadline=None)
@given(length=st.integers(min_value=1, max_value=5000),
       block=st.integers(min_value=1, max_value=700), data=st.data())
def test_bitmap_survives_reopen(tmp_path_factory, length, block, data):
    root = tmp_path_factory.mktemp("slot")
    payload = bytes(i % 251 for i in range(length))
    sha = hashlib.sha256(payload).hexdigest()
    slot = Slot(root, sha, length, block)
    slot.open()
    picked = data.draw(st.sets(st.integers(min_value=0, max_value=slot.block_count - 1)))
    for i in picked:
        slot.write_block(i, i * block, payload[i * block : (i + 1) * block], now=0.0)
    slot.close()
    again = Slot(root, sha, length, block)
    assert again.open() == len(picked)
    assert set(again.missing()) == set(range(again.block_count)) - picked
    again.close()
