"""The model package (DESIGN §4): one zip file per build, content-addressed by sha256.

Members (stored, not compressed; fixed timestamps so a build is reproducible):

* ``card.json``  — :class:`ModelCard`: I/O specs, variants, metrics, stages, provenance.
* ``golden.npz`` — golden vectors: ``in.<name>`` inputs, ``out.<name>`` expected outputs,
  ``rtol``/``atol`` tolerances (loaded with ``allow_pickle=False``).
* one ONNX file per runtime variant named in ``card.variants``, e.g.
  ``model.onnx`` (``onnxruntime``: U8S8 INT8 for ORT on CPU) and
  ``model.trt.onnx`` (``tensorrt``: symmetric S8S8 QDQ, explicit quantization).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jetfleet.canonical import canonical_json
from jetfleet.errors import PackageError

PACKAGE_FORMAT = "jetfleet.package/1"
PACKAGE_SUFFIX = ".jfpkg"
CARD = "card.json"
GOLDEN = "golden.npz"
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
MAX_MEMBER_BYTES = 1024**3


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    shape: list[int | str | None]
    dtype: str = "float32"


class GoldenSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(ge=1)
    rtol: float = Field(ge=0)
    atol: float = Field(ge=0)


class ModelCard(BaseModel):
    """``card.json``. Unknown top-level fields are refused: a card is written by our builder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["jetfleet.package/1"] = "jetfleet.package/1"
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    task: str = "classification"
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    variants: dict[str, str] = Field(min_length=1)
    precision: dict[str, str] = Field(default_factory=dict)
    golden: GoldenSpec
    labels: list[str] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Golden:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    rtol: float
    atol: float

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {f"in.{k}": v for k, v in self.inputs.items()}
        arrays.update({f"out.{k}": v for k, v in self.outputs.items()})
        arrays["rtol"] = np.asarray(self.rtol, dtype=np.float64)
        arrays["atol"] = np.asarray(self.atol, dtype=np.float64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Golden:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # numpy raises many types for a corrupt npz
            raise PackageError(f"golden.npz is unreadable: {exc}") from exc
        if "rtol" not in arrays or "atol" not in arrays:
            raise PackageError("golden.npz has no rtol/atol tolerances")
        inputs = {k[3:]: v for k, v in arrays.items() if k.startswith("in.")}
        outputs = {k[4:]: v for k, v in arrays.items() if k.startswith("out.")}
        if not inputs or not outputs:
            raise PackageError("golden.npz needs at least one in.<name> and one out.<name> array")
        return cls(inputs, outputs, float(arrays["rtol"]), float(arrays["atol"]))

    def compare(self, actual: dict[str, np.ndarray]) -> GoldenResult:
        """Compare a runtime's outputs for :attr:`inputs` with the expected outputs."""
        worst = 0.0
        failures: list[str] = []
        for name, expected in self.outputs.items():
            got = actual.get(name)
            if got is None:
                failures.append(f"output {name!r} missing")
                continue
            got = np.asarray(got)
            if got.shape != expected.shape:
                failures.append(f"output {name!r} shape {got.shape} != {expected.shape}")
                continue
            err = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            worst = max(worst, float(err.max(initial=0.0)))
            bound = self.atol + self.rtol * np.abs(expected.astype(np.float64))
            if not bool(np.all(err <= bound)) or not bool(np.all(np.isfinite(got))):
                failures.append(f"output {name!r} off by up to {float(err.max()):.4g}")
        return GoldenResult(ok=not failures, max_abs_error=worst, failures=tuple(failures))


@dataclass(frozen=True)
class GoldenResult:
    ok: bool
    max_abs_error: float
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class PackageInfo:
    path: Path
    sha256: str
    length: int


@dataclass(frozen=True)
class ModelPackage:
    """A package that passed :func:`read_package`'s checks."""

    path: Path
    sha256: str
    length: int
    card: ModelCard
    members: dict[str, int] = field(default_factory=dict)

    def read_member(self, name: str) -> bytes:
        if name not in self.members:
            raise PackageError(f"package has no member {name!r}")
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(name)

    def variant(self, runtime: str) -> bytes:
        member = self.card.variants.get(runtime)
        if member is None:
            raise PackageError(
                f"package {self.card.name} has no {runtime!r} variant "
                f"(has: {', '.join(sorted(self.card.variants))})"
            )
        return self.read_member(member)

    def golden(self) -> Golden:
        return Golden.from_bytes(self.read_member(GOLDEN))


def sha256_file(path: Path, chunk: int = 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_package(
    out_path: Path, card: ModelCard, models: dict[str, bytes], golden: Golden
) -> PackageInfo:
    """Write a package atomically (tmp file, fsync, rename); return its sha256 and length.

    ``models`` maps member names (those in ``card.variants``) to ONNX bytes.
    """
    missing = set(card.variants.values()) - set(models)
    if missing:
        raise PackageError(f"card names variant files not given: {sorted(missing)}")
    for name in models:
        if not _MEMBER.match(name) or name in (CARD, GOLDEN):
            raise PackageError(f"invalid member name {name!r}")
    _check_golden_matches(card, golden)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            entries = [
                (CARD, canonical_json(card.model_dump(mode="json"))),
                (GOLDEN, golden.to_bytes()),
            ]
            entries += sorted(models.items())
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return PackageInfo(path=out_path, sha256=sha256_file(out_path), length=out_path.stat().st_size)


def _check_golden_matches(card: ModelCard, golden: Golden) -> None:
    want_in = {t.name for t in card.inputs}
    want_out = {t.name for t in card.outputs}
    if set(golden.inputs) != want_in:
        raise PackageError(
            f"golden inputs {sorted(golden.inputs)} != card inputs {sorted(want_in)}"
        )
    if set(golden.outputs) != want_out:
        raise PackageError(
            f"golden outputs {sorted(golden.outputs)} != card outputs {sorted(want_out)}"
        )


def read_package(path: Path, expected_sha256: str | None = None) -> ModelPackage:
    """Open and validate a package; raise :class:`PackageError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"package {path} does not exist")
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise PackageError(f"package sha256 {digest} does not match expected {expected_sha256}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            members: dict[str, int] = {}
            for info in infos:
                if not _MEMBER.match(info.filename):
                    raise PackageError(f"package member {info.filename!r} has an invalid name")
                if info.file_size > MAX_MEMBER_BYTES:
                    raise PackageError(f"package member {info.filename!r} is too large")
                members[info.filename] = info.file_size
            if CARD not in members or GOLDEN not in members:
                raise PackageError("package lacks card.json or golden.npz")
            bad = zf.testzip()
            if bad is not None:
                raise PackageError(f"package member {bad!r} fails its CRC")
            card_bytes = zf.read(CARD)
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{path.name} is not a jetfleet package (bad zip): {exc}") from exc
    try:
        card = ModelCard.model_validate_json(card_bytes)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise PackageError(f"card.json invalid at {where}: {first['msg']}") from exc
    for runtime, member in card.variants.items():
        if member not in members:
            raise PackageError(
                f"card names {runtime!r} variant {member!r}, which is not in the package"
            )
    pkg = ModelPackage(
        path=path, sha256=digest, length=path.stat().st_size, card=card, members=members
    )
    _check_golden_matches(card, pkg.golden())
    return pkg
