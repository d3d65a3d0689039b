"""``create_app(settings)``: the FastAPI application and the lifespan of its parts."""

from __future__ import annotations

import logging
import queue
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fleet_server.api import api_router, health, tuf
from fleet_server.artifacts import ArtifactStore
from fleet_server.audit import AuditMiddleware
from fleet_server.broadcast import Broadcaster
from fleet_server.broker import EmbeddedBroker
from fleet_server.commands import Commands, Sign
from fleet_server.console import mount_console
from fleet_server.context import ServerContext
from fleet_server.db import create_tables, make_engine
from fleet_server.director import Director
from fleet_server.engines import EngineUploads
from fleet_server.errors import (
    ConflictError,
    FleetServerError,
    InvalidInputError,
    NotFoundError,
    TooLargeError,
)
from fleet_server.gateway import ClientFactory, Gateway
from fleet_server.lease import RETENTION_LEASE, ROLLOUT_LEASE, LeaseKeeper
from fleet_server.metrics import ServerMetrics
from fleet_server.retention import Retention
from fleet_server.rollouts import RolloutController
from fleet_server.settings import Settings
from fleet_server.tufrepo import TufRepository, TufService, package_targets
from jetfleet.messages import FetchRequest
from jetfleet.mqtt import BrokerAddress, MqttClient

logger = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[FleetServerError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooLargeError, 413),
    (InvalidInputError, 422),
)


def broker_address(settings: Settings) -> BrokerAddress:
    if settings.broker_url is None:
        # amqtt speaks MQTT 3.1.1 only.
        return BrokerAddress(
            settings.embedded_broker_host, settings.embedded_broker_port, protocol="3.1.1"
        )
    address = BrokerAddress.from_url(settings.broker_url)
    return replace(
        address,
        ca_file=settings.broker_ca_file,
        cert_file=settings.broker_cert_file,
        key_file=settings.broker_key_file,
        username=settings.broker_username,
        password=settings.broker_password,
    )


def build_context(settings: Settings) -> ServerContext:
    engine = make_engine(settings.db_url)
    store = ArtifactStore(settings.artifacts_dir)
    metrics = ServerMetrics()
    embedded = settings.broker_url is None
    factory: ClientFactory = MqttClient
    gateway = Gateway(
        broker=broker_address(settings),
        engine=engine,
        store=store,
        metrics=metrics,
        client_factory=factory,
        client_id=settings.mqtt_client_id,
        batch_size=settings.ingest_batch_size,
        batch_interval=settings.ingest_batch_interval,
        inbox_limit=settings.inbox_limit,
        inbox_put_timeout=settings.inbox_put_timeout,
        fetch_queue_limit=settings.fetch_queue_limit,
        reconcile_delay=settings.desired_reconcile_delay,
        shared_group=settings.shared_group if settings.shared_subscriptions else None,
    )
    broker = (
        EmbeddedBroker(settings.embedded_broker_host, settings.embedded_broker_port)
        if embedded
        else None
    )
    tuf_service = None
    sign_command: Sign | None = None
    if settings.keys_dir is None:
        logger.warning("JETFLEET_KEYS_DIR is not set: assignments go out unsigned, no TUF")
    else:
        director = Director.load(settings.keys_dir)
        gateway.sign_desired = director.sign_desired_payload
        sign_command = director.sign_command
        tuf_service = TufService(
            TufRepository(settings.keys_dir),
            lambda topic, payload: gateway.client.publish(topic, payload, qos=1, retain=True),
            interval=settings.tuf_refresh_interval,
        )
    uploads = EngineUploads(engine, store, add_targets=(
        tuf_service.add_targets if tuf_service is not None else None))
    gateway.on_upload = uploads.handle
    commands = Commands(
        engine, lambda topic, payload: gateway.client.publish(topic, payload, qos=1), sign_command
    )
    return ServerContext(settings, engine, store, metrics, gateway, broker, tuf_service, commands)


def _start(context: ServerContext) -> None:
    context.store.ensure()
    create_tables(context.engine)
    if context.broker is not None:
        context.broker.start()
    context.gateway.start()
    if context.tuf is not None:  # packages uploaded before trust was on become targets too
        context.tuf.add_targets(package_targets(context.engine))
        context.tuf.start()


def _stop(context: ServerContext) -> None:
    if context.tuf is not None:
        context.tuf.stop()
    context.gateway.stop()
    if context.broker is not None:
        context.broker.stop()
    context.engine.dispose()


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            problems.append(f"body is not valid JSON (at {'.'.join(loc[1:])}): {reason}")
            continue
        where = ".".join(p for p in loc if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return JSONResponse(
        {"detail": "; ".join(problems) or "invalid request", "errors": jsonable(exc.errors())},
        status_code=422,
    )


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str})


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return JSONResponse({"detail": str(exc)}, status_code=code)
    logger.error("unhandled server error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def make_broadcaster(settings: Settings, context: ServerContext) -> Broadcaster | None:
    """With ``JETFLEET_OTA_BROADCAST``: the gateway's OTA fan-out (fleet_server/broadcast.py)."""
    if not settings.ota_broadcast:
        return None
    gateway = context.gateway

    def requeue(device_id: str, request: FetchRequest) -> None:
        with suppress(queue.Full):  # dropped: the agent asks again after its timeout
            gateway.fetches.put_nowait((device_id, request))

    broadcaster = Broadcaster(
        context.store,
        context.metrics,
        lambda topic, payload: gateway.client.publish(topic, payload, qos=1),
        requeue,
        window=settings.ota_broadcast_window,
        min_devices=settings.ota_broadcast_min_devices,
        cooldown=settings.ota_broadcast_cooldown,
    )
    gateway.broadcaster = broadcaster
    return broadcaster


def create_app(settings: Settings) -> FastAPI:
    """The server application; its lifespan starts the broker (embedded) and the gateway."""
    context = build_context(settings)
    lease = LeaseKeeper(context.engine, ROLLOUT_LEASE, settings.mqtt_client_id, settings.lease_ttl)
    rollouts = RolloutController(
        context.engine,
        context.gateway,
        context.assign_lock,
        settings.block_size,
        interval=settings.rollout_tick_interval,
        leader=lease.held,
    )
    broadcaster = make_broadcaster(settings, context)
    retention_lease = LeaseKeeper(
        context.engine, RETENTION_LEASE, settings.mqtt_client_id, settings.lease_ttl
    )
    retention = Retention(
        context.engine,
        settings.telemetry_raw_retention_s,
        settings.telemetry_rollup_retention_s,
        interval=settings.telemetry_retention_interval,
        leader=retention_lease.held,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(_start, context)
        rollouts.start()  # after _start: the tables exist
        retention.start()
        if broadcaster is not None:
            broadcaster.start()
        logger.info("fleet server ready (data in %s)", settings.data_dir)
        try:
            yield
        finally:
            await run_in_threadpool(rollouts.stop)
            await run_in_threadpool(lease.release)
            await run_in_threadpool(retention.stop)
            await run_in_threadpool(retention_lease.release)
            if broadcaster is not None:
                await run_in_threadpool(broadcaster.stop)
            await run_in_threadpool(_stop, context)
            logger.info("fleet server stopped")

    app = FastAPI(
        title="jetfleet fleet server",
        version="1",
        summary="Devices, packages, releases, assignments, events and telemetry of a fleet.",
        lifespan=lifespan,
    )
    app.state.context = context
    app.state.rollouts = rollouts
    app.state.broadcaster = broadcaster
    app.state.retention = retention
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(FleetServerError, _server_error)
    app.include_router(api_router())
    app.include_router(health.router)
    app.include_router(tuf.router)
    mount_console(app)
    app.add_middleware(AuditMiddleware, engine=context.engine)
    return app
