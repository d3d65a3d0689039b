import os
import stat

import pytest

from jetfleet.fsutil import atomic_write


def test_replaces_content_with_the_mode_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "device.key"
    target.write_bytes(b"old")
    atomic_write(target, b"new secret", mode=0o600)
    assert target.read_bytes() == b"new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["device.key"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]
