"""Jetson telemetry read from sysfs/procfs files, under an injectable root.

Used when tegrastats is unavailable, and for what tegrastats does not print
(nvpmodel mode). Every path is relative to ``root`` (default ``/``), so tests
build fake trees. Readers never raise on missing or malformed files: a value
that cannot be read is ``None`` (or left out of a collection).

Files read (first match wins where several boards differ)::

    GPU load (per-mille)   sys/devices/platform/gpu.0/load            Nano, TX1, TX2
                           sys/devices/gpu.0/load                     Xavier, some Orin kernels
                           sys/devices/platform/17000000.ga10b/load   Orin (JetPack 5)
                           sys/devices/platform/bus@0/17000000.gpu/load   Orin (JetPack 6)
    GPU clock (Hz)         sys/class/devfreq/<gpu device>/cur_freq
    thermal zones          sys/class/thermal/thermal_zone*/{type,temp}    temp in milli-°C
    INA3221 rails (hwmon)  sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in{N}_label,
                           in{N}_input (mV), curr{N}_input (mA)       JetPack 5/6
    INA3221 rails (iio)    sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_{N},
                           in_power{N}_input (mW), in_current{N}_input, in_voltage{N}_input
                                                                      JetPack 4 (L4T 32)
    nvpmodel               etc/nvpmodel.conf (``< POWER_MODEL ID=0 NAME=MAXN >``),
                           var/lib/nvpmodel/status (``pmode:0000``)
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from jetfleet.messages import GpuMetrics
from jetson.tegrastats import SENSOR_OFF_C, pick_gpu_power

log = logging.getLogger(__name__)

GPU_LOAD_GLOBS = (
    "sys/devices/platform/gpu.0/load",
    "sys/devices/gpu.0/load",
    "sys/devices/platform/*.ga10b/load",
    "sys/devices/platform/*.gv11b/load",
    "sys/devices/platform/*.gp10b/load",
    "sys/devices/platform/*.gpu/load",
    "sys/devices/platform/bus@0/*.gpu/load",
    "sys/devices/platform/bus@0/*.ga10b/load",
    "sys/devices/*.gpu/load",
)
GPU_DEVFREQ_GLOBS = (
    "sys/class/devfreq/*.ga10b/cur_freq",
    "sys/class/devfreq/*.gv11b/cur_freq",
    "sys/class/devfreq/*.gp10b/cur_freq",
    "sys/class/devfreq/*.gpu/cur_freq",
    "sys/devices/platform/gpu.0/devfreq/*/cur_freq",
    "sys/devices/gpu.0/devfreq/*/cur_freq",
)
THERMAL_GLOB = "sys/class/thermal/thermal_zone*"
HWMON_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
IIO_GLOBS = (
    "sys/bus/i2c/drivers/ina3221x/*/iio:device*",
    "sys/bus/i2c/drivers/ina3221/*/iio:device*",
)
NVPMODEL_CONF = "etc/nvpmodel.conf"
NVPMODEL_STATUS = "var/lib/nvpmodel/status"

_ZONE_INDEX = re.compile(r"thermal_zone([0-9]+)$")
_HWMON_LABEL = re.compile(r"in([0-9]+)_label$")
_IIO_RAIL = re.compile(r"rail_name_([0-9]+)$")
_POWER_MODEL = re.compile(r"<\s*POWER_MODEL\s+ID=([0-9]+)\s+NAME=([^\s>]+)\s*>")
_PM_DEFAULT = re.compile(r"<\s*PM_CONFIG\s+DEFAULT=([0-9]+)\s*>")
_PMODE = re.compile(r"pmode:\s*([0-9]+)")


@dataclass(frozen=True)
class ThermalZone:
    """One thermal zone; ``temp_c`` is None when unreadable or the sensor is off (-256 °C)."""

    index: int
    name: str
    temp_c: float | None


@dataclass(frozen=True)
class PowerRail:
    """One INA3221 channel. ``power_mw`` is read or computed as mV * mA / 1000."""

    name: str
    power_mw: float | None
    voltage_mv: float | None = None
    current_ma: float | None = None


@dataclass(frozen=True)
class NvpModel:
    """nvpmodel power modes: the current one (from the status file) and the table."""

    mode_id: int | None
    mode_name: str | None
    default_id: int | None = None
    modes: dict[int, str] = field(default_factory=dict)


def parse_nvpmodel_conf(text: str) -> tuple[dict[int, str], int | None]:
    """``nvpmodel.conf`` → ({mode id: name}, default id). Pure; never raises."""
    modes: dict[int, str] = {}
    for m in _POWER_MODEL.finditer(text):
        modes.setdefault(int(m.group(1)), m.group(2))
    default = _PM_DEFAULT.search(text)
    return modes, int(default.group(1)) if default else None


def parse_nvpmodel_status(text: str) -> int | None:
    """``pmode:0002`` (possibly followed by other fields) → 2; None if absent."""
    m = _PMODE.search(text)
    return int(m.group(1)) if m else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None


class SysfsReader:
    """Reads Jetson sysfs/procfs telemetry files below ``root``."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def _first(self, patterns: tuple[str, ...]) -> Path | None:
        for pattern in patterns:
            for path in sorted(self.root.glob(pattern)):
                if path.is_file():
                    return path
        return None

    def gpu_load_pct(self) -> float | None:
        """GPU load in percent (the files hold per-mille, 0..1000)."""
        path = self._first(GPU_LOAD_GLOBS)
        value = _number(self._read(path)) if path else None
        return None if value is None else max(0.0, min(100.0, value / 10.0))

    def gpu_freq_mhz(self) -> float | None:
        """Current GPU clock from devfreq (Hz) in MHz."""
        path = self._first(GPU_DEVFREQ_GLOBS)
        value = _number(self._read(path)) if path else None
        return None if value is None else value / 1e6

    def thermal_zones(self) -> tuple[ThermalZone, ...]:
        zones: list[ThermalZone] = []
        for zone in self.root.glob(THERMAL_GLOB):
            m = _ZONE_INDEX.search(zone.name)
            name = self._read(zone / "type")
            if m is None or name is None:
                continue
            milli = _number(self._read(zone / "temp"))
            temp = None if milli is None or milli / 1000.0 <= SENSOR_OFF_C else milli / 1000.0
            zones.append(ThermalZone(int(m.group(1)), name.strip(), temp))
        return tuple(sorted(zones, key=lambda z: z.index))

    def gpu_temp_c(self) -> float | None:
        """Temperature of the zone named ``GPU-therm`` / ``gpu-thermal`` (any case)."""
        for zone in self.thermal_zones():
            if zone.name.lower().startswith("gpu"):
                return zone.temp_c
        return None

    def power_rails(self) -> tuple[PowerRail, ...]:
        """INA3221 rails from the hwmon layout, else from the older iio layout."""
        rails = self._hwmon_rails()
        return rails if rails else self._iio_rails()

    def _hwmon_rails(self) -> tuple[PowerRail, ...]:
        rails: list[PowerRail] = []
        for hwmon in sorted(self.root.glob(HWMON_GLOB)):
            labels = sorted(
                (int(m.group(1)), p)
                for p in hwmon.glob("in*_label")
                if (m := _HWMON_LABEL.search(p.name))
            )
            for channel, label_path in labels:
                label = self._read(label_path)
                if label is None:
                    continue
                mv = _number(self._read(hwmon / f"in{channel}_input"))
                ma = _number(self._read(hwmon / f"curr{channel}_input"))
                mw = mv * ma / 1000.0 if mv is not None and ma is not None else None
                rails.append(PowerRail(label.strip(), mw, mv, ma))
        return tuple(rails)

    def _iio_rails(self) -> tuple[PowerRail, ...]:
        rails: list[PowerRail] = []
        devices = sorted({p for pattern in IIO_GLOBS for p in self.root.glob(pattern)})
        for device in devices:
            names = sorted(
                (int(m.group(1)), p)
                for p in device.glob("rail_name_*")
                if (m := _IIO_RAIL.search(p.name))
            )
            for channel, name_path in names:
                name = self._read(name_path)
                if name is None:
                    continue
                mw = _number(self._read(device / f"in_power{channel}_input"))
                mv = _number(self._read(device / f"in_voltage{channel}_input"))
                ma = _number(self._read(device / f"in_current{channel}_input"))
                if mw is None and mv is not None and ma is not None:
                    mw = mv * ma / 1000.0
                rails.append(PowerRail(name.strip(), mw, mv, ma))
        return tuple(rails)

    def gpu_power_mw(self) -> float | None:
        """A GPU rail's power if the board has one, else the board's input total."""
        powers = {r.name: r.power_mw for r in self.power_rails() if r.power_mw is not None}
        return pick_gpu_power(powers)

    def nvpmodel(self) -> NvpModel | None:
        """The nvpmodel table and current mode; None when neither file exists."""
        conf = self._read(self.root / NVPMODEL_CONF)
        status = self._read(self.root / NVPMODEL_STATUS)
        if conf is None and status is None:
            return None
        modes, default = parse_nvpmodel_conf(conf) if conf is not None else ({}, None)
        mode = parse_nvpmodel_status(status) if status is not None else None
        return NvpModel(mode, modes.get(mode) if mode is not None else None, default, modes)

    def gpu_metrics(self) -> GpuMetrics | None:
        """A :class:`GpuMetrics` from sysfs (source ``sysfs``); None when nothing is readable."""
        load = self.gpu_load_pct()
        temp = self.gpu_temp_c()
        power = self.gpu_power_mw()
        freq = self.gpu_freq_mhz()
        if load is None and temp is None and power is None and freq is None:
            return None
        return GpuMetrics(source="sysfs", load_pct=load, temp_c=temp, power_mw=power, freq_mhz=freq)
