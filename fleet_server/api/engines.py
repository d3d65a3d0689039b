"""``/releases/{name}/engines``: TensorRT engines of a release, one per hardware profile.

``POST`` is the builder's upload (multipart: ``file`` = the ``.plan``, ``engine_key`` =
``sm87-trt10.3``); it registers a ``verified`` engine. Devices upload theirs over MQTT
(fleet_server/engines.py) as ``candidate``s. The server cannot run an engine: every
device still checks one with the package's golden vectors before it serves.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session, select

from fleet_server.context import ServerContext
from fleet_server.deps import ContextDep, SessionDep
from fleet_server.engines import (
    EnginePlanPublic,
    engine_target,
    list_engines,
    public,
    register_engine,
)
from fleet_server.errors import InvalidInputError, NotFoundError
from fleet_server.models import Release
from jetfleet.messages import ENGINE_KEY_PATTERN, MAX_ENGINE_BYTES

router = APIRouter(prefix="/releases", tags=["engines"])

CHUNK = 1 << 20


def _release(session: Session, name: str) -> Release:
    release: Release | None = session.exec(select(Release).where(Release.name == name)).first()
    if release is None:
        raise NotFoundError(f"release {name!r} does not exist")
    return release


@router.get("/{name}/engines", response_model=list[EnginePlanPublic])
def get_engines(name: str, session: SessionDep) -> Any:
    return [public(p) for p in list_engines(session, _release(session, name))]


def _store(context: ServerContext, name: str, engine_key: str, upload: UploadFile
           ) -> tuple[EnginePlanPublic, bool]:
    tmp = context.store.new_temp()
    try:
        digest, length = hashlib.sha256(), 0
        with tmp.open("wb") as out:
            while chunk := upload.file.read(CHUNK):
                length += len(chunk)
                if length > MAX_ENGINE_BYTES:
                    raise InvalidInputError(f"engine is larger than {MAX_ENGINE_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
        if length == 0:
            raise InvalidInputError("the engine file is empty")
        sha = digest.hexdigest()
        with Session(context.engine) as session:
            release = _release(session, name)
            context.store.adopt(tmp, sha)
            plan, created = register_engine(
                session, release=release, sha256=sha, length=length, engine_key=engine_key,
                source="builder", status="verified", now=time.time())
            result = public(plan)
        if context.tuf is not None:
            context.tuf.add_targets([(engine_target(sha), sha, length)])
        return result, created
    finally:
        tmp.unlink(missing_ok=True)


@router.post(
    "/{name}/engines",
    response_model=EnginePlanPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "the same engine was already registered"}},
)
async def upload_engine(
    name: str,
    response: Response,
    context: ContextDep,
    file: Annotated[UploadFile, File(description="the serialized TensorRT engine")],
    engine_key: Annotated[str, Form(description="hardware profile, e.g. sm87-trt10.3")],
) -> Any:
    if not re.match(ENGINE_KEY_PATTERN, engine_key):
        raise InvalidInputError(f"invalid engine_key {engine_key!r} (expected e.g. sm87-trt10.3)")
    plan, created = await run_in_threadpool(_store, context, name, engine_key, file)
    if not created:
        response.status_code = status.HTTP_200_OK
    return plan
