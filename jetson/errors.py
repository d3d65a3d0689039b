"""Exception tree of the ``jetson`` package.

    JetsonError
    ├── TegrastatsError   the tegrastats tool cannot be started
    ├── ProfileError      a release/version file that is malformed
    ├── NvmlError         NVML (pynvml) is missing or fails to initialise
    └── EngineBuildError  TensorRT cannot parse the ONNX model or build an engine

Parsers of tegrastats lines and sysfs files never raise: they report what they
could not read (``unparsed`` tokens, ``None`` fields) instead.
"""

from __future__ import annotations


class JetsonError(Exception):
    """Base of every error raised by the jetson package."""


class TegrastatsError(JetsonError):
    """The tegrastats tool is missing, not executable, or the reader is misused."""


class ProfileError(JetsonError):
    """A device profile source (``nv_tegra_release``, a version string) is malformed."""


class NvmlError(JetsonError):
    """pynvml is not importable, or NVML fails to initialise or find the device."""


class EngineBuildError(JetsonError):
    """TensorRT cannot parse the ONNX model or build an engine from it."""
