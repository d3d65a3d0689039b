"""SQLModel tables and API schemas of rollouts (see ``models.py`` for the conventions).

A rollout freezes its selection at creation: ``targets`` holds the selected device ids
in wave order (sorted), ``plan`` the cumulative device count of each wave, so wave ``i``
is ``targets[plan[i-1]:plan[i]]``. Everything the controller needs to resume after a
restart is in these rows.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_server.errors import InvalidInputError
from fleet_server.models import TAG_KEY_PATTERN
from fleet_server.waves import parse_waves

ROLLOUT_STATUSES = ("pending", "running", "paused", "halted", "aborted", "completed", "rolled_back")
ACTIVE_STATUSES = ("pending", "running", "paused")


def parse_selector(selector: dict[str, str] | str) -> dict[str, str]:
    """``{"site": "lab"}`` or ``"site=lab,rack=2"`` → tags that must all match (AND)."""
    if isinstance(selector, str):
        pairs: dict[str, str] = {}
        for part in (p.strip() for p in selector.split(",")):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"selector part {part!r} must look like key=value")
            pairs[key.strip()] = value.strip()
        selector = pairs
    if not selector:
        raise ValueError("selector must name at least one tag, e.g. site=lab")
    for key in selector:
        if not re.match(TAG_KEY_PATTERN, key):
            raise ValueError(f"selector key {key!r} is not a valid tag key")
    return dict(selector)


def format_selector(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


# -- rollouts --------------------------------------------------------------------------
class RolloutBase(SQLModel):
    release: str = Field(min_length=1, max_length=128)
    bake_s: float = Field(default=600.0, ge=0, le=30 * 86400)
    wave_timeout_s: float = Field(default=3600.0, gt=0, le=30 * 86400)
    max_failures: int = Field(default=0, ge=0)
    max_failure_rate: float = Field(default=0.0, ge=0, le=1)
    min_executions: int = Field(default=1, ge=1)
    auto_rollback: bool = True
    max_p95_ratio: float = Field(default=1.5, gt=0, le=1000)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_reverts: int = Field(default=0, ge=0)


class RolloutCreate(RolloutBase):
    selector: dict[str, str] | str
    waves: list[int | str] | str = Field(default="1,10%,50%,100%")

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: dict[str, str] | str) -> dict[str, str]:
        return parse_selector(value)

    @field_validator("waves")
    @classmethod
    def _waves(cls, value: list[int | str] | str) -> list[str]:
        try:
            return [str(w) for w in parse_waves(value)]
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from exc


class Rollout(RolloutBase, table=True):
    __tablename__ = "rollouts"

    id: int | None = Field(default=None, primary_key=True)
    release_sha256: str = Field(max_length=64)
    selector: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    waves: list[str] = Field(default_factory=list, sa_type=JSON)
    plan: list[int] = Field(default_factory=list, sa_type=JSON)
    targets: list[str] = Field(default_factory=list, sa_type=JSON)
    status: str = Field(default="running", max_length=16, index=True)
    current_wave: int = 0
    issued_wave: int = -1  # the highest wave whose assignments were issued
    wave_issued_at: float | None = None  # server clock
    wave_ready_at: float | None = None  # when every device of the wave reached trial
    reason: str = ""
    created_at: float
    updated_at: float


class RolloutPublic(RolloutBase):
    id: int
    release_sha256: str
    selector: dict[str, str]
    waves: list[str]
    plan: list[int]
    status: str
    current_wave: int
    issued_wave: int
    wave_issued_at: float | None
    wave_ready_at: float | None
    reason: str
    created_at: float
    updated_at: float


# -- devices of a rollout --------------------------------------------------------------
class RolloutDeviceBase(SQLModel):
    rollout_id: int = Field(foreign_key="rollouts.id")
    device_id: str = Field(foreign_key="devices.id", max_length=63)
    wave: int
    sequence: int | None = None  # of the rollout's assignment
    previous_release: str | None = None  # what the device ran before (rollback target)
    previous_sha256: str | None = None
    status: str = Field(default="issued", max_length=32)  # mirror of the assignment status
    rollback_sequence: int | None = None
    issued_at: float
    updated_at: float


class RolloutDevice(RolloutDeviceBase, table=True):
    __tablename__ = "rollout_devices"
    __table_args__ = (
        UniqueConstraint("rollout_id", "device_id", name="uq_rollout_devices"),
        Index("ix_rollout_devices_rollout", "rollout_id"),
    )

    id: int | None = Field(default=None, primary_key=True)


class RolloutDevicePublic(RolloutDeviceBase):
    pass


# -- gate decisions --------------------------------------------------------------------
class GateDecisionBase(SQLModel):
    rollout_id: int = Field(foreign_key="rollouts.id")
    wave: int
    passed: bool
    reason: str = ""
    numbers: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    evaluated_at: float


class GateDecision(GateDecisionBase, table=True):
    __tablename__ = "gate_decisions"
    __table_args__ = (Index("ix_gate_decisions_rollout", "rollout_id"),)

    id: int | None = Field(default=None, primary_key=True)


class GateDecisionPublic(GateDecisionBase):
    id: int


# -- detail view -----------------------------------------------------------------------
class WavePublic(SQLModel):
    index: int
    target: int  # cumulative device count
    devices: list[str]
    state: str  # pending | issued | passed | failed


class RolloutDetail(RolloutPublic):
    targets: list[str]
    wave_plan: list[WavePublic]
    devices: list[RolloutDevicePublic]
    gates: list[GateDecisionPublic]
