"""Stage records (one row per stage in card.json ``stages``) and the printed stage table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class StageRow:
    stage: str
    settings: dict[str, Any] = field(default_factory=dict)
    size_bytes: int | None = None
    latency_ms_p50: float | None = None
    accuracy: float | None = None
    top1_agreement: float | None = None
    wall_s: float | None = None
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "size_bytes": self.size_bytes,
            "latency_ms_p50": self.latency_ms_p50,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 5),
            "top1_agreement": None
            if self.top1_agreement is None
            else round(self.top1_agreement, 5),
            "wall_s": self.wall_s,
            "cached": self.cached,
            "settings": self.settings,
            **({"details": self.details} if self.details else {}),
        }


def rows_to_dicts(rows: list[StageRow]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in rows]


class _HasStages(Protocol):
    @property
    def stages(self) -> list[dict[str, Any]]: ...


def _size(n: Any) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_stage_table(result: _HasStages) -> str:
    """A plain-text table of a build's stages (what ``jetfleet build`` prints)."""
    header = ("stage", "size", "p50 ms", "accuracy", "top-1 agr", "wall s", "")
    lines = [header]
    for s in result.stages:
        lines.append(
            (
                str(s["stage"]),
                _size(s.get("size_bytes")),
                _num(s.get("latency_ms_p50"), ".3f"),
                _num(None if s.get("accuracy") is None else 100 * s["accuracy"], ".2f"),
                _num(None if s.get("top1_agreement") is None else 100 * s["top1_agreement"], ".2f"),
                _num(s.get("wall_s"), ".2f"),
                "cached" if s.get("cached") else "",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for n, row in enumerate(lines):
        rest = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(out)
