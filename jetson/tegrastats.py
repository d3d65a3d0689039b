"""tegrastats output lines: a parser and the conversion to GpuMetrics.

:func:`parse_line` is a pure function over one line. The output format differs
between boards and JetPack releases and keeps changing, so the parser takes the
fields it recognises and reports every other token in ``unparsed``: it never
raises on any input string.

Recognised fields (examples from real boards)::

    01-03-2023 16:07:54                 leading date (newer JetPacks, device local time)
    RAM 2257/30536MB (lfb 5392x4MB)     used/total, largest free blocks
    SWAP 0/15268MB (cached 0MB)
    IRAM 0/252kB(lfb 252kB)
    CPU [15%@102,off,53%@102]           per-core load and clock; ``off`` = offline core
    cpu [17%,13%]@408                   old L4T: one clock for all cores
    MTS fg 0% bg 0%
    EMC_FREQ 3%@204  GR3D_FREQ 43%@76   load and clock (MHz); ``GR3D`` is the GPU
    GR3D_FREQ 0%@[305,305]              per-GPC clocks (the highest is kept)
    APE 25  NVENC 716  NVDEC off        engines: clock in MHz, or off
    GPU@22.5C  tj@41.6C  CV0@-256C      temperatures (-256 is an offline sensor)
    VDD_IN 1038/1134                    rails: current/average mW
    VDD_GPU_SOC 2390mW/2390mW
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from jetfleet.messages import GpuMetrics

SENSOR_OFF_C = -256.0
"""tegrastats prints this temperature for a sensor that is powered off."""

# --- one line ----------------------------------------------------------------

_END = r"(?= |$)"
_INT = r"[0-9]{1,12}"
_NUM = r"[0-9]{1,12}(?:\.[0-9]{1,9})?"
_NAME = r"[A-Za-z][A-Za-z0-9_]{0,63}"
_UPPER = r"[A-Z][A-Z0-9_]{0,63}"

_D2 = "([0-9]{2})"
_TIMESTAMP = re.compile(rf"{_D2}-{_D2}-([0-9]{{4}}) {_D2}:{_D2}:{_D2}{_END}")
_RAM = re.compile(rf"RAM ({_INT})/({_INT})([kMG]?)B(?: \(lfb ({_INT})x({_INT})([kMG]?)B\))?{_END}")
_SWAP = re.compile(rf"SWAP ({_INT})/({_INT})([kMG]?)B(?: \(cached ({_INT})([kMG]?)B\))?{_END}")
_IRAM = re.compile(rf"IRAM ({_INT})/({_INT})([kMG]?)B ?(?:\(lfb ({_INT})([kMG]?)B\))?{_END}")
_CPU = re.compile(rf"[Cc][Pp][Uu] \[([^\] ]*)\](?:@({_INT}))?{_END}")
_CPU_CORE = re.compile(rf"({_INT})%(?:@({_INT}))?")
_MTS = re.compile(rf"MTS fg ({_INT})% bg ({_INT})%{_END}")
_LOAD = re.compile(rf"({_UPPER}) ({_INT})%(?:@({_INT}|\[[0-9,]{{0,200}}\]))?{_END}")
_RAIL = re.compile(rf"(?!(?:RAM|SWAP|IRAM) )({_NAME}) ({_NUM})(?:mW)?/({_NUM})(?:mW)?{_END}")
_TEMP = re.compile(rf"({_NAME})@(-?{_NUM})C{_END}")
_ENGINE = re.compile(rf"(?!(?:RAM|SWAP|IRAM|CPU|MTS) )({_UPPER}) ({_INT}|off){_END}")
_TOKEN = re.compile(r"[^ ]+")

_UNIT_MB = {"": 1.0 / (1024 * 1024), "k": 1.0 / 1024, "M": 1.0, "G": 1024.0}
_EMC_NAMES = ("EMC_FREQ", "EMC")
_GPU_NAMES = ("GR3D_FREQ", "GR3D")


@dataclass(frozen=True)
class Memory:
    """RAM or IRAM: used/total MB and the largest free blocks (``lfb N x size``)."""

    used_mb: float
    total_mb: float
    lfb_blocks: int | None = None
    lfb_block_mb: float | None = None


@dataclass(frozen=True)
class Swap:
    used_mb: float
    total_mb: float
    cached_mb: float | None = None


@dataclass(frozen=True)
class CpuCore:
    """One core; ``online`` is False for a core printed as ``off`` (no load or clock)."""

    online: bool
    load_pct: float | None = None
    freq_mhz: float | None = None


@dataclass(frozen=True)
class Engine:
    """A clocked unit (EMC, GPU, NVENC, ...): load and clock where printed; ``off`` → on=False."""

    on: bool = True
    load_pct: float | None = None
    freq_mhz: float | None = None


class Rail(NamedTuple):
    """One power rail: instantaneous and average power in mW."""

    current_mw: float
    average_mw: float


@dataclass(frozen=True)
class TegrastatsSample:
    """One parsed tegrastats line. Dict fields are fresh per sample; treat them as read-only."""

    timestamp: datetime | None = None
    ram: Memory | None = None
    swap: Swap | None = None
    iram: Memory | None = None
    cpus: tuple[CpuCore, ...] = ()
    mts_fg_pct: float | None = None
    mts_bg_pct: float | None = None
    emc: Engine | None = None
    gpu: Engine | None = None
    engines: dict[str, Engine] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    rails: dict[str, Rail] = field(default_factory=dict)
    unparsed: tuple[str, ...] = ()

    @property
    def recognised(self) -> bool:
        """True when the line held at least one field this parser knows."""
        return any(
            (
                self.timestamp,
                self.ram,
                self.swap,
                self.iram,
                self.cpus,
                self.mts_fg_pct is not None,
                self.emc,
                self.gpu,
                self.engines,
                self.temperatures,
                self.rails,
            )
        )


@dataclass
class _Fields:
    """Mutable accumulator used while one line is parsed; the first occurrence of a field wins."""

    timestamp: datetime | None = None
    ram: Memory | None = None
    swap: Swap | None = None
    iram: Memory | None = None
    cpus: list[CpuCore] = field(default_factory=list)
    mts: tuple[float, float] | None = None
    emc: Engine | None = None
    gpu: Engine | None = None
    engines: dict[str, Engine] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    rails: dict[str, Rail] = field(default_factory=dict)
    unparsed: list[str] = field(default_factory=list)

    def sample(self) -> TegrastatsSample:
        return TegrastatsSample(
            timestamp=self.timestamp,
            ram=self.ram,
            swap=self.swap,
            iram=self.iram,
            cpus=tuple(self.cpus),
            mts_fg_pct=self.mts[0] if self.mts else None,
            mts_bg_pct=self.mts[1] if self.mts else None,
            emc=self.emc,
            gpu=self.gpu,
            engines=self.engines,
            temperatures=self.temperatures,
            rails=self.rails,
            unparsed=tuple(self.unparsed),
        )


def _mb(value: str, unit: str) -> float:
    return float(value) * _UNIT_MB[unit]


def _ram(acc: _Fields, m: re.Match[str]) -> bool:
    used, total, unit, blocks, size, size_unit = m.groups()
    lfb = int(blocks) if blocks is not None else None
    lfb_mb = _mb(size, size_unit) if size is not None else None
    acc.ram = acc.ram or Memory(_mb(used, unit), _mb(total, unit), lfb, lfb_mb)
    return True


def _swap(acc: _Fields, m: re.Match[str]) -> bool:
    used, total, unit, cached, cached_unit = m.groups()
    cached_mb = _mb(cached, cached_unit) if cached is not None else None
    acc.swap = acc.swap or Swap(_mb(used, unit), _mb(total, unit), cached_mb)
    return True


def _iram(acc: _Fields, m: re.Match[str]) -> bool:
    used, total, unit, lfb, lfb_unit = m.groups()
    lfb_mb = _mb(lfb, lfb_unit) if lfb is not None else None
    blocks = 1 if lfb is not None else None
    acc.iram = acc.iram or Memory(_mb(used, unit), _mb(total, unit), blocks, lfb_mb)
    return True


def _cpu(acc: _Fields, m: re.Match[str]) -> bool:
    inner, shared_freq = m.groups()
    if acc.cpus:
        return True
    for entry in inner.split(",") if inner else ():
        if entry == "off":
            acc.cpus.append(CpuCore(online=False))
            continue
        core = _CPU_CORE.fullmatch(entry)
        if core is None:
            acc.cpus.append(CpuCore(online=True))
            acc.unparsed.append(f"CPU[{len(acc.cpus) - 1}]={entry}")
            continue
        freq = core.group(2) or shared_freq
        acc.cpus.append(CpuCore(True, float(core.group(1)), float(freq) if freq else None))
    return True


def _mts(acc: _Fields, m: re.Match[str]) -> bool:
    acc.mts = acc.mts or (float(m.group(1)), float(m.group(2)))
    return True


def _clock(text: str | None) -> float | None:
    """``729`` or ``[305,305]`` (per-GPC clocks; the highest is kept) → MHz."""
    if not text:
        return None
    values = [float(v) for v in text.strip("[]").split(",") if v]
    return max(values) if values else None


def _engine(acc: _Fields, name: str, engine: Engine) -> None:
    if name in _EMC_NAMES:
        acc.emc = acc.emc or engine
    elif name in _GPU_NAMES:
        acc.gpu = acc.gpu or engine
    else:
        acc.engines.setdefault(name.removesuffix("_FREQ") or name, engine)


def _load(acc: _Fields, m: re.Match[str]) -> bool:
    name, load, freq = m.groups()
    _engine(acc, name, Engine(True, float(load), _clock(freq)))
    return True


def _rail(acc: _Fields, m: re.Match[str]) -> bool:
    name, current, average = m.groups()
    acc.rails.setdefault(name, Rail(float(current), float(average)))
    return True


def _temp(acc: _Fields, m: re.Match[str]) -> bool:
    acc.temperatures.setdefault(m.group(1), float(m.group(2)))
    return True


def _clocked(acc: _Fields, m: re.Match[str]) -> bool:
    name, value = m.groups()
    engine = Engine(on=False) if value == "off" else Engine(True, None, float(value))
    _engine(acc, name, engine)
    return True


_FIELDS: tuple[tuple[re.Pattern[str], Callable[[_Fields, re.Match[str]], bool]], ...] = (
    (_RAM, _ram),
    (_SWAP, _swap),
    (_IRAM, _iram),
    (_CPU, _cpu),
    (_MTS, _mts),
    (_LOAD, _load),
    (_RAIL, _rail),
    (_TEMP, _temp),
    (_ENGINE, _clocked),
)


def _timestamp(m: re.Match[str]) -> datetime | None:
    month, day, year, hour, minute, second = (int(g) for g in m.groups())
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def parse_line(line: str) -> TegrastatsSample:
    """Parse one tegrastats line. Never raises: unknown tokens land in ``unparsed``."""
    text = " ".join(str(line).split())
    acc = _Fields()
    pos = 0
    stamp = _TIMESTAMP.match(text)
    if stamp is not None and (when := _timestamp(stamp)) is not None:
        acc.timestamp = when
        pos = stamp.end()
    while pos < len(text):
        if text[pos] == " ":
            pos += 1
            continue
        for pattern, handle in _FIELDS:
            m = pattern.match(text, pos)
            if m is not None and handle(acc, m):
                pos = m.end()
                break
        else:
            token = _TOKEN.match(text, pos)
            assert token is not None  # text[pos] is not a space
            acc.unparsed.append(token.group())
            pos = token.end()
    return acc.sample()


# --- to the protocol's GpuMetrics ----------------------------------------------

GPU_RAILS = ("VDD_GPU", "POM_5V_GPU", "GPU", "VDD_GPU_SOC", "VDD_CPU_GPU_CV")
"""Rails that carry the GPU, most specific first; any other rail with a ``GPU`` part follows."""
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
"""Board input totals, used for power when no GPU rail is printed."""


def pick_gpu_power(powers: Mapping[str, float]) -> float | None:
    """From rail name → mW: a GPU rail if the board has one, else the board's input total."""
    for name in GPU_RAILS:
        if name in powers:
            return powers[name]
    for name, value in powers.items():
        if "GPU" in name.upper().split("_"):
            return value
    for name in TOTAL_RAILS:
        if name in powers:
            return powers[name]
    return None


def gpu_power_mw(rails: Mapping[str, Rail]) -> float | None:
    """Instantaneous GPU power of a sample's rails (see :func:`pick_gpu_power`)."""
    return pick_gpu_power({name: rail.current_mw for name, rail in rails.items()})


def gpu_temp_c(temperatures: Mapping[str, float]) -> float | None:
    """The ``GPU@`` temperature (any case); None when absent or the sensor is off."""
    for name, value in temperatures.items():
        if name.lower() == "gpu":
            return value if value > SENSOR_OFF_C else None
    return None


def to_gpu_metrics(sample: TegrastatsSample) -> GpuMetrics | None:
    """GPU fields of a sample as :class:`GpuMetrics`; None when the line had none of them."""
    load = sample.gpu.load_pct if sample.gpu else None
    freq = sample.gpu.freq_mhz if sample.gpu else None
    temp = gpu_temp_c(sample.temperatures)
    power = gpu_power_mw(sample.rails)
    if load is None and freq is None and temp is None and power is None:
        return None
    return GpuMetrics(
        source="tegrastats", load_pct=load, temp_c=temp, power_mw=power, freq_mhz=freq
    )
