"""GPU provider selection and providers, with fake roots and a fake NVML module."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from jetson.errors import NvmlError
from jetson.gpu import GpuProvider, JetsonProvider, NoGpuProvider, NvmlProvider, select_provider
from jetson.sysfs import SysfsReader
from jetson.tegrastats_reader import TegrastatsReader

TEGRASTATS = Path(__file__).parents[1] / "fixtures" / "tegrastats"


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """The slice of pynvml's interface NvmlProvider uses (values as NVML documents them)."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_GRAPHICS = 0

    def __init__(
        self, *, init_fails: bool = False, devices: int = 1, no_power: bool = False
    ) -> None:
        self.init_fails = init_fails
        self.devices = devices
        self.no_power = no_power
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_fails:
            raise FakeNVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        if index >= self.devices:
            raise FakeNVMLError("Invalid Argument")
        return f"gpu{index}"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=37, memory=12)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(used=2 * 2**30, total=8 * 2**30, free=6 * 2**30)

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        if self.no_power:
            raise FakeNVMLError("Not Supported")
        return 71500  # mW

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int:
        return 1755


def jetson_root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n"
    )
    load = tmp_path / "sys/devices/platform/gpu.0/load"
    load.parent.mkdir(parents=True)
    load.write_text("500\n")
    return tmp_path


def fake_tegrastats(tmp_path: Path, board: str) -> Path:
    lines = (TEGRASTATS / f"{board}.txt").read_text().splitlines()
    tool = tmp_path / "tegrastats"
    body = f"import time\nfor l in {lines!r}:\n    print(l, flush=True)\ntime.sleep(600)\n"
    tool.write_text(f"#!{sys.executable}\n{body}")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return tool


def no_pynvml():
    raise ImportError("No module named 'pynvml'")


def test_plain_host_without_pynvml_has_no_gpu(tmp_path: Path) -> None:
    provider = select_provider(tmp_path, tmp_path / "tegrastats", nvml_loader=no_pynvml)
    assert isinstance(provider, NoGpuProvider)
    assert provider.read() is None  # absent, never faked
    provider.close()


def test_host_where_nvml_init_fails_has_no_gpu(tmp_path: Path) -> None:
    nvml = FakeNvml(init_fails=True)
    provider = select_provider(tmp_path, nvml_module=nvml)
    assert isinstance(provider, NoGpuProvider)
    assert nvml.calls == ["init"]


def test_host_with_nvml_and_no_device_has_no_gpu(tmp_path: Path) -> None:
    nvml = FakeNvml(devices=0)
    assert isinstance(select_provider(tmp_path, nvml_module=nvml), NoGpuProvider)
    assert nvml.calls == ["init", "shutdown"]


def test_discrete_gpu_host_uses_nvml(tmp_path: Path) -> None:
    nvml = FakeNvml()
    provider = select_provider(tmp_path, nvml_loader=lambda: nvml)
    assert isinstance(provider, NvmlProvider)
    assert isinstance(provider, GpuProvider)
    metrics = provider.read()
    assert metrics is not None
    assert metrics.model_dump() == {
        "source": "nvml",
        "load_pct": 37.0,
        "temp_c": 61.0,
        "power_mw": 71500.0,
        "mem_used_mb": 2048.0,
        "mem_total_mb": 8192.0,
        "freq_mhz": 1755.0,
    }
    provider.close()
    provider.close()
    assert nvml.calls == ["init", "shutdown"]
    assert provider.read() is None


def test_nvml_field_that_is_not_supported_is_absent() -> None:
    provider = NvmlProvider(FakeNvml(no_power=True))
    metrics = provider.read()
    assert metrics is not None
    assert metrics.power_mw is None
    assert metrics.load_pct == 37.0


def test_nvml_provider_raises_jetson_error_when_init_fails() -> None:
    with pytest.raises(NvmlError, match="Driver Not Loaded"):
        NvmlProvider(FakeNvml(init_fails=True))


def test_jetson_without_tegrastats_reads_sysfs(tmp_path: Path) -> None:
    root = jetson_root(tmp_path)
    nvml = FakeNvml()
    provider = select_provider(root, root / "no-tegrastats", nvml_module=nvml)
    assert isinstance(provider, JetsonProvider)
    assert provider.tegrastats is None
    assert nvml.calls == []  # a Jetson never tries NVML
    metrics = provider.read()
    assert metrics is not None
    assert (metrics.source, metrics.load_pct) == ("sysfs", 50.0)
    provider.close()


def test_jetson_with_tegrastats_reads_its_latest_sample(tmp_path: Path) -> None:
    root = jetson_root(tmp_path)
    provider = select_provider(root, fake_tegrastats(tmp_path, "xavier-sudo"), interval_ms=100)
    assert isinstance(provider, JetsonProvider)
    try:
        assert provider.tegrastats is not None
        assert provider.tegrastats.wait_for_sample(10) is not None
        metrics = provider.read()
        assert metrics is not None
        assert (metrics.source, metrics.load_pct, metrics.freq_mhz, metrics.power_mw) == (
            "tegrastats",
            23.0,
            1377.0,
            1155.0,
        )
    finally:
        provider.close()
    assert not provider.tegrastats.running


def test_jetson_falls_back_to_sysfs_when_tegrastats_is_stale(tmp_path: Path) -> None:
    root = jetson_root(tmp_path)
    reader = TegrastatsReader(fake_tegrastats(tmp_path, "nano-sudo")).start()
    provider = JetsonProvider(SysfsReader(root), reader, max_age_s=0.2)
    try:
        assert reader.wait_for_sample(10) is not None
        fresh = provider.read()
        assert fresh is not None
        assert fresh.source == "tegrastats"
        time.sleep(0.3)  # the fake tool printed once and went quiet
        stale = provider.read()
        assert stale is not None
        assert stale.source == "sysfs"
    finally:
        provider.close()


def test_jetson_with_nothing_readable_reports_no_gpu_sample(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1\n")
    provider = select_provider(tmp_path, tmp_path / "none")
    assert isinstance(provider, JetsonProvider)
    assert provider.read() is None


@pytest.mark.jetson
def test_select_provider_on_a_real_jetson() -> None:
    if not Path("/etc/nv_tegra_release").exists():
        pytest.skip("not a Jetson: /etc/nv_tegra_release is absent")
    provider = select_provider()
    try:
        assert isinstance(provider, JetsonProvider)
        if provider.tegrastats is not None:
            provider.tegrastats.wait_for_sample(10)
        assert provider.read() is not None
    finally:
        provider.close()


@pytest.mark.gpu
def test_nvml_on_a_real_discrete_gpu() -> None:
    pynvml = pytest.importorskip("pynvml")
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("a Jetson has no NVML device telemetry; see the jetson tests")
    try:
        provider = NvmlProvider(pynvml)
    except NvmlError as exc:
        pytest.skip(f"no usable NVIDIA GPU: {exc}")
    try:
        metrics = provider.read()
        assert metrics is not None
        assert metrics.mem_total_mb is not None
        assert metrics.mem_total_mb > 0
        assert metrics.load_pct is not None
    finally:
        provider.close()
