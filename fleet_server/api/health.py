"""``/healthz`` and ``/metrics`` (outside ``/api/v1``: for load balancers and Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from fleet_server.db import check_database
from fleet_server.deps import ContextDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(context: ContextDep) -> JSONResponse:
    """200 when the database answers and the gateway is connected to the broker, else 503."""
    db_ok = await run_in_threadpool(check_database, context.engine)
    broker_ok = context.gateway.connected
    ok = db_ok and broker_ok
    body = {"status": "ok" if ok else "degraded", "database": db_ok, "broker": broker_ok}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(context: ContextDep) -> Response:
    return Response(context.metrics.render(), media_type=CONTENT_TYPE_LATEST)
