"""sysfs readers on fake trees laid out like the real boards."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetson.sysfs import (
    NvpModel,
    PowerRail,
    SysfsReader,
    ThermalZone,
    parse_nvpmodel_conf,
    parse_nvpmodel_status,
)


def put(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def thermal(root: Path, zones: list[tuple[str, str]]) -> None:
    for i, (name, milli) in enumerate(zones):
        put(root, f"sys/class/thermal/thermal_zone{i}/type", name + "\n")
        put(root, f"sys/class/thermal/thermal_zone{i}/temp", milli + "\n")


NVPMODEL_CONF_ORIN = """\
# Orin Nano
< POWER_MODEL ID=0 NAME=15W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=7W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=2 NAME=MAXN_SUPER >
< PM_CONFIG DEFAULT=2 >
"""


@pytest.fixture
def nano(tmp_path: Path) -> Path:
    """JetPack 4 Nano: gpu.0/load, GPU-therm, the iio INA3221 layout."""
    put(tmp_path, "sys/devices/platform/gpu.0/load", "437\n")
    put(tmp_path, "sys/devices/platform/gpu.0/devfreq/57000000.gpu/cur_freq", "76800000\n")
    thermal(tmp_path, [("AO-therm", "27500"), ("CPU-therm", "23500"), ("GPU-therm", "22500")])
    iio = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for i, (name, mw, mv, ma) in enumerate(
        [
            ("POM_5V_IN", "933", "5000", "186"),
            ("POM_5V_GPU", "0", "5000", "0"),
            ("POM_5V_CPU", "84", "5000", "16"),
        ]
    ):
        put(tmp_path, f"{iio}/rail_name_{i}", name + "\n")
        put(tmp_path, f"{iio}/in_power{i}_input", mw + "\n")
        put(tmp_path, f"{iio}/in_voltage{i}_input", mv + "\n")
        put(tmp_path, f"{iio}/in_current{i}_input", ma + "\n")
    put(
        tmp_path,
        "etc/nvpmodel.conf",
        "< POWER_MODEL ID=0 NAME=MAXN >\n< POWER_MODEL ID=1 NAME=5W >\n< PM_CONFIG DEFAULT=0 >\n",
    )
    put(tmp_path, "var/lib/nvpmodel/status", "pmode:0001\n")
    return tmp_path


@pytest.fixture
def orin(tmp_path: Path) -> Path:
    """JetPack 6 Orin Nano: bus@0/17000000.gpu/load, gpu-thermal, hwmon INA3221."""
    put(tmp_path, "sys/devices/platform/bus@0/17000000.gpu/load", "1000\n")
    put(tmp_path, "sys/class/devfreq/17000000.gpu/cur_freq", "1020000000\n")
    thermal(
        tmp_path,
        [
            ("cpu-thermal", "47500"),
            ("gpu-thermal", "44937"),
            ("cv0-thermal", "-256000"),
            ("tj-thermal", "47500"),
        ],
    )
    hwmon = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for ch, (label, mv, ma) in enumerate(
        [("VDD_IN", "5072", "1000"), ("VDD_CPU_GPU_CV", "5072", "101"), ("VDD_SOC", "5072", "283")],
        start=1,
    ):
        put(tmp_path, f"{hwmon}/in{ch}_label", label + "\n")
        put(tmp_path, f"{hwmon}/in{ch}_input", mv + "\n")
        put(tmp_path, f"{hwmon}/curr{ch}_input", ma + "\n")
    put(tmp_path, f"{hwmon}/curr1_crit", "10000\n")
    put(tmp_path, "etc/nvpmodel.conf", NVPMODEL_CONF_ORIN)
    put(tmp_path, "var/lib/nvpmodel/status", "pmode:0002 fmode:quiet\n")
    return tmp_path


def test_nano_tree(nano: Path) -> None:
    sysfs = SysfsReader(nano)
    assert sysfs.gpu_load_pct() == pytest.approx(43.7)
    assert sysfs.gpu_freq_mhz() == pytest.approx(76.8)
    assert sysfs.thermal_zones() == (
        ThermalZone(0, "AO-therm", 27.5),
        ThermalZone(1, "CPU-therm", 23.5),
        ThermalZone(2, "GPU-therm", 22.5),
    )
    assert sysfs.gpu_temp_c() == 22.5
    assert sysfs.power_rails() == (
        PowerRail("POM_5V_IN", 933, 5000, 186),
        PowerRail("POM_5V_GPU", 0, 5000, 0),
        PowerRail("POM_5V_CPU", 84, 5000, 16),
    )
    assert sysfs.gpu_power_mw() == 0  # POM_5V_GPU
    assert sysfs.nvpmodel() == NvpModel(1, "5W", 0, {0: "MAXN", 1: "5W"})
    metrics = sysfs.gpu_metrics()
    assert metrics is not None
    assert (metrics.source, metrics.load_pct, metrics.temp_c, metrics.freq_mhz) == (
        "sysfs",
        43.7,
        22.5,
        76.8,
    )


def test_orin_tree(orin: Path) -> None:
    sysfs = SysfsReader(orin)
    assert sysfs.gpu_load_pct() == 100.0
    assert sysfs.gpu_freq_mhz() == 1020.0
    zones = {z.name: z.temp_c for z in sysfs.thermal_zones()}
    assert zones == {
        "cpu-thermal": 47.5,
        "gpu-thermal": 44.937,
        "cv0-thermal": None,
        "tj-thermal": 47.5,
    }
    rails = {r.name: r for r in sysfs.power_rails()}
    assert rails["VDD_IN"].power_mw == pytest.approx(5072.0)
    assert rails["VDD_CPU_GPU_CV"] == PowerRail("VDD_CPU_GPU_CV", pytest.approx(512.272), 5072, 101)
    assert sysfs.gpu_power_mw() == pytest.approx(512.272)  # the rail carrying the GPU
    mode = sysfs.nvpmodel()
    assert mode is not None
    assert (mode.mode_id, mode.mode_name, mode.default_id) == (2, "MAXN_SUPER", 2)


@pytest.mark.parametrize(
    "rel",
    [
        "sys/devices/gpu.0/load",
        "sys/devices/platform/17000000.ga10b/load",
        "sys/devices/platform/17000000.gv11b/load",
    ],
)
def test_gpu_load_paths_of_other_boards(tmp_path: Path, rel: str) -> None:
    put(tmp_path, rel, "250")
    assert SysfsReader(tmp_path).gpu_load_pct() == 25.0


def test_only_total_rail_is_the_fallback(tmp_path: Path) -> None:
    hwmon = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    put(tmp_path, f"{hwmon}/in1_label", "VDD_IN")
    put(tmp_path, f"{hwmon}/in1_input", "5000")
    put(tmp_path, f"{hwmon}/curr1_input", "400")
    put(tmp_path, f"{hwmon}/in2_label", "VDD_SOC")
    put(tmp_path, f"{hwmon}/in2_input", "5000")  # no curr2_input: power unknown
    sysfs = SysfsReader(tmp_path)
    assert sysfs.power_rails() == (
        PowerRail("VDD_IN", 2000, 5000, 400),
        PowerRail("VDD_SOC", None, 5000, None),
    )
    assert sysfs.gpu_power_mw() == 2000


def test_empty_root_reads_nothing_and_does_not_raise(tmp_path: Path) -> None:
    sysfs = SysfsReader(tmp_path)
    assert sysfs.gpu_load_pct() is None
    assert sysfs.gpu_freq_mhz() is None
    assert sysfs.thermal_zones() == ()
    assert sysfs.gpu_temp_c() is None
    assert sysfs.power_rails() == ()
    assert sysfs.nvpmodel() is None
    assert sysfs.gpu_metrics() is None


def test_malformed_files_read_as_unknown(tmp_path: Path) -> None:
    put(tmp_path, "sys/devices/platform/gpu.0/load", "busy\n")
    thermal(tmp_path, [("GPU-therm", "n/a")])
    put(tmp_path, "sys/class/thermal/thermal_zone9/temp", "1000")  # no type file: skipped
    put(tmp_path, "var/lib/nvpmodel/status", "garbage")
    sysfs = SysfsReader(tmp_path)
    assert sysfs.gpu_load_pct() is None
    assert sysfs.thermal_zones() == (ThermalZone(0, "GPU-therm", None),)
    assert sysfs.nvpmodel() == NvpModel(None, None, None, {})
    assert sysfs.gpu_metrics() is None


def test_thermal_zones_sort_numerically(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        put(tmp_path, f"sys/class/thermal/thermal_zone{i}/type", f"z{i}")
        put(tmp_path, f"sys/class/thermal/thermal_zone{i}/temp", "1000")
    assert [z.index for z in SysfsReader(tmp_path).thermal_zones()] == [1, 2, 10]


def test_nvpmodel_parsers() -> None:
    assert parse_nvpmodel_conf(NVPMODEL_CONF_ORIN) == ({0: "15W", 1: "7W", 2: "MAXN_SUPER"}, 2)
    assert parse_nvpmodel_conf("") == ({}, None)
    assert parse_nvpmodel_status("pmode:0000") == 0
    assert parse_nvpmodel_status("pmode:0003 fmode:cool") == 3
    assert parse_nvpmodel_status("") is None


@pytest.mark.jetson
def test_real_sysfs_on_a_jetson() -> None:
    if not Path("/etc/nv_tegra_release").exists():
        pytest.skip("not a Jetson: /etc/nv_tegra_release is absent")
    sysfs = SysfsReader()
    assert sysfs.thermal_zones()
    assert sysfs.gpu_load_pct() is not None
    assert sysfs.gpu_metrics() is not None
