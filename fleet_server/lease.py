"""Leases: one replica at a time performs a singleton duty (driving rollouts, retention).

A lease is one row (``name``, ``holder``, ``expires_at``). :func:`acquire` takes or
renews it with a single conditional ``UPDATE ... WHERE name = :name AND (holder = :me
OR expires_at < :now)``; the database serializes concurrent updates of one row on both
SQLite and PostgreSQL, so at most one replica sees ``rowcount == 1``. A missing row is
created with an ``INSERT`` whose primary-key conflict means someone else won the race.

Times are the replicas' wall clocks (injectable): replicas must keep their clocks within
a small fraction of the TTL of each other (NTP). A holder that dies keeps the lease until
``expires_at``; then the next replica to ask takes it over and continues from the
database state, which is all a duty may rely on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
ROLLOUT_LEASE = "rollout-controller"
RETENTION_LEASE = "telemetry-retention"


class Lease(SQLModel, table=True):
    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: float
    acquired_at: float


def acquire(engine: Engine, name: str, holder: str, ttl: float, now: float) -> bool:
    """Take or renew lease ``name`` for ``holder`` until ``now + ttl``; True if held."""
    with Session(engine) as session:
        result = session.exec(
            update(Lease)
            .where(
                col(Lease.name) == name,
                (col(Lease.holder) == holder) | (col(Lease.expires_at) < now),
            )
            .values(holder=holder, expires_at=now + ttl)
        )
        session.commit()
        if result.rowcount == 1:
            return True
        if session.get(Lease, name) is not None:
            return False  # held by someone else, not expired
        session.add(Lease(name=name, holder=holder, expires_at=now + ttl, acquired_at=now))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
        return True


def release(engine: Engine, name: str, holder: str) -> None:
    """Give the lease up now (clean shutdown), so another replica need not wait the TTL."""
    with Session(engine) as session:
        session.exec(
            update(Lease)
            .where(col(Lease.name) == name, col(Lease.holder) == holder)
            .values(expires_at=0.0)
        )
        session.commit()


def holder_of(engine: Engine, name: str, now: float) -> str | None:
    """The current (unexpired) holder of ``name``, or None."""
    with Session(engine) as session:
        lease = session.get(Lease, name)
    return lease.holder if lease is not None and lease.expires_at >= now else None


class LeaseKeeper:
    """Holds one lease for this replica: :meth:`held` renews it when a third of the TTL is
    gone and answers whether this replica may act. A duty calls it before each step."""

    def __init__(
        self, engine: Engine, name: str, holder: str, ttl: float, clock: Clock = time.time
    ) -> None:
        self.engine = engine
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        self._valid_until = 0.0
        self._renew_at = 0.0
        self._lock = threading.Lock()

    def held(self) -> bool:
        with self._lock:
            now = self.clock()
            if now < self._renew_at:
                return True
            try:
                ok = acquire(self.engine, self.name, self.holder, self.ttl, now)
            except SQLAlchemyError as exc:
                logger.warning("lease %s: cannot renew: %s", self.name, exc)
                return now < self._valid_until - self.ttl / 3
            was = self._valid_until > now
            if ok:
                self._valid_until = now + self.ttl
                self._renew_at = now + self.ttl / 3
                if not was:
                    logger.info("lease %s: acquired by %s", self.name, self.holder)
            else:
                self._valid_until = self._renew_at = 0.0
                if was:
                    logger.warning("lease %s: lost by %s", self.name, self.holder)
            return ok

    def release(self) -> None:
        with self._lock:
            if self._valid_until > self.clock():
                try:
                    release(self.engine, self.name, self.holder)
                except SQLAlchemyError as exc:
                    logger.warning("lease %s: cannot release: %s", self.name, exc)
            self._valid_until = self._renew_at = 0.0
