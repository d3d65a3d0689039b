"""Device profile on fake trees of real boards, and its parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetson.errors import ProfileError
from jetson.profile import (
    JETPACK_BY_L4T,
    DeviceProfile,
    L4TRelease,
    cuda_version,
    detect_profile,
    dpkg_version,
    jetpack_for,
    major_minor,
    module_for,
    parse_l4t_core_version,
    parse_nv_tegra_release,
)

R36_4 = (
    "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64,"
    " DATE: Fri Sep 13 04:36:44 UTC 2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
)
R32_7 = (
    "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64,"
    " DATE: Sat Feb 19 17:05:08 UTC 2022\n"
)
R35_4 = (
    "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64,"
    " DATE: Tue Aug  1 19:57:35 UTC 2023\n"
)
DPKG_STATUS = """\
Package: nvidia-l4t-kernel
Status: install ok installed
Version: 5.15.148-tegra-36.4.0-20240912212859

Package: nvidia-l4t-core
Status: install ok installed
Priority: standard
Architecture: arm64
Version: 36.4.0-20240912212859
Description: NVIDIA Core Package
 multi-line description
"""


def board(
    root: Path,
    *,
    release: str | None = None,
    model: str | None = None,
    compatible: str | None = None,
    cuda_json: str | None = None,
    dpkg: str | None = None,
) -> Path:
    files = {
        "etc/nv_tegra_release": release,
        "proc/device-tree/model": None if model is None else model + "\0",
        "proc/device-tree/compatible": compatible,
        "usr/local/cuda/version.json": cuda_json,
        "var/lib/dpkg/status": dpkg,
    }
    for rel, text in files.items():
        if text is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(text.encode())
    return root


def no_module(name: str) -> str | None:
    return None


def test_nano(tmp_path: Path) -> None:
    root = board(
        tmp_path,
        release=R32_7,
        model="NVIDIA Jetson Nano Developer Kit",
        compatible="nvidia,p3450-0000\0nvidia,jetson-nano\0nvidia,tegra210\0",
    )
    (tmp_path / "usr/local/cuda").mkdir(parents=True)
    (tmp_path / "usr/local/cuda/version.txt").write_text("CUDA Version 10.2.300\n")
    profile = detect_profile(root, arch="aarch64", find_version=lambda name: "8.2.1.8")
    assert profile == DeviceProfile(
        arch="aarch64",
        l4t="32.7.1",
        jetpack="4.6.1",
        model="NVIDIA Jetson Nano Developer Kit",
        module="nano",
        soc="tegra210",
        sm=53,
        tensorrt="8.2.1.8",
        cuda="10.2.300",
    )
    assert profile.key == "nano-sm53-jp4.6-trt8.2"
    assert profile.engine_key == "sm53-trt8.2"


def test_xavier_nx(tmp_path: Path) -> None:
    root = board(tmp_path, release=R35_4, model="NVIDIA Jetson Xavier NX Developer Kit")
    profile = detect_profile(root, arch="aarch64", tensorrt_version="8.5.2.2", cuda="11.4")
    assert (profile.module, profile.sm, profile.l4t, profile.jetpack) == (
        "xavier-nx",
        72,
        "35.4.1",
        "5.1.2",
    )
    assert profile.key == "xavier-nx-sm72-jp5.1-trt8.5"
    assert profile.engine_key == "sm72-trt8.5"


def test_orin_nano(tmp_path: Path) -> None:
    root = board(
        tmp_path,
        release=R36_4,
        model="NVIDIA Jetson Orin Nano Developer Kit",
        compatible="nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0",
        cuda_json='{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}',
    )
    profile = detect_profile(
        root, arch="aarch64", find_version=lambda name: "10.3.0" if name == "tensorrt" else None
    )
    assert profile.key == "orin-nano-sm87-jp6.1-trt10.3"
    assert profile.engine_key == "sm87-trt10.3"
    assert profile.cuda == "12.6.68"
    assert profile.details() == {
        "arch": "aarch64",
        "l4t": "36.4.0",
        "jetpack": "6.1",
        "model": "NVIDIA Jetson Orin Nano Developer Kit",
        "module": "orin-nano",
        "soc": "tegra234",
        "sm": "87",
        "tensorrt": "10.3.0",
        "cuda": "12.6.68",
    }


def test_agx_orin_from_dpkg_without_release_file_or_tensorrt(tmp_path: Path) -> None:
    root = board(tmp_path, model="NVIDIA Jetson AGX Orin Developer Kit", dpkg=DPKG_STATUS)
    profile = detect_profile(root, arch="aarch64", find_version=no_module)
    assert (profile.module, profile.sm, profile.l4t, profile.jetpack) == (
        "agx-orin",
        87,
        "36.4.0",
        "6.1",
    )
    assert profile.tensorrt is None
    assert profile.key == "agx-orin-sm87-jp6.1"
    assert profile.engine_key is None  # no TensorRT: no engine target


def test_plain_x86_host(tmp_path: Path) -> None:
    profile = detect_profile(tmp_path, arch="x86_64", find_version=no_module)
    assert profile == DeviceProfile(arch="x86_64")
    assert not profile.is_jetson
    assert profile.key == "x86_64-cpu"
    assert profile.engine_key is None
    assert profile.details() == {"arch": "x86_64"}


def test_discrete_gpu_host_passes_its_sm(tmp_path: Path) -> None:
    profile = detect_profile(
        tmp_path, arch="x86_64", sm=90, tensorrt_version="10.7.0.23", cuda="12.6"
    )
    assert profile.key == "x86_64-sm90-trt10.7"
    assert profile.engine_key == "sm90-trt10.7"


def test_carrier_board_with_own_model_falls_back_to_the_soc(tmp_path: Path) -> None:
    root = board(
        tmp_path,
        release=R36_4,
        model="Acme Vision Box 3000",
        compatible="acme,box\0nvidia,tegra234\0",
    )
    profile = detect_profile(root, arch="aarch64", find_version=no_module)
    assert (profile.module, profile.soc, profile.sm) == (None, "tegra234", 87)
    assert profile.key == "tegra234-sm87-jp6.1"


def test_malformed_release_file_falls_back_to_dpkg(tmp_path: Path) -> None:
    root = board(tmp_path, release="garbage\n", dpkg=DPKG_STATUS)
    assert detect_profile(root, arch="aarch64", find_version=no_module).l4t == "36.4.0"
    root2 = board(tmp_path / "b", release="garbage\n")
    profile = detect_profile(
        root2, arch="aarch64", find_version=no_module, l4t_core_version="not-a-version"
    )
    assert profile.l4t is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("NVIDIA Jetson Orin Nano Developer Kit", ("orin-nano", 87)),
        ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", ("orin-nano", 87)),
        ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", ("orin-nx", 87)),
        ("NVIDIA Jetson AGX Orin Developer Kit", ("agx-orin", 87)),
        ("NVIDIA Jetson AGX Orin", ("agx-orin", 87)),
        ("NVIDIA IGX Orin Development Kit", ("igx-orin", 87)),
        ("NVIDIA Jetson Xavier NX Developer Kit", ("xavier-nx", 72)),
        ("Jetson-AGX", ("agx-xavier", 72)),
        ("NVIDIA Jetson AGX Xavier Developer Kit", ("agx-xavier", 72)),
        ("NVIDIA Jetson TX2 NX Developer Kit", ("tx2-nx", 62)),
        ("quill", ("tx2", 62)),
        ("NVIDIA Jetson TX2", ("tx2", 62)),
        ("jetson_tx1", ("tx1", 53)),
        ("NVIDIA Jetson Nano Developer Kit", ("nano", 53)),
        ("NVIDIA Jetson Nano 2GB Developer Kit", ("nano", 53)),
        ("NVIDIA Jetson AGX Thor Developer Kit", ("thor", 110)),
        ("Raspberry Pi 4 Model B Rev 1.4", None),
    ],
)
def test_module_table(model: str, expected: tuple[str, int] | None) -> None:
    assert module_for(model) == expected


@pytest.mark.parametrize(
    ("l4t", "jetpack"),
    [
        ("32.7.1", "4.6.1"),
        ("32.7.9", "4.6"),
        ("35.3.1", "5.1.1"),
        ("35.6.9", "5.1"),
        ("36.2.0", "6.0"),
        ("36.3.0", "6.0"),
        ("36.4.0", "6.1"),
        ("36.4.3", "6.2"),
        ("36.4.7", "6.2"),
        ("31.1.0", None),
    ],
)
def test_jetpack_table(l4t: str, jetpack: str | None) -> None:
    assert jetpack_for(parse_l4t_core_version(l4t)) == jetpack


def test_jetpack_table_is_consistent_with_its_fallbacks() -> None:
    for l4t, jetpack in JETPACK_BY_L4T.items():
        assert jetpack_for(parse_l4t_core_version(l4t)) == jetpack


def test_release_parsers() -> None:
    assert parse_nv_tegra_release(R36_4) == L4TRelease(36, 4, 0, "generic")
    assert parse_nv_tegra_release(R32_7) == L4TRelease(32, 7, 1, "t210ref")
    assert parse_nv_tegra_release("# R38 (release), REVISION: 2.0\n").version == "38.2.0"
    with pytest.raises(ProfileError, match="garbage"):
        parse_nv_tegra_release("garbage")
    with pytest.raises(ProfileError, match="empty"):
        parse_nv_tegra_release("")
    assert parse_l4t_core_version("35.4.1-20230801124926") == L4TRelease(35, 4, 1)
    with pytest.raises(ProfileError):
        parse_l4t_core_version("x.y")
    assert dpkg_version(DPKG_STATUS, "nvidia-l4t-core") == "36.4.0-20240912212859"
    assert dpkg_version(DPKG_STATUS, "tensorrt") is None
    assert major_minor("10.3.0.30") == "10.3"
    assert major_minor("10") == "10"


def test_cuda_version_files(tmp_path: Path) -> None:
    assert cuda_version(tmp_path) is None
    board(tmp_path, cuda_json="{not json")
    assert cuda_version(tmp_path) is None


@pytest.mark.jetson
def test_real_profile_on_a_jetson() -> None:
    if not Path("/etc/nv_tegra_release").exists():
        pytest.skip("not a Jetson: /etc/nv_tegra_release is absent")
    profile = detect_profile()
    print("profile:", profile.key, profile.details())
    assert profile.l4t is not None
    assert profile.jetpack is not None, f"add L4T {profile.l4t} to JETPACK_BY_L4T"
    assert profile.sm is not None, f"add the model {profile.model!r} to MODULES"
