"""``state.json``: what the agent runs and what it was told, written atomically.

Write order (DESIGN §6): tmp file → fsync → rename → fsync the directory, so a crash
at any instant leaves either the old or the new file, never a torn one.  A file that
does not parse is moved aside (``state.json.corrupt-<n>``) and a fresh state starts:
the agent never refuses to boot over its own state file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import StateError
from jetfleet.fsutil import atomic_write
from jetfleet.messages import SHA256_PATTERN, SlotStatus

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_FORMAT = 1


class SlotRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sha256: str = Field(pattern=SHA256_PATTERN)
    release: str | None = None
    status: SlotStatus
    reason: str | None = None
    sequence: int | None = None
    updated_at: float = 0.0


class TrialRecord(BaseModel):
    """The engine on trial; ``boots`` is the crash-loop counter (agent starts during trial)."""

    model_config = ConfigDict(extra="ignore")

    sha256: str = Field(pattern=SHA256_PATTERN)
    release: str | None = None
    started_at: float
    boots: int = 0


class SelfHealRecord(BaseModel):
    """What the watchdog did: runtime restarts (wall-clock times), trips, throttle."""

    model_config = ConfigDict(extra="ignore")

    restarts: list[float] = Field(default_factory=list)
    trips: int = 0
    throttled: bool = False
    last_action: str | None = None
    last_rule: str | None = None


class AgentState(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    format: int = STATE_FORMAT
    active_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    active_release: str | None = None
    known_good_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    known_good_release: str | None = None
    assignment_sequence: int | None = None
    assignment_raw: str | None = None
    command_sequence: int = 0
    slots: dict[str, SlotRecord] = Field(default_factory=dict)
    reverted: list[str] = Field(default_factory=list)
    trial: TrialRecord | None = None
    boots: int = 0
    selfheal: SelfHealRecord = Field(default_factory=SelfHealRecord)

    def set_slot(
        self,
        sha256: str,
        status: SlotStatus,
        *,
        now: float,
        release: str | None = None,
        reason: str | None = None,
        sequence: int | None = None,
    ) -> SlotRecord:
        old = self.slots.get(sha256)
        record = SlotRecord(
            sha256=sha256,
            release=release if release is not None else (old.release if old else None),
            status=status,
            reason=reason,
            sequence=sequence if sequence is not None else (old.sequence if old else None),
            updated_at=now,
        )
        self.slots[sha256] = record
        return record


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` crash-safely (:func:`jetfleet.fsutil.atomic_write`)."""
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from exc


class StateStore:
    """Loads and saves :class:`AgentState` under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE

    def load(self) -> AgentState:
        """The saved state, or a fresh one if none exists or it is corrupt (moved aside)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except OSError as exc:
            logger.error("cannot read %s (%s); starting from a fresh state", self.path, exc)
            return AgentState()
        try:
            return AgentState.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            backup = self._backup_name()
            logger.error(
                "state file %s is corrupt (%s); moved to %s, starting from a fresh state",
                self.path, str(exc).splitlines()[0], backup.name,
            )
            try:
                os.replace(self.path, backup)
            except OSError as move_exc:
                logger.error("cannot move corrupt state file aside: %s", move_exc)
            return AgentState()

    def save(self, state: AgentState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state.model_dump(mode="json"), indent=1, sort_keys=True).encode()
        write_atomic(self.path, data + b"\n")

    def _backup_name(self) -> Path:
        n = 0
        while True:
            candidate = self.path.with_name(f"{STATE_FILE}.corrupt-{n}")
            if not candidate.exists():
                return candidate
            n += 1
