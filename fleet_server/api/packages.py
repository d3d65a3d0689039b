"""``/packages``: upload (validated, content-addressed), list, inspect, download."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fleet_server.context import ServerContext
from fleet_server.deps import ContextDep, SessionDep
from fleet_server.errors import InvalidPackageError, NotFoundError
from fleet_server.models import Package, PackagePublic
from fleet_server.uploads import ReceivedFile, receive_file
from jetfleet.errors import PackageError
from jetfleet.messages import SHA256_PATTERN
from jetfleet.package import PACKAGE_SUFFIX, read_package

router = APIRouter(prefix="/packages", tags=["packages"])

Sha256 = Annotated[str, Path(pattern=SHA256_PATTERN, description="lowercase hex sha256")]

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            }
        },
    }
}


def _register(context: ServerContext, received: ReceivedFile) -> tuple[Package, bool]:
    """Validate the uploaded file, store it, and record it; (package, newly created)."""
    try:
        pkg = read_package(received.path, expected_sha256=received.sha256)
    except PackageError as exc:
        raise InvalidPackageError(f"not a valid jetfleet package: {exc}") from exc
    with Session(context.engine) as session:
        existing = session.get(Package, pkg.sha256)
        if existing is not None:
            return existing, False
        context.store.adopt(received.path, pkg.sha256)
        package = Package(
            sha256=pkg.sha256,
            name=pkg.card.name,
            version=pkg.card.version,
            length=pkg.length,
            card=pkg.card.model_dump(mode="json"),
            created_at=time.time(),
        )
        session.add(package)
        try:
            session.commit()
        except IntegrityError:  # the same bytes uploaded concurrently
            session.rollback()
            winner = session.get(Package, pkg.sha256)
            if winner is None:
                raise
            return winner, False
        session.refresh(package)
        if context.tuf is not None:  # a TUF target before any device can be assigned it
            context.tuf.add_package(package.sha256, package.length)
        return package, True


@router.post(
    "",
    response_model=PackagePublic,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_BODY,
    responses={200: {"description": "the same package was already stored"}},
)
async def upload_package(request: Request, response: Response, context: ContextDep) -> Any:
    """Upload a ``.jfpkg`` as the multipart part ``file``. Idempotent: same bytes → 200."""
    tmp = context.store.new_temp()
    try:
        received = await receive_file(request, tmp, context.settings.max_package_bytes)
        package, created = await run_in_threadpool(_register, context, received)
    finally:
        tmp.unlink(missing_ok=True)
    if not created:
        response.status_code = status.HTTP_200_OK
    return package


@router.get("", response_model=list[PackagePublic])
def list_packages(session: SessionDep) -> Any:
    return session.exec(select(Package).order_by(col(Package.created_at).desc())).all()


@router.get("/{sha256}", response_model=PackagePublic)
def get_package(sha256: Sha256, session: SessionDep) -> Any:
    package = session.get(Package, sha256)
    if package is None:
        raise NotFoundError(f"package {sha256} does not exist")
    return package


@router.get("/{sha256}/download", response_class=FileResponse)
def download_package(sha256: Sha256, session: SessionDep, context: ContextDep) -> FileResponse:
    package = session.get(Package, sha256)
    if package is None or not context.store.exists(sha256):
        raise NotFoundError(f"package {sha256} does not exist")
    return FileResponse(
        context.store.path(sha256),
        media_type="application/octet-stream",
        filename=f"{package.name}-{package.version}{PACKAGE_SUFFIX}",
    )
