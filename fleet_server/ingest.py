"""Write validated device messages to the database, a batch per transaction.

:func:`write_batch` adds everything for a batch to one session and commits once.
It is idempotent for QoS 1 re-deliveries: events dedup on (device, event id),
telemetry samples on (device, seq, ts). Telemetry rows go in as one Core executemany
of plain dicts per batch, in the batch's transaction, that skips samples already stored
(``ON CONFLICT DO NOTHING`` on the ``uq_telemetry_device_seq_ts`` unique constraint).
Devices that only sent telemetry get their ``last_seen`` with one Core executemany
instead of being loaded as ORM objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlmodel import Session, col, select

from fleet_server.models import Assignment, Device, Event, Telemetry
from jetfleet.messages import EventMessage, StateMessage, TelemetryBatch

_LWT_FIELDS = {"v", "device_id", "online"}
TELEMETRY_TABLE = cast(Table, Telemetry.__table__)  # type: ignore[attr-defined]
DEVICE_TABLE = cast(Table, Device.__table__)  # type: ignore[attr-defined]
TELEMETRY_KEY = ("device_id", "seq", "ts")  # the columns of uq_telemetry_device_seq_ts

# Event type → assignment status, for events that carry the assignment's sequence.
EVENT_STATUS = {
    "ota.started": "downloading",
    "ota.progress": "downloading",
    "ota.resumed": "downloading",
    "ota.verified": "verified",
    "ota.failed": "failed",
    "activation.staged": "staged",
    "activation.testing": "testing",
    "activation.trial": "trial",
    "activation.committed": "committed",
    "activation.failed": "failed",
    "activation.reverted": "reverted",
    "security.rejected": "rejected",
}

# last_seen only moves forward: set where the stored value is NULL or older.
_TOUCH_LAST_SEEN = (
    update(DEVICE_TABLE)
    .where(
        DEVICE_TABLE.c.id == bindparam("b_id"),
        or_(DEVICE_TABLE.c.last_seen.is_(None), DEVICE_TABLE.c.last_seen < bindparam("b_seen")),
    )
    .values(last_seen=bindparam("b_seen"))
)


@dataclass(frozen=True)
class Ingested:
    """One validated message from a device, in arrival order."""

    kind: str  # "state" | "telemetry" | "events"
    device_id: str
    message: StateMessage | TelemetryBatch | EventMessage
    retained: bool
    received_at: float


def write_batch(session: Session, items: Sequence[Ingested]) -> None:
    """Apply ``items`` in order and commit once."""
    devices = _load_devices(session, items)
    seen = _stored_telemetry_keys(session, items)
    telemetry: list[dict[str, Any]] = []
    last_seen: dict[str, float] = {}  # stored devices that only sent telemetry
    for item in items:
        device = devices.get(item.device_id)
        if device is None:  # stored, and sent only telemetry without ``dropped``
            assert isinstance(item.message, TelemetryBatch)
            if not item.retained:
                last_seen[item.device_id] = max(
                    last_seen.get(item.device_id, 0.0), item.received_at
                )
            telemetry.extend(_telemetry_rows(item.device_id, item.message, seen))
            continue
        if not item.retained:
            device.last_seen = max(device.last_seen or 0.0, item.received_at)
        if isinstance(item.message, StateMessage):
            _apply_state(device, item.message, item)
        elif isinstance(item.message, TelemetryBatch):
            rows = _telemetry_rows(device.id, item.message, seen)
            if rows and item.message.dropped:  # a re-delivered batch adds nothing: counts nothing
                device.telemetry_dropped += item.message.dropped
            telemetry.extend(rows)
        else:
            _add_event(session, item.message, item.received_at)
        session.add(device)
    connection = session.connection()
    if last_seen:
        # Core executemany: loading these devices as ORM objects and flushing each one's
        # last_seen was a fifth of the ingest thread's time (bench/fleet.py profile).
        connection.execute(
            _TOUCH_LAST_SEEN, [{"b_id": k, "b_seen": v} for k, v in last_seen.items()]
        )
    if telemetry:
        # One Core executemany on the session's connection (same transaction): building an
        # ORM object per row was most of the ingest thread's time (bench/fleet.py profile).
        connection.execute(_insert_new_telemetry(connection), telemetry)
    session.commit()


def _insert_new_telemetry(connection: Connection) -> Insert:
    """INSERT into telemetry that skips rows whose (device, seq, ts) is already stored."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(TELEMETRY_TABLE).on_conflict_do_nothing(index_elements=TELEMETRY_KEY)
    if dialect == "postgresql":
        return postgresql.insert(TELEMETRY_TABLE).on_conflict_do_nothing(
            index_elements=TELEMETRY_KEY
        )
    return insert(TELEMETRY_TABLE)  # no skip: a repeated sample fails the batch's constraint


def _load_devices(session: Session, items: Sequence[Ingested]) -> dict[str, Device]:
    """ORM objects for the devices that ``items`` create or change beyond ``last_seen``.

    A stored device that sent only telemetry without ``dropped`` is left out: only its
    ``last_seen`` changes, which :func:`write_batch` sets with Core.
    """
    ids = {item.device_id for item in items}
    full = {
        item.device_id
        for item in items
        if not isinstance(item.message, TelemetryBatch) or item.message.dropped
    }
    devices: dict[str, Device] = {}
    if full:
        query = select(Device).where(col(Device.id).in_(sorted(full)))
        devices = {d.id: d for d in session.exec(query).all()}
    plain: set[str] = set()
    if ids - full:
        query_ids = select(Device.id).where(col(Device.id).in_(sorted(ids - full)))
        plain = set(session.exec(query_ids).all())
    created = False
    for item in items:
        if item.device_id not in devices and item.device_id not in plain:
            # Auto-registration: a device that speaks the protocol is known from then on.
            device = Device(id=item.device_id, registered_at=item.received_at)
            devices[device.id] = device
            session.add(device)
            created = True
    if created:
        session.flush()  # the rows below reference the new devices
    return devices


def _apply_state(device: Device, msg: StateMessage, item: Ingested) -> None:
    device.online = msg.online
    if item.retained and device.last_seen is None:
        device.last_seen = msg.ts or item.received_at
    if not msg.online and not msg.model_dump(exclude=_LWT_FIELDS, exclude_defaults=True):
        return  # the LWT: only the connection changed; keep what the device last reported
    device.agent_version = msg.agent_version
    device.active_release = msg.active_release
    device.active_sha256 = msg.active_sha256
    device.known_good_release = msg.known_good_release
    device.known_good_sha256 = msg.known_good_sha256
    device.serving = msg.serving
    device.backend = msg.backend
    device.assignment_sequence = msg.assignment_sequence
    device.slots = [slot.model_dump(mode="json", exclude_none=True) for slot in msg.slots]
    device.profile = msg.profile
    device.profile_details = dict(msg.profile_details)
    device.api_url = msg.api_url
    if msg.tags:  # reported tags are merged over the stored (operator) ones
        device.tags = {**device.tags, **msg.tags}


_KEY_QUERY_DEVICES = 300  # devices per dedup query: 3 bound parameters each


def _stored_telemetry_keys(
    session: Session, items: Sequence[Ingested]
) -> set[tuple[str, int, float]]:
    """(device, seq, ts) of stored samples that a telemetry item with ``dropped`` may repeat.

    Only those items need to know which of their samples are new (``dropped`` counts once,
    when the batch stores something); every other repeat is skipped by the insert's
    ``ON CONFLICT DO NOTHING``. One query per batch (per :data:`_KEY_QUERY_DEVICES`
    devices), before anything is added, so the session does not autoflush per message.
    """
    ranges: dict[str, tuple[int, int]] = {}
    for item in items:
        if isinstance(item.message, TelemetryBatch) and item.message.dropped:
            seqs = [s.seq for s in item.message.samples]
            lo, hi = ranges.get(item.device_id, (min(seqs), max(seqs)))
            ranges[item.device_id] = (min(lo, *seqs), max(hi, *seqs))
    keys: set[tuple[str, int, float]] = set()
    pending = sorted(ranges.items())
    for start in range(0, len(pending), _KEY_QUERY_DEVICES):
        chunk = pending[start : start + _KEY_QUERY_DEVICES]
        where = or_(
            *(
                and_(col(Telemetry.device_id) == device_id, col(Telemetry.seq).between(lo, hi))
                for device_id, (lo, hi) in chunk
            )
        )
        query = select(Telemetry.device_id, Telemetry.seq, Telemetry.ts).where(where)
        keys.update((d, s, t) for d, s, t in session.exec(query).all())
    return keys


def _telemetry_rows(
    device_id: str, batch: TelemetryBatch, seen: set[tuple[str, int, float]]
) -> list[dict[str, Any]]:
    """Column dicts of the batch's samples not in ``seen`` (stored keys loaded for this
    device, or earlier in the batch), for one executemany per batch."""
    rows: list[dict[str, Any]] = []
    for sample in batch.samples:
        key = (device_id, sample.seq, sample.ts)
        if key in seen:
            continue
        seen.add(key)
        sysm, gpu, inf = sample.system, sample.gpu, sample.inference
        rows.append(
            {
                "device_id": device_id,
                "ts": sample.ts,
                "seq": sample.seq,
                "cpu_pct": sysm.cpu_pct,
                "mem_used_mb": sysm.mem_used_mb,
                "mem_pct": sysm.mem_pct,
                "load1": sysm.load1,
                "agent_rss_mb": sysm.agent_rss_mb,
                "disk_pct": sysm.disk_pct,
                "gpu_source": gpu.source if gpu else None,
                "gpu_load_pct": gpu.load_pct if gpu else None,
                "gpu_temp_c": gpu.temp_c if gpu else None,
                "gpu_power_mw": gpu.power_mw if gpu else None,
                "gpu_mem_used_mb": gpu.mem_used_mb if gpu else None,
                "inference_count": inf.count,
                "inference_errors": inf.errors,
                "p50_ms": inf.p50_ms,
                "p95_ms": inf.p95_ms,
                "p99_ms": inf.p99_ms,
                "queue_depth": inf.queue_depth,
                "release": inf.release,
                "sha256": inf.sha256,
            }
        )
    return rows


def _add_event(session: Session, msg: EventMessage, received_at: float) -> None:
    exists = session.exec(
        select(Event.id).where(Event.device_id == msg.device_id, Event.event_id == msg.id)
    ).first()
    if exists is not None:
        return
    session.add(
        Event(
            event_id=msg.id,
            device_id=msg.device_id,
            ts=msg.ts,
            type=msg.type,
            release=msg.release,
            sha256=msg.sha256,
            sequence=msg.sequence,
            message=msg.message,
            data=dict(msg.data),
            received_at=received_at,
        )
    )
    status = EVENT_STATUS.get(msg.type)
    if status is None or msg.sequence is None:
        return
    assignment = session.exec(
        select(Assignment).where(
            Assignment.device_id == msg.device_id, Assignment.sequence == msg.sequence
        )
    ).first()
    if assignment is None or (msg.sha256 is not None and msg.sha256 != assignment.sha256):
        return
    if assignment.status == "superseded":
        return
    if assignment.status_at is None or msg.ts >= assignment.status_at:
        assignment.status, assignment.status_at = status, msg.ts
        session.add(assignment)
