"""``/releases``: a named, immutable pointer to one package."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from fleet_server.deps import SessionDep
from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.models import Package, Release, ReleaseCreate, ReleasePublic

router = APIRouter(prefix="/releases", tags=["releases"])


@router.post("", response_model=ReleasePublic, status_code=status.HTTP_201_CREATED)
def create_release(body: ReleaseCreate, session: SessionDep) -> Any:
    if session.get(Package, body.package_sha256) is None:
        raise NotFoundError(f"package {body.package_sha256} does not exist; upload it first")
    if session.exec(select(Release).where(Release.name == body.name)).first() is not None:
        raise ConflictError(f"release {body.name!r} already exists")
    release = Release(
        name=body.name, package_sha256=body.package_sha256, notes=body.notes, created_at=time.time()
    )
    session.add(release)
    try:
        session.commit()
    except IntegrityError as exc:
        raise ConflictError(f"release {body.name!r} already exists") from exc
    session.refresh(release)
    return release


@router.get("", response_model=list[ReleasePublic])
def list_releases(session: SessionDep) -> Any:
    return session.exec(select(Release).order_by(col(Release.created_at).desc())).all()


@router.get("/{name}", response_model=ReleasePublic)
def get_release(name: str, session: SessionDep) -> Any:
    release = session.exec(select(Release).where(Release.name == name)).first()
    if release is None:
        raise NotFoundError(f"release {name!r} does not exist")
    return release
