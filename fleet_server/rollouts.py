"""Rollouts: create them, and :class:`RolloutController`, which moves them wave by wave.

All state is in the database (``rollout_models.py``); the controller keeps none, so a
server restart resumes every running rollout from its stored wave without re-issuing
finished waves. Per tick, for each running (or paused) rollout:

1. mirror each rollout device's assignment status;
2. if the current wave is not issued yet (and the rollout is not paused): issue it —
   one new assignment per device through :func:`issue_assignments`, the rows recording the
   wave and each device's previous release committed in the same transaction — and
   publish the retained desired messages;
3. otherwise judge the wave (:func:`fleet_server.gates.evaluate_gate`): a pass is stored
   and the rollout advances (completed after the last wave; a paused rollout records the
   pass but issues nothing); a fail is stored, the rollout halts and, with
   ``auto_rollback``, every device that got the release is sent back to its previous one.

Operator actions (pause, resume, abort, rollback) take the controller's lock, so they
never interleave with a tick. Replicas: each runs a controller, but only the one holding
the ``rollout-controller`` lease (``fleet_server/lease.py``, passed in as ``leader``)
ticks; another takes over from the stored state once the holder's lease expires.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from fleet_server.assignments import issue_assignments, latest_assignment
from fleet_server.errors import ConflictError, FleetServerError, InvalidInputError, NotFoundError
from fleet_server.gates import evaluate_gate
from fleet_server.models import Assignment, Device, Package, Release
from fleet_server.rollout_models import (
    ACTIVE_STATUSES,
    GateDecision,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    WavePublic,
    format_selector,
)
from fleet_server.waves import parse_waves, plan_waves
from fleet_server.worker import Periodic

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class DesiredPublisher(Protocol):
    def publish_desired(self, assignments: Sequence[Assignment]) -> None: ...


def wave_devices(rollout: Rollout, wave: int) -> list[str]:
    start = rollout.plan[wave - 1] if wave > 0 else 0
    return list(rollout.targets[start : rollout.plan[wave]])


def gate_decisions(session: Session, rollout_id: int) -> list[GateDecision]:
    """Every gate decision of a rollout, oldest first."""
    return list(
        session.exec(
            select(GateDecision)
            .where(GateDecision.rollout_id == rollout_id)
            .order_by(col(GateDecision.id))
        ).all()
    )


def wave_plan(rollout: Rollout, gates: Sequence[GateDecision]) -> list[WavePublic]:
    """Each wave with its devices and state: pending, issued, passed or failed."""
    verdicts = {g.wave: g.passed for g in gates}
    waves = []
    for index, target in enumerate(rollout.plan):
        if index in verdicts:
            state = "passed" if verdicts[index] else "failed"
        else:
            state = "issued" if index <= rollout.issued_wave else "pending"
        waves.append(
            WavePublic(
                index=index, target=target, devices=wave_devices(rollout, index), state=state
            )
        )
    return waves


def select_devices(session: Session, selector: dict[str, str]) -> list[str]:
    """Ids (sorted) of the devices whose tags match every ``k=v`` of ``selector``."""
    devices = session.exec(select(Device).order_by(col(Device.id))).all()
    return [d.id for d in devices if all(d.tags.get(k) == v for k, v in selector.items())]


def rollout_devices(session: Session, rollout_id: int) -> list[RolloutDevice]:
    return list(
        session.exec(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(col(RolloutDevice.wave), col(RolloutDevice.device_id))
        ).all()
    )


def create_rollout(session: Session, body: RolloutCreate, now: float) -> Rollout:
    """Validate ``body`` against the fleet, freeze the selection and plan, and store it."""
    release = session.exec(select(Release).where(Release.name == body.release)).first()
    if release is None:
        raise NotFoundError(f"release {body.release!r} does not exist")
    if session.get(Package, release.package_sha256) is None:
        raise NotFoundError(f"package of release {body.release!r} is gone")
    assert isinstance(body.selector, dict)  # normalized by the validator
    targets = select_devices(session, body.selector)
    if not targets:
        raise InvalidInputError(f"selector {format_selector(body.selector)} matches no device")
    plan = plan_waves(parse_waves(body.waves), len(targets))
    for other in session.exec(
        select(Rollout).where(col(Rollout.status).in_(ACTIVE_STATUSES))
    ).all():
        overlap = sorted(set(other.targets) & set(targets))
        if overlap:
            raise ConflictError(
                f"rollout {other.id} ({other.status}) already targets {', '.join(overlap[:5])}"
                f"{' ...' if len(overlap) > 5 else ''}; abort or finish it first"
            )
    rollout = Rollout.model_validate(
        body.model_dump(exclude={"waves", "selector"}),
        update={
            "release_sha256": release.package_sha256,
            "selector": body.selector,
            "waves": list(body.waves),
            "plan": plan,
            "targets": targets,
            "status": "running",
            "created_at": now,
            "updated_at": now,
        },
    )
    session.add(rollout)
    session.commit()
    session.refresh(rollout)
    return rollout


class RolloutController:
    """Drives every running rollout forward, one :meth:`tick` every ``interval`` seconds."""

    def __init__(
        self,
        engine: Engine,
        publisher: DesiredPublisher,
        assign_lock: threading.Lock,
        block_size: int,
        clock: Clock = time.time,
        interval: float = 2.0,
        leader: Callable[[], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.leader = leader  # None: the only controller (one server)
        self.publisher = publisher
        self.assign_lock = assign_lock
        self.block_size = block_size
        self.clock = clock
        self.interval = interval
        self._lock = threading.RLock()
        self._worker = Periodic(
            "rollouts", lambda: self.interval, self.tick, errors=(SQLAlchemyError, FleetServerError)
        )

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._worker.stop(timeout)

    def wake(self) -> None:
        """Tick now instead of at the next interval (after a create or resume)."""
        self._worker.wake()

    # -- one tick ---------------------------------------------------------------------
    def tick(self) -> None:
        """Advance every running or paused rollout by at most one step."""
        if not self._leading():
            return
        with self._lock, Session(self.engine) as session:
            ids = session.exec(
                select(Rollout.id).where(col(Rollout.status).in_(("running", "paused")))
            ).all()
            for rollout_id in ids:
                if not self._leading():
                    return
                rollout = session.get(Rollout, rollout_id)
                if rollout is None:
                    continue
                try:
                    self._step(session, rollout)
                except (SQLAlchemyError, FleetServerError) as exc:
                    session.rollback()
                    logger.warning("rollout %s: step failed: %s", rollout_id, exc)

    def _leading(self) -> bool:
        """False while another replica holds the rollout lease (checked before each step)."""
        return self.leader is None or self.leader()

    def _step(self, session: Session, rollout: Rollout) -> None:
        assert rollout.id is not None
        now = self.clock()
        rows = rollout_devices(session, rollout.id)
        self._mirror(session, rollout, rows, now)
        if rollout.issued_wave < rollout.current_wave:
            if rollout.status == "running":
                self._issue_wave(session, rollout, now)
            session.commit()
            return
        gate = evaluate_gate(session, rollout, rows, now)
        if gate.outcome == "ready" and rollout.wave_ready_at is None:
            rollout.wave_ready_at = now
            rollout.updated_at = now
            session.add(rollout)
        elif gate.outcome in ("pass", "fail"):
            session.add(
                GateDecision(
                    rollout_id=rollout.id,
                    wave=rollout.current_wave,
                    passed=gate.outcome == "pass",
                    reason=gate.reason,
                    numbers=gate.numbers,
                    evaluated_at=now,
                )
            )
            rollout.updated_at = now
            if gate.outcome == "pass":
                logger.info("rollout %s: wave %d passed", rollout.id, rollout.current_wave)
                rollout.current_wave += 1
                rollout.wave_ready_at = None
                if rollout.current_wave >= len(rollout.plan):
                    rollout.status, rollout.reason = "completed", "every wave passed"
            else:
                logger.warning("rollout %s halted: %s", rollout.id, gate.reason)
                rollout.status = "halted"
                rollout.reason = f"wave {rollout.current_wave} gate failed: {gate.reason}"
            session.add(rollout)
            session.commit()
            if gate.outcome == "fail" and rollout.auto_rollback:
                self._rollback(session, rollout, rows, now)
        session.commit()

    def _mirror(
        self, session: Session, rollout: Rollout, rows: Sequence[RolloutDevice], now: float
    ) -> None:
        for row in rows:
            if row.sequence is None and row.status == "issued":
                # Issued, but the process stopped before the sequence was recorded.
                latest = latest_assignment(session, row.device_id)
                if latest is not None and latest.release == rollout.release:
                    row.sequence = latest.sequence
            if row.sequence is None:
                continue
            assignment = session.exec(
                select(Assignment).where(
                    Assignment.device_id == row.device_id, Assignment.sequence == row.sequence
                )
            ).first()
            if assignment is not None and assignment.status != row.status:
                row.status, row.updated_at = assignment.status, now
                session.add(row)

    def _issue_wave(self, session: Session, rollout: Rollout, now: float) -> None:
        assert rollout.id is not None
        wave = rollout.current_wave
        already = {r.device_id for r in rollout_devices(session, rollout.id)}
        wanted = [d for d in wave_devices(rollout, wave) if d not in already]
        devices = {
            d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(wanted))).all()
        }
        to_issue: list[str] = []
        rows: dict[str, RolloutDevice] = {}
        for device_id in wanted:
            device = devices.get(device_id)
            if device is None:
                logger.warning("rollout %s: device %s is gone; skipped", rollout.id, device_id)
                continue
            on_it = device.active_sha256 == rollout.release_sha256
            rows[device_id] = RolloutDevice(
                rollout_id=rollout.id,
                device_id=device_id,
                wave=wave,
                previous_release=None if on_it else device.active_release,
                previous_sha256=None if on_it else device.active_sha256,
                status="committed" if on_it else "issued",  # already runs the release
                issued_at=now,
                updated_at=now,
            )
            session.add(rows[device_id])
            if not on_it:
                to_issue.append(device_id)
        rollout.issued_wave, rollout.wave_issued_at, rollout.wave_ready_at = wave, now, None
        rollout.updated_at = now
        session.add(rollout)
        with self.assign_lock:
            # issue_assignments commits the rows and the rollout with the assignments.
            issued = (
                issue_assignments(session, rollout.release, to_issue, self.block_size, now)
                if to_issue
                else []
            )
            if not to_issue:
                session.commit()
            for assignment in issued:
                rows[assignment.device_id].sequence = assignment.sequence
                session.add(rows[assignment.device_id])
            session.commit()
            self.publisher.publish_desired(issued)
        logger.info("rollout %s: wave %d issued to %d device(s)", rollout.id, wave, len(to_issue))

    def _rollback(
        self, session: Session, rollout: Rollout, rows: Sequence[RolloutDevice], now: float
    ) -> int:
        """Send every updated device back to its previous release; return how many."""
        groups: dict[str, list[RolloutDevice]] = {}
        for row in rows:
            if (
                row.sequence is not None
                and row.rollback_sequence is None
                and row.previous_release is not None
                and row.previous_release != rollout.release
            ):
                groups.setdefault(row.previous_release, []).append(row)
        sent = 0
        for previous, group in sorted(groups.items()):
            with self.assign_lock:
                try:
                    issued = issue_assignments(
                        session, previous, [r.device_id for r in group], self.block_size, now
                    )
                except NotFoundError as exc:
                    session.rollback()
                    logger.warning(
                        "rollout %s: cannot roll back to %s: %s", rollout.id, previous, exc
                    )
                    continue
                by_device = {a.device_id: a.sequence for a in issued}
                for row in group:
                    row.rollback_sequence, row.updated_at = by_device[row.device_id], now
                    session.add(row)
                session.commit()
                self.publisher.publish_desired(issued)
            sent += len(issued)
        logger.info(
            "rollout %s: %d device(s) sent back to their previous release", rollout.id, sent
        )
        return sent

    # -- operator actions -------------------------------------------------------------
    def create(self, body: RolloutCreate) -> Rollout:
        with self._lock, Session(self.engine) as session:
            rollout = create_rollout(session, body, self.clock())
        self.wake()
        return rollout

    def _transition(
        self, rollout_id: int, allowed: Sequence[str], status: str, reason: str
    ) -> Rollout:
        with self._lock, Session(self.engine) as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None:
                raise NotFoundError(f"rollout {rollout_id} does not exist")
            if rollout.status not in allowed:
                raise ConflictError(
                    f"rollout {rollout_id} is {rollout.status}; cannot {reason} "
                    f"(only when {' or '.join(allowed)})"
                )
            now = self.clock()
            if status == "rolled_back":
                self._rollback(session, rollout, rollout_devices(session, rollout_id), now)
            rollout.status, rollout.reason, rollout.updated_at = (
                status,
                f"{reason} by operator",
                now,
            )
            session.add(rollout)
            session.commit()
            session.refresh(rollout)
        self.wake()
        return rollout

    def pause(self, rollout_id: int) -> Rollout:
        return self._transition(rollout_id, ("pending", "running"), "paused", "pause")

    def resume(self, rollout_id: int) -> Rollout:
        return self._transition(rollout_id, ("paused",), "running", "resume")

    def abort(self, rollout_id: int) -> Rollout:
        return self._transition(rollout_id, ACTIVE_STATUSES, "aborted", "abort")

    def rollback(self, rollout_id: int) -> Rollout:
        allowed = ("pending", "running", "paused", "halted", "aborted", "completed")
        return self._transition(rollout_id, allowed, "rolled_back", "roll back")
