"""GPU telemetry providers behind one small protocol (DESIGN §8).

* :class:`JetsonProvider`: tegrastats when the tool runs, else sysfs.
* :class:`NvmlProvider`: a discrete NVIDIA GPU through NVML (``nvidia-ml-py``).
* :class:`NoGpuProvider`: no GPU; :meth:`read` returns None, so the GPU fields of
  a telemetry sample are absent, never faked.

:func:`select_provider` picks one at start: Jetson if ``etc/nv_tegra_release``
exists under ``root``, NVML if ``pynvml`` imports and ``nvmlInit`` succeeds,
else none.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from jetfleet.messages import GpuMetrics
from jetson.errors import NvmlError, TegrastatsError
from jetson.sysfs import SysfsReader
from jetson.tegrastats import to_gpu_metrics
from jetson.tegrastats_reader import DEFAULT_TEGRASTATS, TegrastatsReader

log = logging.getLogger(__name__)

NV_TEGRA_RELEASE = "etc/nv_tegra_release"


@runtime_checkable
class GpuProvider(Protocol):
    """A source of GPU samples. ``read`` returns None when there is no GPU data."""

    def read(self) -> GpuMetrics | None: ...

    def close(self) -> None: ...


class NoGpuProvider:
    """A host without a GPU: every read is None."""

    def read(self) -> GpuMetrics | None:
        return None

    def close(self) -> None:
        return None


class JetsonProvider:
    """The latest tegrastats sample, or sysfs when tegrastats has no fresh sample.

    ``max_age_s`` is how old a tegrastats sample may be before sysfs is read
    instead (the tool stalled or stopped).
    """

    def __init__(
        self,
        sysfs: SysfsReader,
        tegrastats: TegrastatsReader | None = None,
        *,
        max_age_s: float = 10.0,
    ) -> None:
        self.sysfs = sysfs
        self.tegrastats = tegrastats
        self.max_age_s = max_age_s

    def read(self) -> GpuMetrics | None:
        reader = self.tegrastats
        if reader is not None:
            sample = reader.latest()
            age = reader.age_s()
            if sample is not None and age is not None and age <= self.max_age_s:
                metrics = to_gpu_metrics(sample)
                if metrics is not None:
                    return metrics
        return self.sysfs.gpu_metrics()

    def close(self) -> None:
        if self.tegrastats is not None:
            self.tegrastats.stop()


class NvmlProvider:
    """One GPU through NVML. ``nvml`` is the ``pynvml`` module (or an object like it).

    Written against the documented nvidia-ml-py API; each field that NVML refuses
    (e.g. power on some boards) is left None instead of failing the sample.
    """

    def __init__(self, nvml: Any, index: int = 0) -> None:
        self.nvml = nvml
        self._error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except self._error as exc:
            raise NvmlError(f"nvmlInit failed: {exc}") from exc
        try:
            self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except self._error as exc:
            self._shutdown()
            raise NvmlError(f"no NVIDIA GPU at index {index}: {exc}") from exc
        self._closed = False

    def _field(self, get: Callable[[], Any]) -> Any:
        try:
            return get()
        except self._error as exc:
            log.debug("NVML field unavailable: %s", exc)
            return None

    def read(self) -> GpuMetrics | None:
        if self._closed:
            return None
        nvml, handle = self.nvml, self.handle
        util = self._field(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        memory = self._field(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        temp = self._field(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        power = self._field(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        clock = self._field(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_GRAPHICS))
        values = {
            "load_pct": float(util.gpu) if util is not None else None,
            "mem_used_mb": memory.used / 2**20 if memory is not None else None,
            "mem_total_mb": memory.total / 2**20 if memory is not None else None,
            "temp_c": float(temp) if temp is not None else None,
            "power_mw": float(power) if power is not None else None,
            "freq_mhz": float(clock) if clock is not None else None,
        }
        if all(v is None for v in values.values()):
            return None
        return GpuMetrics(source="nvml", **values)

    def _shutdown(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self._error as exc:
            log.debug("nvmlShutdown failed: %s", exc)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shutdown()


def _import_pynvml() -> Any:
    return importlib.import_module("pynvml")


def select_provider(
    root: str | os.PathLike[str] = "/",
    tegrastats_path: str | os.PathLike[str] = DEFAULT_TEGRASTATS,
    nvml_module: Any = None,
    *,
    interval_ms: int = 1000,
    nvml_loader: Callable[[], Any] = _import_pynvml,
) -> GpuProvider:
    """Choose the GPU provider for this host (see the module docstring).

    ``nvml_module`` is used instead of importing ``pynvml`` (``nvml_loader``).
    On a Jetson the tegrastats reader is started when the tool is executable.
    """
    base = Path(root)
    if (base / NV_TEGRA_RELEASE).exists():
        reader: TegrastatsReader | None = None
        if TegrastatsReader.available(tegrastats_path):
            try:
                reader = TegrastatsReader(tegrastats_path, interval_ms).start()
            except TegrastatsError as exc:
                log.warning("tegrastats unavailable, reading sysfs: %s", exc)
        else:
            log.info("no tegrastats at %s; GPU telemetry from sysfs", tegrastats_path)
        return JetsonProvider(SysfsReader(base), reader)
    nvml = nvml_module
    if nvml is None:
        try:
            nvml = nvml_loader()
        except ImportError as exc:
            log.info("no pynvml (%s); no GPU telemetry", exc)
            return NoGpuProvider()
    try:
        return NvmlProvider(nvml)
    except NvmlError as exc:
        log.info("NVML unavailable (%s); no GPU telemetry", exc)
        return NoGpuProvider()
