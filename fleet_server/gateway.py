"""MQTT gateway: device messages in (batched into the DB), desired assignments and blocks out.

Threads: paho's network thread only enqueues (``jetfleet.mqtt``); the *ingest* thread
drains the inbox in batches of up to ``ingest_batch_size`` messages or
``ingest_batch_interval`` seconds and writes each batch in one transaction; the *fetch*
thread serves block requests, so a large transfer never delays telemetry.

Backpressure policy: the inbox holds at most ``inbox_limit`` messages. When it is full,
paho's thread waits up to ``inbox_put_timeout`` seconds for room (it stops reading the
socket, so the broker buffers for us: nothing is lost while the database catches up).
Past that the message is dropped and counted (``inbox_dropped_total``), which keeps the
MQTT connection alive through a long database outage. A database that is unavailable or
locked makes the ingest thread retry the same batch with back-off, so the inbox fills
and the policy above applies. Connection changes are never dropped.

Every refused message is counted per (kind, reason) in ``bad_messages_total``, logged
once per (kind, reason), and dropped; the database is not touched.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Session

from fleet_server.artifacts import ArtifactStore
from fleet_server.assignments import current_payloads, latest_assignment
from fleet_server.engines import UploadRefused, assigned_length
from fleet_server.errors import ArtifactError
from fleet_server.ingest import Ingested, write_batch
from fleet_server.metrics import ServerMetrics
from fleet_server.models import Assignment
from jetfleet import topics
from jetfleet.errors import PayloadTooLarge, ProtocolError, SchemaError, TopicError, VersionError
from jetfleet.frames import encode_frame
from jetfleet.messages import (
    DeviceMessage,
    EventMessage,
    FetchRequest,
    Message,
    StateMessage,
    TelemetryBatch,
    decode,
)
from jetfleet.mqtt import BrokerAddress, Connection, Inbound, MqttClient

logger = logging.getLogger(__name__)

MAX_BLOCKS_PER_FETCH = 256
INGEST_KINDS = ("state", "telemetry", "events")
SUBSCRIBED_KINDS = (*INGEST_KINDS, "fetch")
DB_RETRY_MAX = 5.0
PUBLISH_WAIT = 30.0
DESIRED_ACK_WAIT = 2.0

class FetchAdmission(Protocol):
    def admit(
        self, device_id: str, request: FetchRequest, block_count: int, block_size: int
    ) -> bool: ...


ClientFactory = Callable[[str, BrokerAddress, "queue.Queue[Inbound | Connection]"], MqttClient]


class Refused(Exception):
    """A device message the gateway drops; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class BoundedInbox(queue.Queue[Inbound | Connection]):
    """The gateway inbox: bounded for messages (see the module's backpressure policy)."""

    def __init__(self, limit: int, put_timeout: float, on_drop: Callable[[Inbound], None]) -> None:
        super().__init__(maxsize=0)
        self.limit = limit
        self.put_timeout = put_timeout
        self._on_drop = on_drop

    def put(
        self, item: Inbound | Connection, block: bool = True, timeout: float | None = None
    ) -> None:
        if not isinstance(item, Inbound):
            super().put(item)  # connection changes always get through
            return
        with self.not_full:
            deadline = time.monotonic() + self.put_timeout
            while self._qsize() >= self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._on_drop(item)
                    return
                self.not_full.wait(remaining)
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()


def classify(exc: ProtocolError) -> str:
    """The metric reason for a protocol error raised by ``decode``/``parse``."""
    if isinstance(exc, PayloadTooLarge):
        return "oversize"
    if isinstance(exc, VersionError):
        return "version"
    if isinstance(exc, TopicError):
        return "bad_topic"
    if isinstance(exc, SchemaError) and isinstance(
        exc.__cause__, (json.JSONDecodeError, UnicodeDecodeError)
    ):
        return "invalid_json"
    return "schema"


def validate(inbound: Inbound) -> tuple[str, str, DeviceMessage]:
    """(kind, device id, decoded message) of a device message, or raise :class:`Refused`."""
    try:
        parsed = topics.parse(inbound.topic)
    except TopicError as exc:
        raise Refused("bad_topic", str(exc)) from exc
    if parsed.scope != "d" or parsed.device_id is None or parsed.kind not in SUBSCRIBED_KINDS:
        raise Refused("unexpected_topic", f"not a topic the server ingests: {inbound.topic}")
    try:
        message: Message = decode(parsed.kind, inbound.payload)
    except ProtocolError as exc:
        raise Refused(classify(exc), str(exc)) from exc
    if not isinstance(message, DeviceMessage):  # every subscribed kind is one
        raise Refused("unexpected_topic", f"no device message on {inbound.topic}")
    if message.device_id != parsed.device_id:
        raise Refused(
            "device_mismatch",
            f"payload device_id {message.device_id!r} "
            f"differs from topic device {parsed.device_id!r}",
        )
    return parsed.kind, parsed.device_id, message


def _blocks_wanted(ranges: Iterable[tuple[int, int]]) -> Iterator[int]:
    seen: set[int] = set()
    for start, end in ranges:
        for index in range(start, end):
            if index not in seen:
                seen.add(index)
                yield index


class Gateway:
    """The server's one MQTT session. :meth:`start`/:meth:`stop` own its threads."""

    def __init__(
        self,
        *,
        broker: BrokerAddress,
        engine: Engine,
        store: ArtifactStore,
        metrics: ServerMetrics,
        client_factory: ClientFactory = MqttClient,
        client_id: str = "jetfleet-server",
        batch_size: int = 500,
        batch_interval: float = 0.2,
        inbox_limit: int = 20_000,
        inbox_put_timeout: float = 10.0,
        fetch_queue_limit: int = 1_000,
        reconcile_delay: float = 1.0,
        clock: Callable[[], float] = time.time,
        shared_group: str | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.reconcile_delay = reconcile_delay
        self.clock = clock
        # Replicas: device→server kinds on ``$share/{group}/...`` (each message to one
        # replica). ``desired`` stays a plain subscription: it reads the retained messages.
        self.shared_group = shared_group
        # Set by build_context with JETFLEET_OTA_BROADCAST: decides which fetches go unicast.
        self.broadcaster: FetchAdmission | None = None
        self.inbox = BoundedInbox(inbox_limit, inbox_put_timeout, self._dropped)
        self.fetches: queue.Queue[tuple[str, FetchRequest]] = queue.Queue(fetch_queue_limit)
        self.client = client_factory(client_id, broker, self.inbox)
        metrics.track_depth(self.inbox.qsize, self.fetches.qsize)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._logged: set[tuple[str, str]] = set()
        self._log_lock = threading.Lock()
        self._desired_lock = threading.Lock()
        self._reconcile_at: float | None = None
        self._retained_desired: dict[str, bytes] = {}
        self._db_down = False
        # Set by build_context when trust is configured: stored payload → signed bytes.
        self.sign_desired: Callable[[bytes], bytes] = lambda payload: payload
        # Set by build_context: device engine uploads (fleet_server.engines.EngineUploads).
        self.on_upload: Callable[[str, bytes], object] | None = None

    # -- lifecycle ----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.client.connected

    def start(self) -> None:
        for kind in SUBSCRIBED_KINDS:
            self.client.subscribe(topics.subscription(kind, shared_group=self.shared_group), qos=1)
        self.client.subscribe(topics.subscription("desired"), qos=1)
        # Not shared: all frames of one engine upload must reach the same reassembler.
        self.client.subscribe(topics.subscription("upload"), qos=1)
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._ingest_loop, name="jetfleet-ingest", daemon=True),
            threading.Thread(target=self._fetch_loop, name="jetfleet-fetch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.client.start()
        logger.info("gateway connecting to %s:%d", self.client.broker.host, self.client.broker.port)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        self.client.stop()
        logger.info("gateway stopped")

    # -- outbound -----------------------------------------------------------------
    def publish_desired(self, assignments: Sequence[Assignment]) -> None:
        """Publish each assignment's stored payload, retained, on ``d/{id}/desired``.

        Waits (briefly, while connected) until the broker has acknowledged them; when the
        broker is away, paho queues them and the reconnect reconcile covers them anyway.
        """
        infos = []
        with self._desired_lock:
            for assignment in assignments:
                infos.append(
                    self.client.publish(
                        topics.desired(assignment.device_id),
                        self.sign_desired(assignment.payload.encode("utf-8")),
                        qos=1,
                        retain=True,
                    )
                )
                self.metrics.desired_published.inc()
        deadline = time.monotonic() + DESIRED_ACK_WAIT
        for info in infos:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.client.connected:
                break
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):  # not queued while disconnected
                break

    def _reconcile_desired(self) -> None:
        """After a (re)connect: re-publish only the assignments the broker lacks or has stale."""
        self._reconcile_at = None
        self.client.unsubscribe(topics.subscription("desired"))
        with self._desired_lock, Session(self.engine) as session:
            wanted = {d: self.sign_desired(p.encode()) for d, p in
                      current_payloads(session).items()}
            stale = [d for d, p in wanted.items() if self._retained_desired.get(d) != p]
            for device_id in stale:
                self.client.publish(
                    topics.desired(device_id), wanted[device_id], qos=1, retain=True
                )
                self.metrics.desired_published.inc()
        self._retained_desired.clear()
        self.metrics.reconciles.inc()
        if stale:
            logger.info("re-published %d retained desired assignment(s)", len(stale))

    # -- bad messages -------------------------------------------------------------
    def _refuse(self, kind: str, reason: str, detail: str) -> None:
        self.metrics.bad.labels(kind=kind, reason=reason).inc()
        with self._log_lock:
            first = (kind, reason) not in self._logged
            self._logged.add((kind, reason))
        if first:
            logger.warning("dropped %s message (%s): %s [logged once]", kind, reason, detail)
        else:
            logger.debug("dropped %s message (%s): %s", kind, reason, detail)

    def _dropped(self, item: Inbound) -> None:
        kind = item.topic.rsplit("/", 1)[-1]
        self.metrics.inbox_dropped.labels(kind=kind).inc()
        self._refuse(kind, "inbox_full", "ingest inbox stayed full; the database is too slow")

    # -- ingest thread ------------------------------------------------------------
    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if batch:
                self._handle(batch)
            if self._reconcile_at is not None and self.clock() >= self._reconcile_at:
                try:
                    self._reconcile_desired()
                except (SQLAlchemyError, OSError) as exc:
                    logger.warning("could not re-publish desired assignments: %s", exc)

    def _next_batch(self) -> list[Inbound | Connection]:
        try:
            first = self.inbox.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_interval
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.inbox.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _handle(self, batch: Sequence[Inbound | Connection]) -> None:
        items: list[Ingested] = []
        for entry in batch:
            if isinstance(entry, Connection):
                self._on_connection(entry)
                continue
            kind = entry.topic.rsplit("/", 1)[-1]
            if kind == "desired":
                if entry.retain:  # what the broker holds for this device right now
                    self._retained_desired[entry.topic.split("/")[-2]] = entry.payload
                continue
            if kind == "upload":
                self._upload(entry)
                continue
            try:
                kind, device_id, message = validate(entry)
            except Refused as exc:
                self._refuse(kind, exc.reason, str(exc))
                continue
            if isinstance(message, FetchRequest):
                try:
                    self.fetches.put_nowait((device_id, message))
                except queue.Full:
                    self._refuse("fetch", "fetch_queue_full", "too many block requests queued")
                continue
            assert isinstance(message, (StateMessage, TelemetryBatch, EventMessage))
            items.append(Ingested(kind, device_id, message, entry.retain, entry.received_at))
        if items:
            self._write(items)

    def _upload(self, entry: Inbound) -> None:
        try:
            device_id = topics.parse(entry.topic).device_id
        except TopicError as exc:
            self._refuse("upload", "bad_topic", str(exc))
            return
        if self.on_upload is None or device_id is None:
            self._refuse("upload", "unexpected_topic", "engine uploads are not enabled")
            return
        try:
            self.on_upload(device_id, entry.payload)
        except UploadRefused as exc:
            self._refuse("upload", exc.reason, f"{device_id}: {exc}")
        except (SQLAlchemyError, OSError) as exc:
            logger.error("engine upload from %s failed: %s", device_id, exc)

    def _on_connection(self, change: Connection) -> None:
        if change.connected:
            logger.info("gateway connected to the MQTT broker (%s)", change.reason)
            self.client.subscribe(topics.subscription("desired"), qos=1)
            self._retained_desired.clear()
            self._reconcile_at = self.clock() + self.reconcile_delay
        else:
            logger.warning("gateway disconnected from the MQTT broker: %s", change.reason)

    def _write(self, items: Sequence[Ingested]) -> None:
        delay = 0.2
        while True:
            started = time.monotonic()
            try:
                with Session(self.engine) as session:
                    write_batch(session, items)
            except OperationalError as exc:  # database down or locked: keep the batch
                if not self._db_down:
                    logger.error("database unavailable, retrying ingest batch: %s", exc)
                self._db_down = True
                if self._stop.wait(delay):
                    logger.error("stopping: %d ingested message(s) not written", len(items))
                    return
                delay = min(delay * 2, DB_RETRY_MAX)
                continue
            except SQLAlchemyError as exc:
                self.metrics.batch_failures.inc()
                logger.warning("ingest batch failed (%s); retrying message by message", exc)
                self._write_each(items)
                return
            break
        if self._db_down:
            logger.info("database available again")
            self._db_down = False
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        for item in items:
            self.metrics.ingested.labels(kind=item.kind).inc()

    def _write_each(self, items: Sequence[Ingested]) -> None:
        for item in items:
            try:
                with Session(self.engine) as session:
                    write_batch(session, [item])
            except SQLAlchemyError as exc:
                self._refuse(item.kind, "rejected_by_db", str(exc).splitlines()[0])
            else:
                self.metrics.ingested.labels(kind=item.kind).inc()

    # -- fetch thread -------------------------------------------------------------
    def _fetch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                device_id, request = self.fetches.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._serve(device_id, request)
            except Refused as exc:
                self._refuse("fetch", exc.reason, f"{device_id}: {exc}")
            except (ArtifactError, SQLAlchemyError, OSError) as exc:
                logger.error("cannot serve blocks to %s: %s", device_id, exc)

    def _serve(self, device_id: str, request: FetchRequest) -> None:
        with Session(self.engine) as session:
            assignment = latest_assignment(session, device_id)
        sha = request.sha256
        length = assigned_length(assignment, sha) if assignment is not None else None
        if assignment is None or length is None:  # its package, or its engine (engines.py)
            raise Refused("unassigned_artifact", f"{sha[:12]} is not assigned to this device")
        count = -(-length // assignment.block_size)
        for start, end in request.ranges:
            if end > count:
                detail = f"range [{start}, {end}) beyond {count} blocks of {sha[:12]}"
                raise Refused("block_out_of_range", detail)
        if not self.store.exists(sha):
            raise Refused("unknown_artifact", f"{sha[:12]} is assigned but not in the store")
        if self.broadcaster is not None and not self.broadcaster.admit(
            device_id, request, count, assignment.block_size
        ):
            return  # covered by a broadcast of this artifact (fleet_server/broadcast.py)
        wanted = list(itertools.islice(_blocks_wanted(request.ranges), MAX_BLOCKS_PER_FETCH + 1))
        if len(wanted) > MAX_BLOCKS_PER_FETCH:
            wanted = wanted[:MAX_BLOCKS_PER_FETCH]
            self.metrics.fetch_truncated.inc()
        topic = topics.blocks(device_id)
        size = assignment.block_size
        info = None
        for index, payload in zip(wanted, self.store.read_blocks(sha, wanted, size), strict=True):
            frame = encode_frame(sha, index, count, index * size, payload)
            info = self.client.publish(topic, frame, qos=1)
            self.metrics.blocks_served.inc()
            self.metrics.egress_bytes.labels(mode="unicast").inc(len(frame))
        if info is not None:
            self._await_published(info)

    def _await_published(self, info: Any) -> None:
        """Flow control: one request's frames in flight at a time (bounded by PUBLISH_WAIT)."""
        deadline = time.monotonic() + PUBLISH_WAIT
        try:
            while not info.is_published() and not self._stop.is_set():
                if time.monotonic() >= deadline or not self.client.connected:
                    return
                info.wait_for_publish(0.2)
        except (RuntimeError, ValueError) as exc:  # paho: not queued / no connection
            logger.debug("block frames not confirmed: %s", exc)
