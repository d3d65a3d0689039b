"""The embedded MQTT broker (amqtt) for one-machine demos, and an MQTT 3.1.1 client for it.

amqtt runs on its own thread with its own asyncio loop. It is plain MQTT on a loopback
listener, with anonymous access and no topic ACL: fine for a demo on one machine, never
for a fleet (use Mosquitto with mTLS, DESIGN §5).

amqtt 0.12 speaks MQTT 3.1.1 only and refuses ``jetfleet.mqtt.MqttClient``'s MQTT 5
CONNECT, so the gateway connects to it with ``BrokerAddress(protocol="3.1.1")``.
It goes away once ``jetfleet.mqtt.MqttClient`` takes a protocol argument.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from typing import Any

from fleet_server.errors import BrokerError

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt config: one TCP listener, anonymous clients, no topic checking, no $SYS."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


class EmbeddedBroker:
    """An amqtt broker on a background thread: :meth:`start` returns once it listens."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="jetfleet-embedded-broker", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=START_TIMEOUT)
        except Exception as exc:
            self._thread.join(timeout=START_TIMEOUT)
            self._thread = None
            raise BrokerError(
                f"embedded MQTT broker cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc
        logger.warning(
            "embedded MQTT broker listening on %s:%d: plain MQTT 3.1.1 without TLS or "
            "authentication, for demos on one machine only; set JETFLEET_BROKER_URL to use "
            "a real broker",
            self.host,
            self.port,
        )

    def _run(self, started: Future[None]) -> None:
        from amqtt.broker import Broker  # imported here: only the demo path needs amqtt

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._broker = Broker(broker_config(self.host, self.port))
            await self._broker.start()

        try:
            loop.run_until_complete(boot())
        except Exception as exc:  # amqtt wraps bind errors in its own BrokerError
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
        try:
            future.result(timeout=START_TIMEOUT)
        except Exception as exc:
            logger.warning("embedded MQTT broker did not shut down cleanly: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=START_TIMEOUT)
        self._loop = self._thread = self._broker = None
        logger.info("embedded MQTT broker stopped")
