"""Device profile: which Jetson module, L4T/JetPack, GPU architecture and TensorRT.

A TensorRT engine runs only on the GPU architecture (SM) and TensorRT version it
was built for, so :attr:`DeviceProfile.engine_key` (``sm87-trt10.3``) names the
engine target a device needs, and :attr:`DeviceProfile.key`
(``orin-nano-sm87-jp6.1-trt10.3``) names the whole device profile.

Sources, all below an injectable ``root``::

    etc/nv_tegra_release        "# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, ..."
    var/lib/dpkg/status         "Package: nvidia-l4t-core" / "Version: 36.4.0-20240912212859"
    proc/device-tree/model      "NVIDIA Jetson Orin Nano Developer Kit\\0"
    proc/device-tree/compatible "nvidia,p3768-0000+p3767-0005\\0nvidia,tegra234\\0"
    usr/local/cuda/version.json {"cuda": {"version": "12.6.68"}}  (version.txt on CUDA 10)

TensorRT's version comes from an injectable module-version finder (default: the
installed distribution's metadata, else ``tensorrt.__version__``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jetson.errors import ProfileError

log = logging.getLogger(__name__)

NV_TEGRA_RELEASE = "etc/nv_tegra_release"
DPKG_STATUS = "var/lib/dpkg/status"
DT_MODEL = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
DT_COMPATIBLE = ("proc/device-tree/compatible", "sys/firmware/devicetree/base/compatible")
CUDA_VERSION_FILES = ("usr/local/cuda/version.json", "usr/local/cuda/version.txt")

# L4T (Jetson Linux) release → JetPack, from NVIDIA's JetPack archive. Exact
# releases first; a release not listed takes the entry of its (major, minor).
JETPACK_BY_L4T: dict[str, str] = {
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.2.0": "6.0",  # developer preview
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "38.2.0": "7.0",
}
JETPACK_BY_L4T_MINOR: dict[tuple[int, int], str] = {
    (32, 6): "4.6",
    (32, 7): "4.6",
    (35, 1): "5.0",
    (35, 2): "5.1",
    (35, 3): "5.1",
    (35, 4): "5.1",
    (35, 5): "5.1",
    (35, 6): "5.1",
    (36, 2): "6.0",
    (36, 3): "6.0",
    (36, 4): "6.2",  # 36.4.0 is 6.1 (exact entry above); later 36.4.x are 6.2.x
    (38, 2): "7.0",
}

# Device-tree model → module slug and CUDA compute capability (SM). Ordered: the
# first match wins, so "orin nano" is tried before "nano". Matched on the model
# lower-cased with '-' and '_' read as spaces.
MODULES: tuple[tuple[str, str, int], ...] = (
    (r"\bthor\b", "thor", 110),  # CUDA 13 naming; CUDA 12.8/12.9 called it sm_101
    (r"\borin nano\b", "orin-nano", 87),
    (r"\borin nx\b", "orin-nx", 87),
    (r"\bigx orin\b", "igx-orin", 87),
    (r"\bagx orin\b|\borin agx\b", "agx-orin", 87),
    (r"\bxavier nx\b", "xavier-nx", 72),
    (r"\bagx xavier\b|\bxavier\b|^jetson agx$", "agx-xavier", 72),
    (r"\btx2 nx\b", "tx2-nx", 62),
    (r"\btx2\b|^(quill|storm|lightning)\b", "tx2", 62),
    (r"\btx1\b", "tx1", 53),
    (r"\bnano\b", "nano", 53),
)
# SoC (device-tree ``compatible``) → SM, for carrier boards with their own model string.
SOCS: dict[str, int] = {
    "tegra210": 53,
    "tegra186": 62,
    "tegra194": 72,
    "tegra234": 87,
    "tegra264": 110,
}

_RELEASE = re.compile(r"^#\s*R([0-9]+)\s*\(release\),\s*REVISION:\s*([0-9]+)(?:\.([0-9]+))?", re.M)
_RELEASE_FIELD = re.compile(r"([A-Z]+):\s*([^,]*)")
_DEB_L4T = re.compile(r"^([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")
_MAJOR_MINOR = re.compile(r"^([0-9]+)\.([0-9]+)")
_CUDA_TXT = re.compile(r"CUDA Version\s+([0-9]+(?:\.[0-9]+)*)")
_SLUG = re.compile(r"[^a-z0-9._]+")


@dataclass(frozen=True)
class L4TRelease:
    """An L4T (Jetson Linux) release, e.g. R36.4.0."""

    major: int
    minor: int
    patch: int = 0
    board: str | None = None

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


@dataclass(frozen=True)
class DeviceProfile:
    """What a device is, as far as models and engines care."""

    arch: str
    l4t: str | None = None
    jetpack: str | None = None
    model: str | None = None
    module: str | None = None
    soc: str | None = None
    sm: int | None = None
    tensorrt: str | None = None
    cuda: str | None = None

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None or self.soc is not None or self.module is not None

    @property
    def key(self) -> str:
        """``orin-nano-sm87-jp6.1-trt10.3``; ``x86_64-cpu`` on a host without a GPU."""
        parts = [self.module or self.soc or self.arch]
        if self.sm is not None:
            parts.append(f"sm{self.sm}")
        elif not self.is_jetson:
            parts.append("cpu")
        if self.jetpack:
            parts.append(f"jp{major_minor(self.jetpack)}")
        if self.tensorrt:
            parts.append(f"trt{major_minor(self.tensorrt)}")
        return "-".join(_SLUG.sub("-", p.lower()).strip("-") for p in parts)

    @property
    def engine_key(self) -> str | None:
        """``sm87-trt10.3``: the target a TensorRT engine is built for; None without both."""
        if self.sm is None or not self.tensorrt:
            return None
        return f"sm{self.sm}-trt{major_minor(self.tensorrt)}"

    def details(self) -> dict[str, str]:
        """Known fields as strings (for ``StateMessage.profile_details``)."""
        fields = {
            "arch": self.arch,
            "l4t": self.l4t,
            "jetpack": self.jetpack,
            "model": self.model,
            "module": self.module,
            "soc": self.soc,
            "sm": None if self.sm is None else str(self.sm),
            "tensorrt": self.tensorrt,
            "cuda": self.cuda,
        }
        return {k: v for k, v in fields.items() if v is not None}


def major_minor(version: str) -> str:
    """``10.3.0.30`` → ``10.3``; a version without a minor part is returned as it is."""
    m = _MAJOR_MINOR.match(version.strip())
    return f"{m.group(1)}.{m.group(2)}" if m else version.strip()


def parse_nv_tegra_release(text: str) -> L4TRelease:
    """Parse ``/etc/nv_tegra_release``. Raises ProfileError when it is not one."""
    m = _RELEASE.search(text)
    if m is None:
        first = text.strip().splitlines()[0][:120] if text.strip() else "(empty)"
        raise ProfileError(f"nv_tegra_release has no '# R<major> (release), REVISION:': {first!r}")
    fields = dict(_RELEASE_FIELD.findall(text[m.start() :].splitlines()[0]))
    board = fields.get("BOARD", "").strip() or None
    return L4TRelease(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), board)


def parse_l4t_core_version(version: str) -> L4TRelease:
    """``nvidia-l4t-core`` Debian version (``36.4.0-20240912212859``) → release."""
    m = _DEB_L4T.match(version.strip())
    if m is None:
        raise ProfileError(f"not an nvidia-l4t-core version: {version[:80]!r}")
    return L4TRelease(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def dpkg_version(status_text: str, package: str) -> str | None:
    """Version of an installed package in a dpkg ``status`` file; None if absent."""
    for stanza in status_text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t")):
                fields[key.strip()] = value.strip()
        if fields.get("Package") == package and "installed" in fields.get("Status", "installed"):
            return fields.get("Version")
    return None


def jetpack_for(l4t: L4TRelease) -> str | None:
    """JetPack release of an L4T release (see :data:`JETPACK_BY_L4T`); None if unknown."""
    return JETPACK_BY_L4T.get(l4t.version) or JETPACK_BY_L4T_MINOR.get((l4t.major, l4t.minor))


def module_for(model: str) -> tuple[str, int] | None:
    """Device-tree model string → (module slug, SM); None for an unknown model."""
    text = " ".join(model.replace("\0", " ").replace("-", " ").replace("_", " ").lower().split())
    for pattern, slug, sm in MODULES:
        if re.search(pattern, text):
            return slug, sm
    return None


def soc_for(compatible: str) -> str | None:
    """Device-tree ``compatible`` list (NUL-separated) → ``tegra234`` etc.; None if unknown."""
    for entry in compatible.split("\0"):
        name = entry.strip().rpartition(",")[2]
        if name in SOCS:
            return name
    return None


def find_module_version(name: str) -> str | None:
    """Version of an importable Python module: distribution metadata, else ``__version__``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        if importlib.util.find_spec(name) is None:
            return None
        module = importlib.import_module(name)
    except (ImportError, OSError, ValueError) as exc:  # a broken CUDA install raises OSError
        log.info("cannot import %s for its version: %s", name, exc)
        return None
    version = getattr(module, "__version__", None)
    return version if isinstance(version, str) else None


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


def _first(root: Path, candidates: tuple[str, ...]) -> str | None:
    for rel in candidates:
        text = _read(root / rel)
        if text is not None:
            return text
    return None


def cuda_version(root: str | os.PathLike[str] = "/") -> str | None:
    """CUDA toolkit version from ``usr/local/cuda/version.json`` (or ``version.txt``)."""
    base = Path(root)
    text = _read(base / CUDA_VERSION_FILES[0])
    if text is not None:
        try:
            version = json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable %s", base / CUDA_VERSION_FILES[0])
        else:
            return str(version)
    text = _read(base / CUDA_VERSION_FILES[1])
    m = _CUDA_TXT.search(text) if text else None
    return m.group(1) if m else None


def _l4t(base: Path, l4t_core_version: str | None) -> L4TRelease | None:
    text = _read(base / NV_TEGRA_RELEASE)
    if text is not None:
        try:
            return parse_nv_tegra_release(text)
        except ProfileError as exc:
            log.warning("%s: %s", base / NV_TEGRA_RELEASE, exc)
    if l4t_core_version is None:
        status = _read(base / DPKG_STATUS)
        l4t_core_version = dpkg_version(status, "nvidia-l4t-core") if status else None
    if l4t_core_version is None:
        return None
    try:
        return parse_l4t_core_version(l4t_core_version)
    except ProfileError as exc:
        log.warning("%s", exc)
        return None


def detect_profile(
    root: str | os.PathLike[str] = "/",
    *,
    arch: str | None = None,
    l4t_core_version: str | None = None,
    tensorrt_version: str | None = None,
    cuda: str | None = None,
    sm: int | None = None,
    find_version: Callable[[str], str | None] = find_module_version,
) -> DeviceProfile:
    """Detect this device's profile from files under ``root``. Never raises on bad files.

    ``l4t_core_version``, ``tensorrt_version``, ``cuda`` and ``sm`` override what
    would be detected (``sm`` is how a discrete-GPU host passes NVML's compute
    capability); ``find_version`` looks up a Python module's version.
    """
    base = Path(root)
    l4t = _l4t(base, l4t_core_version)
    model_text = _first(base, DT_MODEL)
    model = (model_text.replace("\0", "").strip() or None) if model_text else None
    found = module_for(model) if model else None
    compatible = _first(base, DT_COMPATIBLE)
    soc = soc_for(compatible) if compatible else None
    if sm is None:
        sm = found[1] if found else SOCS.get(soc or "")
    if tensorrt_version is None:
        tensorrt_version = find_version("tensorrt")
    return DeviceProfile(
        arch=arch or platform.machine() or "unknown",
        l4t=l4t.version if l4t else None,
        jetpack=jetpack_for(l4t) if l4t else None,
        model=model,
        module=found[0] if found else None,
        soc=soc,
        sm=sm,
        tensorrt=tensorrt_version,
        cuda=cuda if cuda is not None else cuda_version(base),
    )
