"""Telemetry retention (DESIGN §8): raw samples for a window, 5-minute rollups beyond it.

:meth:`Retention.run_once` rolls raw rows older than ``raw_retention_s`` into
``telemetry_rollup`` buckets of :data:`BUCKET_S` seconds and deletes those raw rows in the
same transaction, one slice of :data:`SLICE_S` at a time; then it deletes rollups older
than ``rollup_retention_s``. Only fully elapsed buckets (ending at or before the raw
cutoff, rounded down to a bucket) are rolled up, so a bucket is never split between raw
and rolled-up rows. Running it again changes nothing: the rows it rolled up are gone.
A raw sample that arrives late for an already rolled-up bucket (an agent's offline
buffer) is merged into that bucket: sums add, the max is kept, and means are weighted
by sample count (a null mean on one side takes the other's).

Rollup columns keep the raw names where they map: ``cpu_pct``, ``mem_pct``,
``mem_used_mb``, ``gpu_load_pct``, ``gpu_temp_c``, ``gpu_power_mw`` and ``p95_ms`` are
means over the bucket (null when no sample had the value); ``inference_count`` and
``inference_errors`` are sums; ``release`` is the bucket's last sample's. Extra:
``samples`` (count), ``p95_ms_max``, ``bucket_s``, and ``ts`` (the bucket start) in the API.

One replica runs it: the :class:`Retention` thread acts only while ``leader()`` says this
replica holds the ``telemetry-retention`` lease (``fleet_server/lease.py``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, UniqueConstraint, delete, func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, select

from fleet_server.ingest import TELEMETRY_TABLE
from fleet_server.models import Telemetry
from fleet_server.worker import Periodic

logger = logging.getLogger(__name__)

BUCKET_S = 300
SLICE_S = 900  # raw rows rolled up (and deleted) per transaction, all devices
DELETE_CHUNK = 500
MEAN_FIELDS = (
    "cpu_pct",
    "mem_pct",
    "mem_used_mb",
    "gpu_load_pct",
    "gpu_temp_c",
    "gpu_power_mw",
    "p95_ms",
)


class TelemetryRollupBase(SQLModel):
    device_id: str = Field(foreign_key="devices.id", max_length=63)
    bucket_s: int = BUCKET_S
    samples: int = 0
    inference_count: int = Field(default=0, sa_type=BigInteger)
    inference_errors: int = Field(default=0, sa_type=BigInteger)
    p95_ms: float | None = None  # mean
    p95_ms_max: float | None = None
    cpu_pct: float | None = None
    mem_pct: float | None = None
    mem_used_mb: float | None = None
    gpu_load_pct: float | None = None
    gpu_temp_c: float | None = None
    gpu_power_mw: float | None = None
    release: str | None = None


class TelemetryRollup(TelemetryRollupBase, table=True):
    __tablename__ = "telemetry_rollup"
    # The constraint's index is the (device_id, bucket_start) index the API reads by.
    __table_args__ = (
        UniqueConstraint("device_id", "bucket_start", name="uq_telemetry_rollup_device_bucket"),
    )

    id: int | None = Field(default=None, primary_key=True)
    bucket_start: float
    last_ts: float = 0.0  # the newest sample's ts: whose release the bucket reports


class TelemetryRollupPublic(TelemetryRollupBase):
    ts: float  # bucket start


def to_public(row: TelemetryRollup) -> TelemetryRollupPublic:
    return TelemetryRollupPublic.model_validate({**row.model_dump(), "ts": row.bucket_start})


@dataclass
class _Bucket:
    samples: int = 0
    inference_count: int = 0
    inference_errors: int = 0
    p95_max: float | None = None
    sums: dict[str, list[float]] = field(default_factory=dict)  # name → [sum, n]
    last_ts: float = -math.inf
    release: str | None = None

    def add(self, row: Any) -> None:
        self.samples += 1
        self.inference_count += row.inference_count or 0
        self.inference_errors += row.inference_errors or 0
        if row.p95_ms is not None:
            self.p95_max = row.p95_ms if self.p95_max is None else max(self.p95_max, row.p95_ms)
        for name in MEAN_FIELDS:
            value = getattr(row, name)
            if value is not None:
                acc = self.sums.setdefault(name, [0.0, 0])
                acc[0] += value
                acc[1] += 1
        if row.ts >= self.last_ts:
            self.last_ts, self.release = row.ts, row.release

    def mean(self, name: str) -> float | None:
        acc = self.sums.get(name)
        return acc[0] / acc[1] if acc else None


def _merge_mean(old: float | None, n_old: int, new: float | None, n_new: int) -> float | None:
    if old is None or new is None:
        return new if old is None else old
    return (old * n_old + new * n_new) / (n_old + n_new)


def _apply(rollup: TelemetryRollup, bucket: _Bucket) -> None:
    n_old = rollup.samples
    for name in MEAN_FIELDS:
        setattr(
            rollup,
            name,
            _merge_mean(getattr(rollup, name), n_old, bucket.mean(name), bucket.samples),
        )
    rollup.samples = n_old + bucket.samples
    rollup.inference_count += bucket.inference_count
    rollup.inference_errors += bucket.inference_errors
    if bucket.p95_max is not None:
        rollup.p95_ms_max = (
            bucket.p95_max if rollup.p95_ms_max is None else max(rollup.p95_ms_max, bucket.p95_max)
        )
    if bucket.last_ts >= rollup.last_ts:
        rollup.last_ts, rollup.release = bucket.last_ts, bucket.release


@dataclass(frozen=True)
class RetentionResult:
    rolled_up: int  # raw rows rolled up and deleted
    buckets: int  # rollup rows written (new or merged)
    expired_rollups: int


def rollup_cutoff(now: float, raw_retention_s: float) -> float:
    """Raw rows before this (a bucket boundary) belong to fully elapsed, rollable buckets."""
    return math.floor((now - raw_retention_s) / BUCKET_S) * BUCKET_S


class Retention:
    """The periodic job. ``leader`` answers whether this replica may run it now."""

    def __init__(
        self,
        engine: Engine,
        raw_retention_s: float,
        rollup_retention_s: float,
        interval: float = 600.0,
        clock: Callable[[], float] = time.time,
        leader: Callable[[], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.raw_retention_s = raw_retention_s
        self.rollup_retention_s = rollup_retention_s
        self.interval = interval
        self.clock = clock
        self.leader = leader
        self._worker = Periodic(
            "retention",
            lambda: self.interval,
            self._step,
            errors=(SQLAlchemyError,),
            run_first=False,
        )

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._worker.stop(timeout)

    def _step(self) -> None:
        result = self.run_once()
        if result.rolled_up or result.expired_rollups:
            logger.info("telemetry retention: %s", result)

    def _leading(self) -> bool:
        return self.leader is None or self.leader()

    def run_once(self) -> RetentionResult:
        """Roll up and delete what is past the raw window; expire old rollups."""
        now = self.clock()
        cutoff = rollup_cutoff(now, self.raw_retention_s)
        rolled = buckets = 0
        while not self._worker.stopping and self._leading():
            with Session(self.engine) as session:
                oldest = session.exec(
                    select(func.min(col(Telemetry.ts))).where(col(Telemetry.ts) < cutoff)
                ).one()
                if oldest is None:
                    break
                start = math.floor(oldest / BUCKET_S) * BUCKET_S
                end = min(cutoff, start + SLICE_S)
                n_rows, n_buckets = _roll_slice(session, end)
                session.commit()
            rolled += n_rows
            buckets += n_buckets
        expired = 0
        if self._leading():
            with Session(self.engine) as session:
                horizon = now - self.rollup_retention_s
                result = session.exec(
                    delete(TelemetryRollup).where(
                        col(TelemetryRollup.bucket_start) + col(TelemetryRollup.bucket_s) <= horizon
                    )
                )
                expired = result.rowcount or 0
                session.commit()
        return RetentionResult(rolled, buckets, expired)


def _roll_slice(session: Session, end: float) -> tuple[int, int]:
    """Roll every raw row with ``ts < end`` into buckets and delete it (caller commits)."""
    names = (
        "id",
        "device_id",
        "ts",
        "inference_count",
        "inference_errors",
        "release",
        *MEAN_FIELDS,
    )
    table = TELEMETRY_TABLE
    rows = (
        session.connection()
        .execute(sa_select(*(table.c[name] for name in names)).where(table.c.ts < end))
        .all()
    )
    grouped: dict[tuple[str, float], _Bucket] = {}
    for row in rows:
        key = (row.device_id, math.floor(row.ts / BUCKET_S) * BUCKET_S)
        grouped.setdefault(key, _Bucket()).add(row)
    if not grouped:
        return 0, 0
    lo = min(start for _, start in grouped)
    existing = {
        (r.device_id, r.bucket_start): r
        for r in session.exec(
            select(TelemetryRollup).where(
                col(TelemetryRollup.bucket_start) >= lo, col(TelemetryRollup.bucket_start) < end
            )
        ).all()
    }
    for (device_id, start), bucket in grouped.items():
        rollup = existing.get((device_id, start))
        if rollup is None:
            rollup = TelemetryRollup(device_id=device_id, bucket_start=start, bucket_s=BUCKET_S)
        _apply(rollup, bucket)
        session.add(rollup)
    # By id, not by ts: a late row inserted meanwhile stays for the next run to roll up.
    ids = [row.id for row in rows]
    for i in range(0, len(ids), DELETE_CHUNK):
        session.exec(delete(Telemetry).where(col(Telemetry.id).in_(ids[i : i + DELETE_CHUNK])))
    return len(rows), len(grouped)
