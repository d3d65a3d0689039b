import zipfile

import numpy as np
import pytest

from jetfleet.errors import PackageError
from jetfleet.package import Golden, read_package
from tests.support.tinymodel import make_package, run_onnx


def test_written_package_reads_back_and_passes_its_golden(tmp_path):
    info = make_package(tmp_path / "p.jfpkg")
    pkg = read_package(info.path, info.sha256)
    assert pkg.card.name == "tiny"
    assert pkg.length == info.length
    golden = pkg.golden()
    result = golden.compare(
        {"logits": run_onnx(pkg.variant("onnxruntime"), golden.inputs["input"])}
    )
    assert result.ok, result.failures


def test_package_is_reproducible(tmp_path):
    a = make_package(tmp_path / "a.jfpkg")
    b = make_package(tmp_path / "b.jfpkg")
    assert a.sha256 == b.sha256


def test_wrong_sha_and_flipped_byte_are_refused(tmp_path):
    info = make_package(tmp_path / "p.jfpkg")
    with pytest.raises(PackageError, match="does not match"):
        read_package(info.path, "0" * 64)
    data = bytearray(info.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.jfpkg"
    bad.write_bytes(bytes(data))
    with pytest.raises(PackageError):
        read_package(bad)


def test_not_a_zip_and_missing_members(tmp_path):
    junk = tmp_path / "junk.jfpkg"
    junk.write_bytes(b"hello")
    with pytest.raises(PackageError, match="bad zip"):
        read_package(junk)
    empty = tmp_path / "empty.jfpkg"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("card.json", "{}")
    with pytest.raises(PackageError, match="golden"):
        read_package(empty)


def test_path_traversal_member_is_refused(tmp_path):
    evil = tmp_path / "evil.jfpkg"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../etc/passwd", "x")
    with pytest.raises(PackageError, match="invalid name"):
        read_package(evil)


def test_golden_compare_detects_drift():
    g = Golden(
        {"input": np.zeros((1, 2), np.float32)},
        {"logits": np.ones((1, 3), np.float32)},
        rtol=0.0,
        atol=0.01,
    )
    assert g.compare({"logits": np.ones((1, 3), np.float32)}).ok
    assert not g.compare({"logits": np.ones((1, 3), np.float32) * 1.1}).ok
    assert not g.compare({"logits": np.ones((1, 4), np.float32)}).ok
    assert not g.compare({}).ok
    nan = np.full((1, 3), np.nan, np.float32)
    assert not g.compare({"logits": nan}).ok


def test_failed_write_leaves_nothing(tmp_path):
    from jetfleet.package import write_package

    info = make_package(tmp_path / "ok.jfpkg")
    pkg = read_package(info.path)
    with pytest.raises(PackageError):
        write_package(tmp_path / "out" / "x.jfpkg", pkg.card, {}, pkg.golden())
    assert not (tmp_path / "out").exists()
