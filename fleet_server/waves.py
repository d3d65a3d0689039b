"""Rollout waves: parse ``"1,10%,50%,100%"`` and plan cumulative device counts.

A wave is a *cumulative* target: an absolute device count (``5``) or a percentage of
the selected devices (``"10%"``). Both functions are pure; a bad spec raises
:class:`InvalidInputError` with a message that names the offending wave.

Planning rules (``plan_waves``):

* a percentage is rounded up (``10%`` of 4 devices is 1 device), an absolute count above
  the selection is capped at the selection;
* a wave that adds no device after rounding is dropped (``1,10%`` on 4 devices is one wave);
* a wave planned below an earlier one is an error;
* the last wave must cover every selected device: it is an error, not silently extended,
  so an operator never gets a bigger blast radius than they wrote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fleet_server.errors import InvalidInputError

MAX_WAVES = 100
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_COUNT = re.compile(r"^\d+$")


@dataclass(frozen=True)
class WaveSpec:
    """One cumulative wave target: exactly one of ``count`` and ``percent`` is set."""

    count: int | None = None
    percent: float | None = None

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return str(self.count)

    def target(self, n_devices: int) -> int:
        if self.percent is not None:
            return max(1, math.ceil(self.percent * n_devices / 100 - 1e-9))
        assert self.count is not None
        return min(self.count, n_devices)


def _parse_one(index: int, item: int | str) -> WaveSpec:
    where = f"wave {index + 1} ({item!r})"
    if isinstance(item, bool):
        raise InvalidInputError(f"{where} must be a device count or a percentage like '10%'")
    if isinstance(item, int):
        text = str(item)
    elif isinstance(item, str):
        text = item.strip()
    else:
        raise InvalidInputError(f"{where} must be a device count or a percentage like '10%'")
    percent = _PERCENT.match(text)
    if percent:
        value = float(percent.group(1))
        if not 0 < value <= 100:
            raise InvalidInputError(f"{where} must be a percentage in (0%, 100%]")
        return WaveSpec(percent=value)
    if not _COUNT.match(text):
        raise InvalidInputError(f"{where} must be a device count or a percentage like '10%'")
    if int(text) == 0:
        raise InvalidInputError(f"{where} must be at least 1 device")
    return WaveSpec(count=int(text))


def parse_waves(spec: str | Sequence[int | str]) -> list[WaveSpec]:
    """``"1,10%,50%,100%"`` or ``[1, "10%", "50%", "100%"]`` → wave specs.

    Checks what can be checked without the fleet size: each wave is a positive count or a
    percentage in (0, 100], and counts (and percentages) increase among themselves.
    """
    items: Sequence[int | str] = spec.split(",") if isinstance(spec, str) else spec
    if not items or (isinstance(spec, str) and not spec.strip()):
        raise InvalidInputError("waves must name at least one wave, e.g. '1,10%,50%,100%'")
    if len(items) > MAX_WAVES:
        raise InvalidInputError(f"waves has {len(items)} waves; at most {MAX_WAVES}")
    waves = [_parse_one(i, item) for i, item in enumerate(items)]
    last_count: WaveSpec | None = None
    last_percent: WaveSpec | None = None
    for index, wave in enumerate(waves):
        if wave.count is not None:
            if last_count is not None and wave.count <= (last_count.count or 0):
                raise InvalidInputError(
                    f"waves must increase: wave {index + 1} ({wave}) is not above {last_count}"
                )
            last_count = wave
        else:
            assert wave.percent is not None
            if last_percent is not None and wave.percent <= (last_percent.percent or 0.0):
                raise InvalidInputError(
                    f"waves must increase: wave {index + 1} ({wave}) is not above {last_percent}"
                )
            last_percent = wave
    return waves


def plan_waves(waves: Sequence[WaveSpec], n_devices: int) -> list[int]:
    """Cumulative device counts per wave for ``n_devices`` selected devices."""
    if n_devices < 1:
        raise InvalidInputError("a rollout needs at least one selected device")
    plan: list[int] = []
    for index, wave in enumerate(waves):
        target = wave.target(n_devices)
        if plan and target < plan[-1]:
            raise InvalidInputError(
                f"waves must increase: wave {index + 1} ({wave}) is {target} device(s), "
                f"below the {plan[-1]} of an earlier wave"
            )
        if not plan or target > plan[-1]:
            plan.append(target)
    if plan[-1] != n_devices:
        raise InvalidInputError(
            f"the last wave ({waves[-1]}) covers {plan[-1]} of the {n_devices} selected "
            "devices; it is not extended automatically: end the waves with 100%"
        )
    return plan
