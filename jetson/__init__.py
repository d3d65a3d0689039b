"""Jetson support: tegrastats and sysfs telemetry, GPU providers, device profile,
sd_notify, and the on-device install script and systemd unit (``install.sh``,
``jetfleet-agent.service``, shipped as package data)."""

from __future__ import annotations

from jetson.engine import build_serialized_engine
from jetson.errors import (
    EngineBuildError,
    JetsonError,
    NvmlError,
    ProfileError,
    TegrastatsError,
)
from jetson.gpu import GpuProvider, JetsonProvider, NoGpuProvider, NvmlProvider, select_provider
from jetson.profile import (
    JETPACK_BY_L4T,
    DeviceProfile,
    L4TRelease,
    detect_profile,
    jetpack_for,
    module_for,
    parse_l4t_core_version,
    parse_nv_tegra_release,
)
from jetson.sysfs import NvpModel, PowerRail, SysfsReader, ThermalZone
from jetson.systemd import notify, notify_ready, notify_stopping, notify_watchdog
from jetson.tegrastats import (
    CpuCore,
    Engine,
    Memory,
    Rail,
    Swap,
    TegrastatsSample,
    parse_line,
    to_gpu_metrics,
)
from jetson.tegrastats_reader import TegrastatsReader

__all__ = [
    "JETPACK_BY_L4T",
    "CpuCore",
    "DeviceProfile",
    "Engine",
    "EngineBuildError",
    "GpuProvider",
    "JetsonError",
    "JetsonProvider",
    "L4TRelease",
    "Memory",
    "NoGpuProvider",
    "NvmlError",
    "NvmlProvider",
    "NvpModel",
    "PowerRail",
    "ProfileError",
    "Rail",
    "Swap",
    "SysfsReader",
    "TegrastatsError",
    "TegrastatsReader",
    "TegrastatsSample",
    "ThermalZone",
    "build_serialized_engine",
    "detect_profile",
    "jetpack_for",
    "module_for",
    "notify",
    "notify_ready",
    "notify_stopping",
    "notify_watchdog",
    "parse_l4t_core_version",
    "parse_line",
    "parse_nv_tegra_release",
    "select_provider",
    "to_gpu_metrics",
]
