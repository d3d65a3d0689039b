"""simfleet: thousands of simulated jetfleet devices in one asyncio process.

Each device is its own MQTT connection (client id = device id) and speaks protocol v1
(docs/PROTOCOL.md): a retained ``StateMessage`` with the LWT ``StateMessage(online=False)``,
``TelemetryBatch`` at a set rate (one sample per batch, ``seq`` increasing, the sample
``ts`` is the send time so a bench can compute publish→stored latency), events, and the
retained ``desired`` assignment, downloaded with the agent's own OTA code
(:class:`edge_agent.ota.Download` over an :class:`edge_agent.slots.Slot`; this module only
feeds it frames and sends its ``FetchRequest``\\ s). A simulated device runs no model:
once the package verifies it reports ``ota.verified`` and ``activation.committed`` and
the release as active.

The MQTT client is a small asyncio MQTT 3.1.1 client (QoS 0/1, retained, LWT,
subscribe, keepalive) written for this: one paho client + loop per device costs a thread
each, and the per-message cost here is what limits how many devices one core simulates.

Broadcast prototype (``broadcast=True``): a device that gets an assignment subscribes to
``a/{sha256}/blocks`` and only listens (its ``Download`` is given a sender that reports
"offline", so it requests nothing) until the broadcast wave has been quiet for
``broadcast_quiet_s``; then it asks the server for the blocks still missing (repair).

    python bench/simfleet.py --devices 500 --rate 1 --duration 30 --broker mqtt://127.0.0.1:1883
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import raise_nofile  # noqa: E402
from edge_agent.errors import TransferError  # noqa: E402
from edge_agent.ota import Download, Outcome  # noqa: E402
from edge_agent.slots import SlotStore  # noqa: E402
from jetfleet import topics  # noqa: E402
from jetfleet.errors import FrameError, ProtocolError  # noqa: E402
from jetfleet.frames import BlockHashMismatch, decode_frame  # noqa: E402
from jetfleet.messages import (  # noqa: E402
    DesiredAssignment,
    EventMessage,
    FetchRequest,
    InferenceMetrics,
    SlotState,
    SlotStatus,
    StateMessage,
    SystemMetrics,
    TelemetryBatch,
    TelemetrySample,
    decode,
)
from jetfleet.mqtt import BrokerAddress  # noqa: E402

logger = logging.getLogger("simfleet")

AGENT_VERSION = "simfleet-1"


# -- a minimal asyncio MQTT 3.1.1 client ------------------------------------------------
class MqttProtocolError(Exception):
    pass


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


OnMessage = Callable[[str, bytes, bool], None]


class MqttConn:
    """One MQTT 3.1.1 connection. ``on_message(topic, payload, retained)`` runs on the loop.

    QoS 1 publishes are not awaited one by one: :attr:`unacked` counts those without a
    PUBACK yet and :meth:`wait_acked` waits until none is left.
    """

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        will: tuple[str, bytes, int, bool] | None = None,
        keepalive: int = 120,
        on_message: OnMessage | None = None,
    ) -> None:
        self.client_id = client_id
        self.host, self.port = host, port
        self.will = will
        self.keepalive = keepalive
        self.on_message = on_message
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connected = False
        self.acked = 0
        self.bytes_out = 0
        self._ids = itertools.cycle(range(1, 65536))
        self._inflight: dict[int, asyncio.Future[None] | None] = {}
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._connack: asyncio.Future[int] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def unacked(self) -> int:
        return len(self._inflight)

    async def connect(self, timeout: float = 30.0) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=4 * 1024 * 1024), timeout
        )
        flags = 0x02  # clean session
        payload = _str(self.client_id)
        if self.will is not None:
            topic, message, qos, retain = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(message)
        body = _str("MQTT") + bytes((4, flags)) + struct.pack(">H", self.keepalive) + payload
        self._connack = asyncio.get_running_loop().create_future()
        self._write(_packet(0x10, body))
        self._tasks.append(asyncio.create_task(self._read_loop()))
        code = await asyncio.wait_for(self._connack, timeout)
        if code != 0:
            raise MqttProtocolError(f"{self.client_id}: CONNACK refused with code {code}")
        self.connected = True
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._ping_loop()))

    def _write(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        self.bytes_out += len(data)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Queue one PUBLISH; ``False`` if not connected."""
        if not self.connected or self.writer is None or self.writer.is_closing():
            return False
        header = 0x30 | (qos << 1) | (1 if retain else 0)
        body = _str(topic)
        if qos:
            mid = next(self._ids)
            while mid in self._inflight:
                mid = next(self._ids)
            self._inflight[mid] = None
            self._all_acked.clear()
            body += struct.pack(">H", mid)
        self._write(_packet(header, body + payload))
        return True

    async def drain(self) -> None:
        if self.writer is not None:
            await self.writer.drain()

    async def subscribe(self, topic: str, qos: int = 1, timeout: float = 30.0) -> None:
        mid = next(self._ids)
        while mid in self._inflight:
            mid = next(self._ids)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[mid] = future
        self._all_acked.clear()
        self._write(_packet(0x82, struct.pack(">H", mid) + _str(topic) + bytes((qos,))))
        await asyncio.wait_for(future, timeout)

    async def wait_acked(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._all_acked.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self, clean: bool = True) -> None:
        """``clean=False`` drops the socket without DISCONNECT, so the broker sends the LWT."""
        for task in self._tasks:
            task.cancel()
        if self.writer is not None and not self.writer.is_closing():
            if clean and self.connected:
                self.writer.write(b"\xe0\x00")
            self.writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await self.writer.wait_closed()
        self.connected = False

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive / 2)
            if self.writer is not None and not self.writer.is_closing():
                self._write(b"\xc0\x00")

    def _ack(self, mid: int) -> None:
        future = self._inflight.pop(mid, None)
        if future is None:
            self.acked += 1
        elif not future.done():
            future.set_result(None)
        if not self._inflight:
            self._all_acked.set()

    async def _read_loop(self) -> None:
        assert self.reader is not None
        reader = self.reader
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, mult = 0, 1
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length += (byte & 0x7F) * mult
                    mult *= 128
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length) if length else b""
                kind = first >> 4
                if kind == 3:  # PUBLISH
                    qos = (first >> 1) & 3
                    tlen = struct.unpack_from(">H", body)[0]
                    topic = body[2 : 2 + tlen].decode()
                    pos = 2 + tlen
                    if qos:
                        mid = struct.unpack_from(">H", body, pos)[0]
                        pos += 2
                        self._write(b"\x40\x02" + struct.pack(">H", mid))
                    if self.on_message is not None:
                        try:
                            self.on_message(topic, body[pos:], bool(first & 1))
                        except Exception:
                            logger.exception("%s: handling %s failed", self.client_id, topic)
                elif kind == 4 or kind == 9:  # PUBACK / SUBACK
                    self._ack(struct.unpack_from(">H", body)[0])
                elif kind == 2 and self._connack is not None and not self._connack.done():
                    self._connack.set_result(body[1])
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(MqttProtocolError(f"{self.client_id}: {exc!r}"))
        finally:
            self.connected = False


# -- simulated devices ------------------------------------------------------------------
@dataclass
class FleetConfig:
    broker_url: str
    devices: int = 100
    rate_hz: float = 1.0
    prefix: str = "sim"
    slots_dir: Path | None = None  # None → a temporary directory (removed on stop)
    connect_concurrency: int = 200
    broadcast: bool = False  # listen on a/{sha}/blocks while downloading, as the agent does
    broadcast_quiet_s: float = 1.0
    download_window: int = 32
    download_timeout_s: float = 5.0
    keep_packages: bool = False  # False: a finished download's slot is deleted (disk)


@dataclass
class DownloadRecord:
    sha256: str
    started: float
    finished: float | None = None
    ok: bool | None = None
    bytes_received: int = 0
    bytes_duplicate: int = 0
    broadcast_blocks: int = 0
    repair_blocks_requested: int = 0
    error: str | None = None


class SimDevice:
    def __init__(self, fleet: SimFleet, device_id: str) -> None:
        self.fleet = fleet
        self.id = device_id
        self.seq = 0
        self.sent = 0
        self.events = 0
        self.conn: MqttConn | None = None
        self.assignment: DesiredAssignment | None = None
        self.active: DesiredAssignment | None = None
        self.download: Download | None = None
        self.record: DownloadRecord | None = None
        self._listening = False  # broadcast: receiving the wave, not requesting
        self._last_broadcast = 0.0
        self._ticker: asyncio.Task[None] | None = None
        self.store = SlotStore(fleet.slots_dir / device_id)

    # -- connection -----------------------------------------------------------------
    async def connect(self) -> None:
        lwt = StateMessage(device_id=self.id, online=False).to_bytes()
        address = self.fleet.address
        self.conn = MqttConn(
            self.id,
            address.host,
            address.port,
            will=(topics.state(self.id), lwt, 1, True),
            on_message=self._on_message,
        )
        await self.conn.connect()
        await self.conn.subscribe(topics.desired(self.id))
        await self.conn.subscribe(topics.blocks(self.id))
        self.publish_state()
        self.event("agent.started", message="simulated device")

    async def close(self, clean: bool = True) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.download is not None:
            self.download.close()
        if self.conn is not None:
            await self.conn.close(clean)

    # -- outbound ---------------------------------------------------------------------
    def publish_state(self) -> None:
        slots = []
        if self.assignment is not None and self.download is not None:
            status = {Outcome.RUNNING: SlotStatus.DOWNLOADING, Outcome.FAILED: SlotStatus.FAILED}
            slots.append(
                SlotState(
                    sha256=self.assignment.sha256,
                    release=self.assignment.release,
                    status=status.get(self.download.outcome, SlotStatus.COMMITTED),
                    progress=round(self.download.progress, 3),
                )
            )
        active = self.active
        msg = StateMessage(
            device_id=self.id,
            online=True,
            ts=time.time(),
            agent_version=AGENT_VERSION,
            active_release=active.release if active else None,
            active_sha256=active.sha256 if active else None,
            known_good_release=active.release if active else None,
            known_good_sha256=active.sha256 if active else None,
            serving=active is not None,
            backend="simulated",
            assignment_sequence=self.assignment.sequence if self.assignment else None,
            slots=slots,
            tags={"sim": self.fleet.config.prefix},
        )
        assert self.conn is not None
        self.conn.publish(topics.state(self.id), msg.to_bytes(), qos=1, retain=True)

    def event(self, kind: str, **fields: Any) -> None:
        self.events += 1
        msg = EventMessage(
            device_id=self.id, id=f"{self.id}-{self.events}", ts=time.time(), type=kind, **fields
        )
        assert self.conn is not None
        self.conn.publish(topics.events(self.id), msg.to_bytes(), qos=1)

    def send_telemetry(self) -> bool:
        assert self.conn is not None
        now = time.time()
        sample = TelemetrySample(
            ts=now,
            seq=self.seq,
            system=SystemMetrics(cpu_pct=12.5, mem_used_mb=512.0, mem_pct=40.0, load1=0.3),
            inference=InferenceMetrics(count=10, errors=0, p50_ms=3.1, p95_ms=4.2, p99_ms=5.0),
        )
        batch = TelemetryBatch(device_id=self.id, samples=[sample])
        if not self.conn.publish(topics.telemetry(self.id), batch.to_bytes(), qos=1):
            return False
        self.seq += 1
        self.sent += 1
        return True

    # -- inbound ------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        kind = topic.rsplit("/", 1)[-1]
        if topic.endswith("/desired"):
            self._on_desired(payload)
        elif kind == "blocks":
            self._on_frame(payload, broadcast=topic.startswith(topics.PREFIX + "/a/"))

    def _on_desired(self, payload: bytes) -> None:
        try:
            desired = decode("desired", payload, DesiredAssignment)
        except ProtocolError as exc:
            self.fleet.bad_messages += 1
            logger.warning("%s: bad desired assignment: %s", self.id, exc)
            return
        current = self.assignment
        if current is not None and desired.sequence <= current.sequence:
            return  # re-delivered (or older): already handled
        self.assignment = desired
        if self.active is not None and self.active.sha256 == desired.sha256:
            self.active = desired
            self.publish_state()
            return
        self._start_download(desired)

    def _start_download(self, desired: DesiredAssignment) -> None:
        if self.download is not None:
            self.download.close()
        now = time.monotonic()
        slot = self.store.slot(desired.sha256, desired.length, desired.block_size)
        self._listening = False  # the agent fetches at once; the server decides to broadcast
        self.record = DownloadRecord(desired.sha256, time.time())
        self.download = Download(
            desired,
            slot,
            self._send_fetch,
            window=self.fleet.config.download_window,
            timeout_s=self.fleet.config.download_timeout_s,
        )
        self.event(
            "ota.started", release=desired.release, sha256=desired.sha256, sequence=desired.sequence
        )
        if self.fleet.config.broadcast:
            self._last_broadcast = now
            self.fleet.subscribe_later(self, topics.artifact_blocks(desired.sha256))
        self.download.start(now)
        self.publish_state()
        if self.download.outcome is not Outcome.RUNNING:
            self._finished()
            return
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    def _send_fetch(self, request: FetchRequest) -> bool:
        if self._listening or self.conn is None:
            return False  # broadcast wave running: the agent logic sees "offline"
        if self.record is not None:
            self.record.repair_blocks_requested += sum(e - s for s, e in request.ranges)
        return self.conn.publish(topics.fetch(self.id), request.to_bytes(), qos=1)

    def _on_frame(self, payload: bytes, *, broadcast: bool) -> None:
        download = self.download
        if download is None or download.outcome is not Outcome.RUNNING:
            return
        now = time.monotonic()
        try:
            frame = decode_frame(payload)
        except BlockHashMismatch as exc:
            if exc.sha256 == download.sha256:
                download.on_bad_block(exc.index, now)
            return
        except FrameError as exc:
            self.fleet.bad_messages += 1
            logger.warning("%s: bad block frame: %s", self.id, exc)
            return
        if frame.sha256 != download.sha256:
            return
        if broadcast:
            self._last_broadcast = now
            assert self.record is not None
            self.record.broadcast_blocks += 1
        try:
            outcome = download.on_frame(frame, now, broadcast=broadcast)
        except TransferError as exc:
            logger.warning("%s: %s", self.id, exc)
            return
        if outcome is not Outcome.RUNNING:
            self._finished()

    async def _tick_loop(self) -> None:
        quiet = self.fleet.config.broadcast_quiet_s
        while self.download is not None and self.download.outcome is Outcome.RUNNING:
            await asyncio.sleep(min(0.25, quiet))
            now = time.monotonic()
            if self._listening and now - self._last_broadcast >= quiet:
                self._listening = False  # the wave is over: repair what is missing
                self.download.resume(now)
            if self.download.tick(now) is not Outcome.RUNNING:
                self._finished()

    def _finished(self) -> None:
        download, record, desired = self.download, self.record, self.assignment
        assert download is not None
        assert record is not None
        assert desired is not None
        record.finished = time.time()
        record.ok = download.outcome is Outcome.COMPLETE
        record.error = download.error
        record.bytes_received = download.counters.bytes_received
        record.bytes_duplicate = download.counters.bytes_duplicate
        if self.fleet.config.broadcast:
            self.fleet.unsubscribe_later(self, topics.artifact_blocks(desired.sha256))
        common = {
            "release": desired.release,
            "sha256": desired.sha256,
            "sequence": desired.sequence,
        }
        if record.ok:
            self.active = desired
            self.event("ota.verified", **common)
            self.event("activation.committed", message="simulated activation", **common)
            if not self.fleet.config.keep_packages:
                shutil.rmtree(self.store.root / desired.sha256, ignore_errors=True)
        else:
            self.event("ota.failed", message=download.error or "", **common)
        self.publish_state()
        self.download = None
        self.fleet.download_done(self)


class SimFleet:
    """Many :class:`SimDevice`\\ s on one event loop: :meth:`start`, then
    :meth:`run_telemetry` and/or :meth:`wait_downloads`, then :meth:`stop`."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.address = BrokerAddress.from_url(config.broker_url)
        self._tmp: Path | None = None
        if config.slots_dir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="simfleet-", dir=_scratch_root()))
            self.slots_dir = self._tmp
        else:
            self.slots_dir = Path(config.slots_dir)
        self.devices = [SimDevice(self, f"{config.prefix}-{i:05d}") for i in range(config.devices)]
        self.bad_messages = 0
        self.records: dict[str, DownloadRecord] = {}
        self._downloads_changed = asyncio.Event()
        self._bg: set[asyncio.Task[None]] = set()
        self.connect_s = 0.0
        self.telemetry_started = 0.0
        self.telemetry_ended = 0.0

    @property
    def device_ids(self) -> list[str]:
        return [d.id for d in self.devices]

    async def start(self) -> None:
        raise_nofile(self.config.devices * 2 + 1024)
        started = time.monotonic()
        gate = asyncio.Semaphore(self.config.connect_concurrency)

        async def one(device: SimDevice) -> None:
            async with gate:
                for attempt in range(5):
                    try:
                        await device.connect()
                        return
                    except (OSError, asyncio.TimeoutError, MqttProtocolError) as exc:
                        if attempt == 4:
                            raise
                        logger.info("%s: connect failed (%s); retrying", device.id, exc)
                        await asyncio.sleep(0.5 * (attempt + 1))

        await asyncio.gather(*(one(d) for d in self.devices))
        self.connect_s = time.monotonic() - started
        logger.info("%d devices online in %.1fs", len(self.devices), self.connect_s)

    async def run_telemetry(self, duration: float) -> None:
        """Every device sends one batch every ``1/rate_hz`` s for ``duration`` s (phases
        spread evenly over the period), then the fleet waits for the broker's PUBACKs."""
        period = 1.0 / self.config.rate_hz
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.5
        self.telemetry_started = time.time() + 0.5
        ticks = max(1, round(duration * self.config.rate_hz))
        n = len(self.devices)
        # One timer per time slot, not per device: devices are split into 100 slots/period.
        slots = max(1, min(n, 100))
        groups = [self.devices[i::slots] for i in range(slots)]

        async def slot_loop(k: int) -> None:
            for tick in range(ticks):
                at = t0 + tick * period + k * period / slots
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                for device in groups[k]:
                    device.send_telemetry()

        await asyncio.gather(*(slot_loop(k) for k in range(slots)))
        self.telemetry_ended = time.time()
        await self.wait_acked(60.0)

    async def wait_acked(self, timeout: float) -> bool:
        results = await asyncio.gather(
            *(d.conn.wait_acked(timeout) for d in self.devices if d.conn is not None)
        )
        return all(results)

    # -- OTA -------------------------------------------------------------------------
    def subscribe_later(self, device: SimDevice, topic: str) -> None:
        assert device.conn is not None
        self._spawn(device.conn.subscribe(topic))

    def unsubscribe_later(self, device: SimDevice, topic: str) -> None:
        # The broadcast subscription ends with the connection; a prototype need not
        # unsubscribe (MQTT UNSUBSCRIBE is not implemented by MqttConn).
        return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def download_done(self, device: SimDevice) -> None:
        assert device.record is not None
        self.records[device.id] = device.record
        self._downloads_changed.set()

    def downloads_started(self, sha256: str) -> int:
        return sum(1 for d in self.devices if d.record is not None and d.record.sha256 == sha256)

    def broadcast_listeners(self, sha256: str) -> int:
        return sum(
            1
            for d in self.devices
            if d._listening and d.record is not None and d.record.sha256 == sha256
        )

    async def wait_downloads(self, sha256: str, timeout: float) -> dict[str, DownloadRecord]:
        deadline = time.monotonic() + timeout
        while True:
            done = {k: r for k, r in self.records.items() if r.sha256 == sha256}
            if len(done) >= len(self.devices):
                return done
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return done
            self._downloads_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._downloads_changed.wait(), min(remaining, 1.0))

    async def stop(self, clean: bool = True) -> None:
        await asyncio.gather(*(d.close(clean) for d in self.devices), return_exceptions=True)
        for task in list(self._bg):
            task.cancel()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def summary(self) -> dict[str, Any]:
        sent = sum(d.sent for d in self.devices)
        return {
            "devices": len(self.devices),
            "rate_hz": self.config.rate_hz,
            "connect_s": round(self.connect_s, 2),
            "telemetry_started": self.telemetry_started,
            "telemetry_ended": self.telemetry_ended,
            "sent": sent,
            "acked": sum(d.conn.acked for d in self.devices if d.conn is not None),
            "unacked": sum(d.conn.unacked for d in self.devices if d.conn is not None),
            "events": sum(d.events for d in self.devices),
            "bad_messages": self.bad_messages,
            "downloads": {k: vars(r) for k, r in self.records.items()},
        }


def _scratch_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


# -- CLI ------------------------------------------------------------------------------
async def _main(args: argparse.Namespace) -> dict[str, Any]:
    fleet = SimFleet(
        FleetConfig(
            broker_url=args.broker,
            devices=args.devices,
            rate_hz=args.rate,
            prefix=args.prefix,
            connect_concurrency=args.connect_concurrency,
        )
    )
    try:
        await fleet.start()
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({"connected_at": time.time()}))
        await fleet.run_telemetry(args.duration)
        if args.linger:
            await asyncio.sleep(args.linger)
        return fleet.summary()
    finally:
        await fleet.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1.0, help="telemetry batches/s per device")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of telemetry")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--prefix", default="sim", help="device ids are PREFIX-00000, ...")
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument(
        "--linger", type=float, default=0.0, help="seconds to stay connected after the telemetry"
    )
    parser.add_argument("--ready-file", help="written once every device is connected")
    parser.add_argument("--out", help="write the JSON summary here (default: stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    summary = asyncio.run(_main(args))
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
