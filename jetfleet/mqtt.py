"""A thin paho-mqtt (v2 callback API) wrapper shared by the agent and the server.

* paho return codes become :class:`MqttError` here, at the wrapper.
* paho callbacks run on paho's network thread: they only put items on the
  owner's ``inbox`` queue (:class:`Inbound` messages and :class:`Connection`
  changes).  The owner's own thread does the work.
* Subscriptions are remembered and renewed on every (re)connect; paho's loop
  thread reconnects by itself with back-off.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from jetfleet.errors import MqttError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_at: float


@dataclass(frozen=True)
class Connection:
    connected: bool
    reason: str
    session_present: bool = False


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "127.0.0.1"
    port: int = 1883
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    protocol: str = "5"  # "5" (default) or "3.1.1" (e.g. the embedded amqtt demo broker)

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """``mqtt://host:port`` (plain) or ``mqtts://host:port`` (needs ca/cert/key set later).

        ``?protocol=3.1.1`` selects MQTT 3.1.1 for brokers without MQTT 5 (amqtt).
        """
        scheme, _, rest = url.partition("://")
        if scheme not in ("mqtt", "mqtts") or not rest:
            raise MqttError(f"broker url {url!r} must look like mqtt://host:port")
        rest, _, query = rest.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        protocol = params.pop("protocol", "5")
        if params:
            raise MqttError(f"broker url {url!r} has unknown parameters {sorted(params)}")
        if protocol not in PROTOCOLS:
            raise MqttError(f"broker url {url!r}: protocol must be one of {sorted(PROTOCOLS)}")
        host, _, port = rest.rstrip("/").rpartition(":")
        if not host:
            host, port = port, "8883" if scheme == "mqtts" else "1883"
        try:
            return cls(host=host, port=int(port), protocol=protocol)
        except ValueError as exc:
            raise MqttError(f"broker url {url!r} has a bad port") from exc


PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _check(rc: MQTTErrorCode | int, what: str) -> None:
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
        raise MqttError(f"{what} failed: {paho.error_string(int(rc))}", int(rc))


class MqttClient:
    """One MQTT connection with a queue-based inbox."""

    def __init__(
        self,
        client_id: str,
        broker: BrokerAddress,
        inbox: queue.Queue[Inbound | Connection] | None = None,
        *,
        will: Will | None = None,
        keepalive: int = 30,
        max_inflight: int = 100,
        clean_start: bool = True,
    ) -> None:
        self.client_id = client_id
        self.broker = broker
        self.inbox: queue.Queue[Inbound | Connection] = (
            inbox if inbox is not None else queue.Queue()
        )
        self._subs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._keepalive = keepalive
        if broker.protocol not in PROTOCOLS:
            raise MqttError(f"unknown MQTT protocol {broker.protocol!r}")
        self._v5 = broker.protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=PROTOCOLS[broker.protocol],
            clean_session=None if self._v5 else clean_start,
        )
        self._clean_start = clean_start
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(min_delay=1, max_delay=8)
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self._client.tls_set(
                ca_certs=broker.ca_file,
                certfile=broker.cert_file,
                keyfile=broker.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- paho thread: enqueue only -------------------------------------------------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.inbox.put(Connection(False, str(reason)))
            return
        self._connected.set()
        with self._lock:
            subs = list(self._subs.items())
        if subs:
            client.subscribe(subs)  # paho's documented pattern: renew subscriptions here
        self.inbox.put(Connection(True, str(reason), bool(flags.session_present)))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self.inbox.put(Connection(False, str(reason)))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.inbox.put(
            Inbound(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, time.time())
        )

    # -- owner thread --------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting until :meth:`stop`."""
        try:
            if self._v5:
                self._client.connect_async(
                    self.broker.host,
                    self.broker.port,
                    keepalive=self._keepalive,
                    clean_start=self._clean_start,
                )
            else:
                self._client.connect_async(
                    self.broker.host, self.broker.port, keepalive=self._keepalive
                )
        except (OSError, ValueError) as exc:
            raise MqttError(
                f"cannot connect to {self.broker.host}:{self.broker.port}: {exc}"
            ) from exc
        _check(self._client.loop_start(), "loop_start")

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        with self._lock:
            self._subs[topic] = qos
        if self.connected:
            rc, _mid = self._client.subscribe(topic, qos)
            if rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                _check(rc, f"subscribe {topic}")

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subs.pop(topic, None)
        if self.connected:
            self._client.unsubscribe(topic)

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> paho.MQTTMessageInfo:
        """Publish; raise :class:`MqttError` unless paho accepted (or queued) the message."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            _check(info.rc, f"publish {topic}")
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            raise MqttError(f"publish {topic}: not connected", int(info.rc))
        return info
