"""``/rollouts``: send a release to a tag selection in gated waves, and steer it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlmodel import col, select

from fleet_server.deps import RolloutsDep, SessionDep
from fleet_server.errors import NotFoundError
from fleet_server.rollout_models import (
    GateDecisionPublic,
    Rollout,
    RolloutCreate,
    RolloutDetail,
    RolloutDevicePublic,
    RolloutPublic,
)
from fleet_server.rollouts import gate_decisions, rollout_devices, wave_plan

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


def _detail(session: SessionDep, rollout: Rollout) -> RolloutDetail:
    assert rollout.id is not None
    gates = gate_decisions(session, rollout.id)
    waves = wave_plan(rollout, gates)
    return RolloutDetail.model_validate(
        rollout,
        update={
            "wave_plan": waves,
            "devices": [
                RolloutDevicePublic.model_validate(r) for r in rollout_devices(session, rollout.id)
            ],
            "gates": [GateDecisionPublic.model_validate(g) for g in gates],
        },
    )


def _get(session: SessionDep, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id} does not exist")
    return rollout


@router.post("", response_model=RolloutDetail, status_code=status.HTTP_201_CREATED)
def create_rollout(body: RolloutCreate, session: SessionDep, rollouts: RolloutsDep) -> Any:
    """Freeze the selection, plan the waves and start; wave 0 is issued on the next tick.

    404: unknown release. 422: a selector that matches no device, bad waves (the last
    wave must cover the selection; it is not extended), thresholds out of range.
    409: a device already in another active rollout.
    """
    rollout = rollouts.create(body)
    assert rollout.id is not None
    return _detail(session, _get(session, rollout.id))


@router.get("", response_model=list[RolloutPublic])
def list_rollouts(session: SessionDep, status: str | None = None) -> Any:
    query = select(Rollout)
    if status is not None:
        query = query.where(Rollout.status == status)
    return session.exec(query.order_by(col(Rollout.id).desc())).all()


@router.get("/{rollout_id}", response_model=RolloutDetail)
def get_rollout(rollout_id: int, session: SessionDep) -> Any:
    """The rollout with its waves, per-device status and every gate decision."""
    return _detail(session, _get(session, rollout_id))


@router.post("/{rollout_id}/pause", response_model=RolloutDetail)
def pause_rollout(rollout_id: int, session: SessionDep, rollouts: RolloutsDep) -> Any:
    """No new wave is issued; the current wave's gate is still judged and recorded."""
    rollouts.pause(rollout_id)
    return _detail(session, _get(session, rollout_id))


@router.post("/{rollout_id}/resume", response_model=RolloutDetail)
def resume_rollout(rollout_id: int, session: SessionDep, rollouts: RolloutsDep) -> Any:
    rollouts.resume(rollout_id)
    return _detail(session, _get(session, rollout_id))


@router.post("/{rollout_id}/abort", response_model=RolloutDetail)
def abort_rollout(rollout_id: int, session: SessionDep, rollouts: RolloutsDep) -> Any:
    """Stop for good; devices keep what they have (no rollback)."""
    rollouts.abort(rollout_id)
    return _detail(session, _get(session, rollout_id))


@router.post("/{rollout_id}/rollback", response_model=RolloutDetail)
def rollback_rollout(rollout_id: int, session: SessionDep, rollouts: RolloutsDep) -> Any:
    """Send every device that got the release back to its previous release (new sequence)."""
    rollouts.rollback(rollout_id)
    return _detail(session, _get(session, rollout_id))
