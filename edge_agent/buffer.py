"""Store-and-forward: telemetry samples and events wait in a small SQLite file
(``{state_dir}/outbox.db``, stdlib only) until the broker acknowledged them.

* :class:`Buffer` — per-kind FIFO, bounded: the oldest rows are dropped and counted;
  the drop count is persisted and reported in ``TelemetryBatch.dropped``.
* :class:`Forwarder` — publishes batches in order and deletes them only after their
  PUBACK (``MQTTMessageInfo.is_published()``); unacknowledged batches are re-sent
  after a timeout, so delivery is at-least-once (samples carry ``seq``, events ``id``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.errors import StateError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_kind ON items (kind, id);
CREATE TABLE IF NOT EXISTS dropped (kind TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


class Buffer:
    """A bounded, persistent FIFO per kind. Thread-safe."""

    def __init__(self, path: Path, limits: dict[str, int]) -> None:
        self.path = Path(path)
        self.limits = dict(limits)
        self._lock = threading.Lock()
        self._db = self._open()
        self._counts = {
            kind: int(n)
            for kind, n in self._db.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind")
        }

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            backup = self.path.with_name(self.path.name + ".corrupt")
            logger.error("outbox %s is unreadable (%s); moved to %s", self.path, exc, backup.name)
            os.replace(self.path, backup)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute("SELECT COUNT(*) FROM items").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def append(self, kind: str, payload: bytes) -> int:
        """Add one item; return how many old items were dropped to stay in bounds."""
        limit = self.limits.get(kind, 10_000)
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.execute("INSERT INTO items (kind, payload) VALUES (?, ?)", (kind, payload))
                count = self._counts.get(kind, 0) + 1
                excess = count - limit
                if excess > 0:
                    self._db.execute(
                        "DELETE FROM items WHERE id IN "
                        "(SELECT id FROM items WHERE kind = ? ORDER BY id LIMIT ?)",
                        (kind, excess),
                    )
                    self._db.execute(
                        "INSERT INTO dropped (kind, n) VALUES (?, ?) "
                        "ON CONFLICT(kind) DO UPDATE SET n = n + excluded.n",
                        (kind, excess),
                    )
                    count = limit
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StateError(f"outbox write failed: {exc}") from exc
            self._counts[kind] = count
        return max(0, excess)

    def peek(self, kind: str, limit: int, after_id: int = 0) -> list[tuple[int, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload FROM items WHERE kind = ? AND id > ? ORDER BY id LIMIT ?",
                (kind, after_id, limit),
            ).fetchall()
        return [(int(i), bytes(p)) for i, p in rows]

    def ack(self, kind: str, ids: list[int], dropped_reported: int = 0) -> None:
        """Delete delivered items and forget the drops their batch reported."""
        with self._lock:
            self._db.execute("BEGIN")
            removed = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                cur = self._db.execute(
                    f"DELETE FROM items WHERE kind = ? AND id IN ({marks})",  # noqa: S608
                    (kind, *chunk),
                )
                removed += cur.rowcount
            if dropped_reported:
                self._db.execute(
                    "UPDATE dropped SET n = MAX(0, n - ?) WHERE kind = ?", (dropped_reported, kind)
                )
            self._db.execute("COMMIT")
            self._counts[kind] = max(0, self._counts.get(kind, 0) - removed)

    def next_seq(self, name: str) -> int:
        """A persistent counter (0, 1, 2, ...) that survives restarts, e.g. telemetry ``seq``."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO counters (name, n) VALUES (?, 0) "
                "ON CONFLICT(name) DO UPDATE SET n = n + 1",
                (name,),
            )
            row = self._db.execute("SELECT n FROM counters WHERE name = ?", (name,)).fetchone()
            self._db.execute("COMMIT")
        return int(row[0])

    def pending(self, kind: str) -> int:
        with self._lock:
            return self._counts.get(kind, 0)

    def dropped(self, kind: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT n FROM dropped WHERE kind = ?", (kind,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PublishInfo(Protocol):
    """What paho's ``MQTTMessageInfo`` offers (and what tests can fake)."""

    def is_published(self) -> bool: ...


@dataclass
class _InFlight:
    ids: list[int]
    info: PublishInfo
    dropped: int
    sent_at: float


def _published(info: PublishInfo) -> bool | None:
    """``is_published()``, or ``None`` when paho says the publish failed for good."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # paho: rc was NO_CONN / queue full
        return None


class Forwarder:
    """Moves one kind from the :class:`Buffer` to MQTT, in order, delete-on-PUBACK.

    ``build(payloads, dropped)`` turns buffered rows into one message payload (``None``:
    nothing valid in them, they are discarded);
    ``publish(payload)`` sends it and returns its publish info (raises when it cannot).
    """

    def __init__(
        self,
        buffer: Buffer,
        kind: str,
        build: Callable[[list[bytes], int], bytes | None],
        publish: Callable[[bytes], PublishInfo],
        *,
        batch: int = 500,
        max_inflight: int = 8,
        resend_after_s: float = 15.0,
    ) -> None:
        self.buffer = buffer
        self.kind = kind
        self._build = build
        self._publish = publish
        self.batch = batch
        self.max_inflight = max_inflight
        self.resend_after_s = resend_after_s
        self._inflight: deque[_InFlight] = deque()
        self.delivered = 0
        self.resent = 0

    def step(self, connected: bool, now: float) -> None:
        while self._inflight:
            published = _published(self._inflight[0].info)
            if published is None:  # paho will never confirm it (sent while disconnected)
                self.resent += self.inflight
                self._inflight.clear()
                break
            if not published:
                break
            done = self._inflight.popleft()
            self.buffer.ack(self.kind, done.ids, done.dropped)
            self.delivered += len(done.ids)
        if self._inflight and now - self._inflight[0].sent_at > self.resend_after_s:
            if not connected:
                return
            logger.info("%s: no PUBACK after %.0fs; sending again", self.kind, self.resend_after_s)
            self.resent += sum(len(f.ids) for f in self._inflight)
            self._inflight.clear()
        if not connected:
            return
        while len(self._inflight) < self.max_inflight:
            after = self._inflight[-1].ids[-1] if self._inflight else 0
            rows = self.buffer.peek(self.kind, self.batch, after_id=after)
            if not rows:
                return
            dropped = self.buffer.dropped(self.kind) if not self._inflight else 0
            payload = self._build([p for _, p in rows], dropped)
            if payload is None:
                if not self._inflight:
                    self.buffer.ack(self.kind, [i for i, _ in rows])
                return
            info = self._publish(payload)
            self._inflight.append(_InFlight([i for i, _ in rows], info, dropped, now))

    @property
    def inflight(self) -> int:
        return sum(len(f.ids) for f in self._inflight)
