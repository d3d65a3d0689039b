from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_builder import format_stage_table


@dataclass
class _Result:
    stages: list[dict[str, Any]]


def test_stage_table_shows_each_stage_with_units() -> None:
    table = format_stage_table(
        _Result(
            [
                {
                    "stage": "baseline",
                    "size_bytes": 655792,
                    "latency_ms_p50": 0.0541,
                    "accuracy": 0.99444,
                    "top1_agreement": 1.0,
                    "wall_s": 2.06,
                    "cached": False,
                },
                {
                    "stage": "prune",
                    "size_bytes": 162500,
                    "latency_ms_p50": None,
                    "accuracy": 0.9556,
                    "top1_agreement": 0.9611,
                    "wall_s": 0.5,
                    "cached": True,
                },
            ]
        )
    )
    lines = table.splitlines()
    assert lines[0].split() == [
        "stage",
        "size",
        "p50",
        "ms",
        "accuracy",
        "top-1",
        "agr",
        "wall",
        "s",
    ]
    assert "640.4 KiB" in lines[2]
    assert "99.44" in lines[2]
    assert "0.054" in lines[2]
    assert lines[3].endswith("cached")
    assert " - " in lines[3]
