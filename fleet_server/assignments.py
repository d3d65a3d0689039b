"""Desired assignments: issue them (per-device increasing sequence) and look them up."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from fleet_server.engines import engine_ref
from fleet_server.errors import NotFoundError
from fleet_server.models import Assignment, Device, Package, Release
from jetfleet.messages import DesiredAssignment
from jetfleet.package import PACKAGE_SUFFIX

# Statuses an assignment moves through, fed by the device's events (see ingest.py).
OPEN_STATUSES = ("issued", "downloading", "verified", "staged", "testing", "trial")


def target_path(sha256: str) -> str:
    return f"packages/{sha256}{PACKAGE_SUFFIX}"


def issue_assignments(
    session: Session, release_name: str, device_ids: Sequence[str], block_size: int, now: float
) -> list[Assignment]:
    """Store one new assignment per device (sequence = previous + 1) and commit.

    All-or-nothing: an unknown release or any unknown device id raises
    :class:`NotFoundError` before anything is written. The caller publishes the result.
    """
    release = session.exec(select(Release).where(Release.name == release_name)).first()
    if release is None:
        raise NotFoundError(f"release {release_name!r} does not exist")
    package = session.get(Package, release.package_sha256)
    if package is None:  # prevented by the foreign key; kept for a clear message
        raise NotFoundError(f"package {release.package_sha256} of release {release_name!r} is gone")
    devices = {
        d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(device_ids))).all()
    }
    missing = [d for d in device_ids if d not in devices]
    if missing:
        raise NotFoundError(f"unknown device ids: {', '.join(missing)}")
    issued: list[Assignment] = []
    for device_id in device_ids:
        device = devices[device_id]
        sequence = device.desired_sequence + 1
        device.desired_sequence = sequence
        message = DesiredAssignment(
            device_id=device_id,
            release=release.name,
            target=target_path(package.sha256),
            sha256=package.sha256,
            length=package.length,
            block_size=block_size,
            sequence=sequence,
            issued_at=now,
            engine=engine_ref(session, device, package.sha256),  # for its reported profile
        )
        for old in session.exec(
            select(Assignment).where(
                Assignment.device_id == device_id, col(Assignment.status).in_(OPEN_STATUSES)
            )
        ).all():
            old.status, old.status_at = "superseded", now
            session.add(old)
        assignment = Assignment(
            device_id=device_id,
            release=release.name,
            sha256=package.sha256,
            length=package.length,
            block_size=block_size,
            sequence=sequence,
            issued_at=now,
            status="issued",
            status_at=None,  # set from the device's event times (its clock) from here on
            payload=message.to_bytes().decode("utf-8"),
        )
        session.add(device)
        session.add(assignment)
        issued.append(assignment)
    session.commit()
    for assignment in issued:
        session.refresh(assignment)
    return issued


def latest_assignment(session: Session, device_id: str) -> Assignment | None:
    """The device's current assignment (highest sequence), or None."""
    found: Assignment | None = session.exec(
        select(Assignment)
        .where(Assignment.device_id == device_id)
        .order_by(col(Assignment.sequence).desc())
        .limit(1)
    ).first()
    return found


def current_payloads(session: Session) -> dict[str, str]:
    """device id → the payload of its current assignment, for every assigned device."""
    rows = session.exec(
        select(Assignment.device_id, Assignment.payload).join(
            Device,
            (col(Device.id) == col(Assignment.device_id))
            & (col(Device.desired_sequence) == col(Assignment.sequence)),
        )
    ).all()
    return dict(rows)
