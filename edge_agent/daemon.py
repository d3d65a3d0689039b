"""The agent daemon: MQTT session, inbox loop, OTA, activation, telemetry, local API.

All work happens on one main-loop thread; paho's thread only fills the inbox.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import ValidationError

from edge_agent import metrics as agent_metrics
from edge_agent.activation import Activator
from edge_agent.api import ApiServer
from edge_agent.batching import Batcher
from edge_agent.buffer import Buffer, Forwarder, PublishInfo
from edge_agent.config import AgentConfig, load_config
from edge_agent.engine import EngineSlot, InferenceService
from edge_agent.enginebuild import EngineCache, EngineLoaded
from edge_agent.errors import AgentError, ConfigError
from edge_agent.inbound import BadBlock, InboundValidator, Rejected, TufPayload
from edge_agent.replay import Replay, load_samples
from edge_agent.runtime import BackendFactory, backend_factory
from edge_agent.slots import SlotStore
from edge_agent.state import StateStore, write_atomic
from edge_agent.telemetry import (
    GpuProvider,
    InferenceStats,
    TelemetryCollector,
    default_gpu_provider,
    detect_device_profile,
)
from edge_agent.tensorrt import OnnxRuntimeGpuBackend
from edge_agent.trust import DeviceTrust
from edge_agent.updater import Updater
from edge_agent.upload import EngineUploader
from edge_agent.watchdog import RequestLog, Watchdog
from jetfleet import __version__, topics
from jetfleet.errors import MqttError
from jetfleet.frames import BlockFrame
from jetfleet.messages import (
    Command,
    DesiredAssignment,
    EventMessage,
    EventType,
    SlotState,
    StateMessage,
    TelemetryBatch,
    TelemetrySample,
)
from jetfleet.mqtt import BrokerAddress, Connection, Inbound, MqttClient, Will

logger = logging.getLogger(__name__)

EVENTS_BUFFER_MAX = 1000
TICK_S = 0.05
MqttFactory = Callable[[str, BrokerAddress, "queue.Queue[Inbound | Connection]", Will], MqttClient]


def _default_mqtt(
    client_id: str, broker: BrokerAddress, inbox: queue.Queue[Inbound | Connection], will: Will
) -> MqttClient:
    return MqttClient(client_id, broker, inbox, will=will)


class Agent:
    """One edge agent. ``run()`` blocks until :meth:`stop` or SIGTERM/SIGINT."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.time,
        gpu_provider: GpuProvider | None = None,
        mqtt_factory: MqttFactory | None = None,
        profile_detector: Callable[[], Any] | None = None,
        trt_module: Any = None,
        cuda_module: Any = None,
    ) -> None:
        """``profile_detector`` (default ``jetson.profile.detect_profile``) and the
        ``tensorrt`` / ``pycuda.driver`` modules are injectable (default: the real ones)."""
        self.config = config
        self.clock = clock
        self.device_id = config.device_id
        self._mqtt_factory = mqtt_factory or _default_mqtt
        self.state_dir = config.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = StateStore(self.state_dir)
        self.state = self.store.load()
        self.slots = SlotStore(self.state_dir / "slots")
        limits = {"telemetry": config.telemetry_buffer_max, "events": EVENTS_BUFFER_MAX}
        self.buffer = Buffer(self.state_dir / "outbox.db", limits)
        self.stats = InferenceStats()
        self.engines = EngineSlot()
        self.service = InferenceService(self.engines, self.stats)
        self.validator = InboundValidator(self.device_id)
        self.gpu = gpu_provider if gpu_provider is not None else default_gpu_provider()
        self.collector = TelemetryCollector(self.stats, self.gpu)
        self.profile, self.profile_details = detect_device_profile(profile_detector)
        self.engine_cache = self._engine_cache(trt_module, cuda_module)
        self.uploader = EngineUploader(device_id=self.device_id, publish=self._publish,
                                       is_connected=lambda: self._connected, emit=self.emit)
        self.activator = Activator(
            state=self.state, store=self.store, slots=self.slots, engines=self.engines,
            factory=self._backend_factory(), threads=config.intra_op_threads,
            bake_s=config.bake_s, clock=clock, emit=self.emit, on_change=self._changed,
            engine_cache=self.engine_cache,
        )
        self.batcher = Batcher(self.service, config.serving)
        self.request_log = RequestLog()
        self.service.observer = self.request_log.record
        self.watchdog = Watchdog(
            config.watchdog, activator=self.activator, log=self.request_log,
            limiter=self.batcher.limiter, gpu=self.gpu, emit=self.emit, on_change=self._changed,
        )
        self.inbox: queue.Queue[Inbound | Connection] = queue.Queue()
        self.mqtt: MqttClient | None = None
        self.api: ApiServer | None = None
        self.replay: Replay | None = None
        self._connected = False
        self._dirty = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._next_telemetry = 0.0
        self.updater = Updater(
            device_id=self.device_id, state=self.state, store=self.store, slots=self.slots,
            activator=self.activator, validator=self.validator, emit=self.emit, clock=clock,
            changed=self._changed, is_connected=lambda: self._connected,
            publish=self._publish, subscribe=self._subscribe, unsubscribe=self._unsubscribe,
            window=config.fetch_window_blocks, timeout_s=config.fetch_timeout_s,
            deadline_floor_s=config.download_deadline_floor_s,
            min_rate_bytes_s=config.download_min_rate_kib_s * 1024,
            trust=(DeviceTrust(config.trust, self.state_dir / "tuf")
                   if config.trust is not None else None),
            engine_key=self.engine_cache.engine_key if self.engine_cache is not None else None,
        )
        self._forwarders = [
            Forwarder(self.buffer, "telemetry", self._build_telemetry,
                      lambda p: self._publish(topics.telemetry(self.device_id), p)),
            Forwarder(self.buffer, "events", lambda rows, _d: rows[0],
                      lambda p: self._publish(topics.events(self.device_id), p), batch=1,
                      max_inflight=32),
        ]

    # -- backends and engines (DESIGN §4) -----------------------------------------------
    def _engine_cache(self, trt_module: Any, cuda_module: Any) -> EngineCache | None:
        if self.config.backend != "tensorrt":
            return None
        key = self.profile_details.get("engine_key")
        if not key:
            raise ConfigError(f"backend tensorrt needs TensorRT and a known GPU (profile "
                              f"{self.profile or 'unknown'}: {self.profile_details or 'none'})")
        return EngineCache(self.state_dir / "engines", key, trt_module=trt_module,
                           cuda_module=cuda_module, workspace_mb=self.config.engine_workspace_mb,
                           max_batch=self.config.engine_max_batch, on_loaded=self._engine_loaded)

    def _backend_factory(self) -> BackendFactory:
        if self.config.backend == "onnxruntime-gpu":
            return partial(OnnxRuntimeGpuBackend,
                           engine_cache_dir=self.state_dir / "engines" / "ort")
        return backend_factory(self.config.backend)

    def _engine_loaded(self, loaded: EngineLoaded) -> None:
        ev: dict[str, Any] = {"sha256": loaded.package_sha256, "release": loaded.release}
        if loaded.assigned_refused:
            self.emit(EventType.ENGINE_REFUSED, **ev, message="the assigned engine failed to "
                      "deserialize or its golden vectors; using a cached or built one",
                      data={"engine_key": loaded.engine_key})
        if loaded.source == "built":
            self.emit(EventType.ENGINE_BUILT, **ev, message=f"engine built for "
                      f"{loaded.engine_key} in {loaded.seconds:.1f}s", data={
                          "source": loaded.source, "seconds": round(loaded.seconds, 3),
                          "plan_sha256": loaded.plan_sha256, "engine_key": loaded.engine_key})
            self.uploader.offer(loaded)

    # -- lifecycle -------------------------------------------------------------------
    @property
    def api_url(self) -> str | None:
        return self.api.url if self.api is not None else None

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        """Load the engine, start the API, the MQTT session and the main loop."""
        if self._started:
            return
        self._started = True
        self.emit(EventType.AGENT_STARTED, message=f"agent {__version__} started",
                  data={"boots": self.state.boots + 1})
        self.activator.boot()
        address = (self.config.api_host, self.config.api_port)
        try:
            self.api = ApiServer(address, self.batcher, self.health, self.metrics_text)
        except OSError as exc:
            where = f"{address[0]}:{address[1]}"
            raise AgentError(f"local API cannot listen on {where}: {exc}") from exc
        self.batcher.start()
        self.api.start()
        write_atomic(self.state_dir / "api.json",
                     json.dumps({"url": self.api.url, "pid": os.getpid()}).encode())
        if self.config.replay is not None:
            samples = load_samples(self.config.replay.file)
            self.replay = Replay(self.service, samples, self.config.replay.rate_hz)
            self.replay.start()
        will = Will(topics.state(self.device_id),
                    StateMessage(device_id=self.device_id, online=False).to_bytes())
        self.mqtt = self._mqtt_factory(
            f"jetfleet-agent-{self.device_id}", self.config.broker_address(), self.inbox, will
        )
        if self.config.trust is not None:  # before desired: retained metadata comes first
            for role in topics.TUF_ROLES:
                self.mqtt.subscribe(topics.tuf(role), 1)
        for topic in (topics.desired(self.device_id), topics.cmd(self.device_id),
                      topics.blocks(self.device_id)):
            self.mqtt.subscribe(topic, 1)
        self.updater.resume_assignment()
        self.mqtt.start()
        self._thread = threading.Thread(target=self._loop, name="agent-main", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Clean stop: offline state published, API stopped, buffer flushed (bounded)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """Start and block until :meth:`stop` or SIGTERM/SIGINT."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        self.start()
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self.inbox.get(timeout=TICK_S)
                except queue.Empty:
                    item = None
                try:
                    if isinstance(item, Connection):
                        self._on_connection(item)
                    elif isinstance(item, Inbound):
                        self._on_message(item)
                    self._periodic()
                except AgentError as exc:
                    logger.error("main loop: %s", exc)
                except MqttError as exc:
                    logger.warning("mqtt: %s", exc)
                except Exception:  # one bad step must never end the agent's main loop
                    logger.exception("unexpected error in the agent's main loop")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        deadline = time.monotonic() + 2.0
        try:
            while self._connected and time.monotonic() < deadline and any(
                self.buffer.pending(f.kind) for f in self._forwarders
            ):
                self._drain_inbox()
                for fwd in self._forwarders:
                    fwd.step(self._connected, time.monotonic())
                time.sleep(TICK_S)
        except (AgentError, MqttError) as exc:
            logger.warning("final flush incomplete: %s", exc)
        if self.replay is not None:
            self.replay.stop()
        if self.mqtt is not None:
            try:
                if self._connected:
                    info = self.mqtt.publish(topics.state(self.device_id),
                                             self._state_message(online=False).to_bytes(),
                                             retain=True)
                    info.wait_for_publish(2.0)
            except (MqttError, RuntimeError, ValueError) as exc:
                logger.warning("could not publish offline state: %s", exc)
            self.mqtt.stop()
        if self.api is not None:
            self.api.stop()
        self.batcher.stop()
        self.updater.close()
        self.buffer.close()
        try:
            self.gpu.close()
        except Exception as exc:  # a provider must not block shutdown
            logger.warning("GPU provider close failed: %s", exc)
        logger.info("agent stopped")

    def _drain_inbox(self) -> None:
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Connection):
                self._connected = item.connected

    # -- periodic work -------------------------------------------------------------------
    def _periodic(self) -> None:
        now = time.monotonic()
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.telemetry_interval_s
            self._sample_telemetry()
        for fwd in self._forwarders:
            fwd.step(self._connected, now)
        self.updater.tick()
        self.uploader.tick()
        self.watchdog.tick()
        if self.activator.tick():
            self.updater.cleanup_slots()
        if self._dirty:
            self._publish_state()

    def _sample_telemetry(self) -> None:
        engine = self.engines.current
        current = (engine.release, engine.sha256) if engine else (None, None)
        for sample in self.collector.samples(
            lambda: self.buffer.next_seq("telemetry"), self.clock(), current, self._release_of
        ):
            self.buffer.append("telemetry", sample.model_dump_json(exclude_none=True).encode())

    def _release_of(self, sha256: str) -> str | None:
        record = self.state.slots.get(sha256)
        return record.release if record is not None else None

    def _build_telemetry(self, rows: list[bytes], dropped: int) -> bytes | None:
        samples = []
        for row in rows:
            try:
                samples.append(TelemetrySample.model_validate_json(row))
            except ValidationError as exc:
                logger.warning("discarding an unreadable buffered sample: %s", exc)
        if not samples:
            return None
        return TelemetryBatch(device_id=self.device_id, samples=samples, dropped=dropped).to_bytes()

    # -- MQTT ------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> PublishInfo:
        if self.mqtt is None:
            raise MqttError("not started")
        return self.mqtt.publish(topic, payload, qos=1, retain=retain)

    def _subscribe(self, topic: str) -> None:
        if self.mqtt is not None:
            self.mqtt.subscribe(topic, 1)

    def _unsubscribe(self, topic: str) -> None:
        if self.mqtt is not None:
            self.mqtt.unsubscribe(topic)

    def _on_connection(self, conn: Connection) -> None:
        self._connected = conn.connected
        if conn.connected:
            logger.info("connected to %s", self.config.broker_url)
            self._publish_state()
        else:
            logger.info("disconnected from broker (%s)", conn.reason)
        self.updater.on_connected(conn.connected)
        self.uploader.on_connected(conn.connected)

    def _publish_state(self) -> None:
        if not self._connected or self.mqtt is None:
            return
        self._dirty = False
        self._publish(topics.state(self.device_id), self._state_message().to_bytes(), retain=True)

    def _changed(self) -> None:
        self._dirty = True

    def _state_message(self, online: bool = True) -> StateMessage:
        st = self.state
        slots = [SlotState(sha256=r.sha256, release=r.release, status=r.status, reason=r.reason,
                           progress=self.updater.progress(r.sha256))
                 for r in sorted(st.slots.values(), key=lambda r: -r.updated_at)[:64]]
        return StateMessage(
            device_id=self.device_id, online=online, ts=self.clock(), agent_version=__version__,
            active_release=st.active_release, active_sha256=st.active_sha256,
            known_good_release=st.known_good_release, known_good_sha256=st.known_good_sha256,
            serving=self.engines.current is not None if online else False,
            backend=self.config.backend, assignment_sequence=st.assignment_sequence,
            slots=slots, tags=self.config.tags, api_url=self.api_url,
            profile=self.profile, profile_details=self.profile_details,
        )

    def emit(self, type: EventType | str, *, sha256: str | None = None,
             release: str | None = None, sequence: int | None = None, message: str = "",
             data: dict[str, Any] | None = None) -> None:
        """Queue one event (store-and-forward: it survives being offline and restarts)."""
        event = EventMessage(
            device_id=self.device_id, id=uuid.uuid4().hex, ts=self.clock(),
            type=type.value if isinstance(type, EventType) else type, release=release,
            sha256=sha256, sequence=sequence, message=message[:2000], data=data or {},
        )
        self.buffer.append("events", event.to_bytes())
        self._dirty = True

    # -- inbound -----------------------------------------------------------------------------
    def _on_message(self, msg: Inbound) -> None:
        result = self.validator.check(msg)
        if isinstance(result, Rejected):
            if result.first:
                self.emit(EventType.BAD_MESSAGE, message=result.detail[:500],
                          data={"kind": result.kind, "reason": result.reason})
            return
        message = result.message
        if isinstance(message, BlockFrame):
            self.updater.on_frame(message, broadcast=msg.topic.startswith(f"{topics.PREFIX}/a/"))
        elif isinstance(message, BadBlock):
            self.updater.on_bad_block(message.sha256, message.index)
        elif isinstance(message, DesiredAssignment):
            self.updater.on_desired(message, result.raw)
        elif isinstance(message, Command):
            self.updater.on_command(message, result.raw)
        elif isinstance(message, TufPayload):
            self.updater.on_tuf(message.role, message.payload)

    # -- local API hooks -------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        st = self.state
        engine = self.engines.current
        record = st.slots.get(engine.sha256) if engine is not None else None
        body = {
            "status": "serving" if engine is not None else "not_serving",
            "device_id": self.device_id,
            "release": engine.release if engine else None,
            "sha256": engine.sha256 if engine else None,
            "state": record.status.value if record is not None else None,
            "known_good_release": st.known_good_release,
            "assignment_sequence": st.assignment_sequence,
            "connected": self._connected,
            "backend": self.config.backend,
        }
        return engine is not None, body

    def metrics_text(self) -> str:
        return agent_metrics.render(self)


def run_agent(config_path: str | os.PathLike[str]) -> int:
    """Entry point of ``jetfleet agent run --config agent.yaml``; returns the exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        logger.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        Agent(config).run()
    except AgentError as exc:
        logger.error("agent failed: %s", exc)
        return 1
    return 0
