"""Operator commands to one device (DESIGN §3 ``d/{id}/cmd``): rollback, restart-runtime, resync.

:meth:`Commands.publish_command` stores a row with the device's next command sequence
(``max + 1``, unique per device: a concurrent replica that picks the same number loses on
the constraint and retries), signs the :class:`~jetfleet.messages.Command` with the
director when trust is configured, and publishes it on ``d/{id}/cmd``, QoS 1, not
retained: a command is an action now, not a state a reconnecting agent should replay.
The agent refuses a command whose sequence is not above the last one it ran.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy import JSON, UniqueConstraint, func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.models import Device
from jetfleet import topics
from jetfleet.messages import Command

logger = logging.getLogger(__name__)

CommandName = Literal["rollback", "restart-runtime", "resync"]
MAX_ARGS_BYTES = 4096
PUBLISH_ACK_WAIT = 2.0
SEQUENCE_RETRIES = 5

Publish = Callable[[str, bytes], Any]  # (topic, payload) → paho's MQTTMessageInfo
Sign = Callable[[Command], Command]


class CommandCreate(SQLModel):
    command: CommandName
    args: dict[str, Any] = Field(default_factory=dict)


class DeviceCommand(SQLModel, table=True):
    __tablename__ = "device_commands"
    __table_args__ = (
        UniqueConstraint("device_id", "sequence", name="uq_device_commands_device_sequence"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="devices.id", max_length=63)
    sequence: int
    command: str = Field(max_length=32)
    args: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    issued_at: float
    keyid: str | None = Field(default=None, max_length=64)  # None: sent unsigned
    payload: str  # the exact bytes published


class DeviceCommandPublic(SQLModel):
    id: int
    device_id: str
    sequence: int
    command: str
    args: dict[str, Any]
    issued_at: float
    keyid: str | None


class Commands:
    """Issues commands; ``publish`` and ``sign`` are the gateway's client and the director."""

    def __init__(
        self,
        engine: Engine,
        publish: Publish,
        sign: Sign | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.publish = publish
        self.sign = sign
        self.clock = clock
        self._lock = threading.Lock()  # one sequence at a time in this process

    def publish_command(
        self, device_id: str, command: CommandName, args: dict[str, Any] | None = None
    ) -> DeviceCommand:
        """Store, sign and publish ``command`` for ``device_id``; the stored row."""
        args = dict(args or {})
        if len(json.dumps(args)) > MAX_ARGS_BYTES:
            raise InvalidInputError(f"command args exceed {MAX_ARGS_BYTES} bytes of JSON")
        with self._lock:
            row = self._store(device_id, command, args)
        info = self.publish(topics.cmd(device_id), row.payload.encode("utf-8"))
        try:
            info.wait_for_publish(PUBLISH_ACK_WAIT)
        except (RuntimeError, ValueError):  # not connected: paho keeps it queued
            logger.warning("command %s to %s queued: broker not connected", command, device_id)
        logger.info("command %s (sequence %d) sent to %s", command, row.sequence, device_id)
        return row

    def _store(self, device_id: str, command: CommandName, args: dict[str, Any]) -> DeviceCommand:
        for _ in range(SEQUENCE_RETRIES):
            with Session(self.engine, expire_on_commit=False) as session:
                if session.get(Device, device_id) is None:
                    raise NotFoundError(f"device {device_id!r} does not exist")
                last = session.exec(
                    select(func.max(col(DeviceCommand.sequence))).where(
                        DeviceCommand.device_id == device_id
                    )
                ).one()
                message = Command(
                    device_id=device_id,
                    command=command,
                    sequence=(last or 0) + 1,
                    issued_at=self.clock(),
                    args=args,
                )
                if self.sign is not None:
                    message = self.sign(message)
                row = DeviceCommand(
                    device_id=device_id,
                    sequence=message.sequence,
                    command=command,
                    args=args,
                    issued_at=message.issued_at,
                    keyid=message.keyid,
                    payload=message.to_bytes().decode("utf-8"),
                )
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:  # another replica took this sequence
                    session.rollback()
                    continue
                return row
        raise ConflictError(f"could not allocate a command sequence for {device_id!r}; retry")


def recent_commands(session: Session, device_id: str, limit: int = 100) -> list[DeviceCommand]:
    """The device's commands, newest (highest sequence) first."""
    return list(
        session.exec(
            select(DeviceCommand)
            .where(DeviceCommand.device_id == device_id)
            .order_by(col(DeviceCommand.sequence).desc())
            .limit(limit)
        ).all()
    )
