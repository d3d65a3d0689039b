"""A fleet PKI and a real Mosquitto started from exactly what ``write_broker_config``
generates (only paths and port differ from a deployment), plus clients to probe it.

:class:`Probe` is a raw paho MQTT v5 client that records the broker's answers (CONNACK,
SUBACK and PUBACK reason codes, messages, disconnects) so attack tests can assert them.
:func:`tls_handshake` opens a bare TLS connection and reports how the broker refused it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from fleet_server.brokerconf import BrokerConfigPaths, write_broker_config
from fleet_server.pki import CertPaths, FleetCA
from jetfleet.mqtt import BrokerAddress, MqttClient
from tests.support.mosquitto import MosquittoBroker, free_port

SERVER_IDENTITY = "jetfleet-server"


@dataclass
class MtlsFleet:
    """A CA, the broker's server cert, the server identity, and a broker built from them."""

    root: Path
    ca: FleetCA
    server_tls: CertPaths
    service: CertPaths
    broker: MosquittoBroker
    config: BrokerConfigPaths
    certs: Path = field(init=False)
    _open: list[Probe | MqttClient] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.certs = self.root / "certs"

    def close(self) -> None:
        """Stop every client made here, then the broker."""
        for client in self._open:
            with contextlib.suppress(Exception):
                client.stop()
        self.broker.stop()

    @property
    def ca_file(self) -> str:
        return str(self.ca.cert_path)

    def enroll(self, device_id: str) -> CertPaths:
        return self.ca.issue_device_cert(device_id).write(self.certs)

    def address(self, cert: CertPaths | None, ca_file: str | None = None) -> BrokerAddress:
        return BrokerAddress(
            host=self.broker.host,
            port=self.broker.port,
            ca_file=ca_file or self.ca_file,
            cert_file=str(cert.cert) if cert else None,
            key_file=str(cert.key) if cert else None,
        )

    def client(self, client_id: str, cert: CertPaths | None) -> MqttClient:
        """A started ``jetfleet.mqtt.MqttClient`` (the production wrapper) over mTLS."""
        client = MqttClient(client_id, self.address(cert))
        self._open.append(client)
        client.start()
        return client

    def probe(self, cert: CertPaths | None, client_id: str = "", **kwargs: Any) -> Probe:
        """A connected :class:`Probe`; fails the caller if the broker did not accept it."""
        probe = Probe(self.address(cert), client_id or f"probe-{time.monotonic_ns()}", **kwargs)
        self._open.append(probe)
        reason = probe.connect()
        if reason is None or reason.is_failure:
            raise ConnectionError(f"broker refused {cert}: {reason}")
        return probe


def make_fleet(root: Path) -> MtlsFleet:
    """CA + certs under ``root`` and a stopped broker listening on a free loopback port."""
    ca = FleetCA.create(root / "ca", "jetfleet test fleet CA")
    certs = root / "certs"
    server_tls = ca.issue_server_cert(["localhost", "127.0.0.1"]).write(certs, "broker")
    service = ca.issue_service_cert(SERVER_IDENTITY).write(certs)
    workdir = root / "broker"
    port = free_port()
    config = write_broker_config(
        workdir,
        port=port,
        ca=ca.cert_path,
        server_cert=server_tls.cert,
        server_key=server_tls.key,
        crl=ca.crl_path,
        server_identity=SERVER_IDENTITY,
        bind="127.0.0.1",
        log_file=workdir / "mosquitto.log",
        # As root, Mosquitto would switch to the `mosquitto` user, which cannot read
        # pytest's 0700 tmp_path; as anyone else it keeps its own user anyway.
        run_as_user="root" if os.geteuid() == 0 else None,
    )
    text = config.conf.read_text()
    broker = MosquittoBroker(workdir, config_text=_escape_format(text), port=port)
    # MosquittoBroker rewrites the same file: it must still be exactly what was generated.
    assert broker.conf == config.conf
    assert broker.conf.read_text() == text
    assert broker.log == workdir / "mosquitto.log"
    return MtlsFleet(root, ca, server_tls, service, broker, config)


def _escape_format(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class Probe:
    """A paho MQTT v5 client whose callbacks only record the broker's answers."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        username: str | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.connacks: queue.Queue[ReasonCode] = queue.Queue()
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.disconnected = threading.Event()
        self._acked = threading.Condition()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.tls_set(
            ca_certs=address.ca_file,
            certfile=address.cert_file,
            keyfile=address.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        if username is not None:
            self.client.username_pw_set(username)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.address = address

    # paho thread: record only
    def _on_connect(self, c: Any, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        self.connacks.put(rc)

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[ReasonCode], p: Any) -> None:
        with self._acked:
            self.subacks[mid] = rcs
            self._acked.notify_all()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        with self._acked:
            self.pubacks[mid] = rc
            self._acked.notify_all()

    def _on_message(self, c: Any, u: Any, msg: paho.MQTTMessage) -> None:
        self.messages.put(msg)

    def _on_disconnect(self, c: Any, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        self.disconnected.set()

    # test thread
    def connect(self, timeout: float = 5.0) -> ReasonCode | None:
        """Connect once (no retries); the CONNACK reason, or None if none came."""
        self.client.reconnect_delay_set(min_delay=30, max_delay=30)
        try:
            self.client.connect(self.address.host, self.address.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return None
        self.client.loop_start()
        try:
            return self.connacks.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Vanish without a DISCONNECT (as a device losing power), so its will fires."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def _wait_ack(self, table: dict[int, Any], mid: int, timeout: float) -> Any:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in table, timeout):
                raise TimeoutError(f"no acknowledgement for message id {mid} in {timeout}s")
            return table[mid]

    def subscribe(self, topic: str, timeout: float = 5.0) -> ReasonCode:
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None, f"paho refused to subscribe {topic}"
        return self._wait_ack(self.subacks, mid, timeout)[0]  # type: ignore[no-any-return]

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 5.0
    ) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait_ack(self.pubacks, info.mid, timeout)  # type: ignore[no-any-return]

    def until(
        self, match: Callable[[paho.MQTTMessage], bool], timeout: float = 5.0
    ) -> list[paho.MQTTMessage]:
        """Every message received until (and including) the first that ``match``es."""
        seen: list[paho.MQTTMessage] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                topics = [m.topic for m in seen]
                raise TimeoutError(f"no matching message in {timeout}s; saw {topics}")
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            seen.append(msg)
            if match(msg):
                return seen


def marker(topic: str, payload: bytes) -> Callable[[paho.MQTTMessage], bool]:
    return lambda msg: msg.topic == topic and msg.payload == payload


def tls_handshake(
    address: BrokerAddress, cert: CertPaths | None, timeout: float = 5.0
) -> str | None:
    """Open a TLS connection and send an MQTT PINGREQ-free read: None if the broker kept
    the connection, else the TLS error (with TLS 1.3 a refused client certificate only
    shows as an alert on the first read after the handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(address.ca_file)
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    with socket.create_connection((address.host, address.port), timeout=timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=address.host) as tls:
                tls.settimeout(1.0)
                try:
                    data = tls.recv(1)
                except TimeoutError:
                    return None  # the broker waits for our CONNECT: it accepted us
                return "connection closed" if data == b"" else None
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            return str(exc)


def wait_log(broker: MosquittoBroker, *texts: str, timeout: float = 5.0) -> str:
    """Poll the broker log until it contains any of ``texts``; return the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = broker.log_text()
        if any(text in log for text in texts):
            return log
        if time.monotonic() > deadline:
            raise TimeoutError(f"none of {texts} in the broker log after {timeout}s:\n{log}")
        time.sleep(0.05)
