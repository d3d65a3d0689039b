import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetfleet.errors import FrameError
from jetfleet.frames import HEADER_SIZE, BlockHashMismatch, decode_frame, encode_frame

SHA = hashlib.sha256(b"artifact").hexdigest()


def test_round_trip():
    frame = decode_frame(encode_frame(SHA, 2, 5, 2 * 4096, b"payload"))
    assert (frame.sha256, frame.index, frame.count, frame.offset, frame.payload) == (
        SHA,
        2,
        5,
        8192,
        b"payload",
    )


def test_flipped_payload_byte_names_the_block():
    data = bytearray(encode_frame(SHA, 3, 5, 0, b"abcdef"))
    data[-1] ^= 0x01
    with pytest.raises(BlockHashMismatch) as info:
        decode_frame(bytes(data))
    assert info.value.index == 3
    assert info.value.sha256 == SHA


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:10],
        lambda d: b"XXXX" + d[4:],
        lambda d: d + b"extra",
        lambda d: d[:-1],
    ],
)
def test_malformed_frames_are_refused(mutate):
    with pytest.raises(FrameError):
        decode_frame(mutate(encode_frame(SHA, 0, 1, 0, b"abc")))


def test_index_out_of_range():
    with pytest.raises(FrameError):
        encode_frame(SHA, 5, 5, 0, b"")


@given(st.binary(max_size=HEADER_SIZE + 64))
def test_random_bytes_never_crash(data):
    with contextlib.suppress(FrameError):
        decode_frame(data)
