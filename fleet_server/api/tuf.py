"""``/tuf/{name}``: the TUF metadata over HTTP, as ngclient names it (public, no auth).

The same metadata is retained on ``jetfleet/v1/tuf/{role}``; this route serves a device
(or an auditor) that fetches over HTTP: ``timestamp.json``, ``{v}.root.json``,
``{v}.snapshot.json``, ``{v}.targets.json``.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from fleet_server.deps import ContextDep
from fleet_server.errors import NotFoundError

router = APIRouter(prefix="/tuf", tags=["trust"])


@router.get("/{name}")
def tuf_metadata(name: str, context: ContextDep) -> Response:
    data = context.tuf.repo.file(name) if context.tuf is not None else None
    if data is None:
        raise NotFoundError(f"no TUF metadata {name!r}")
    return Response(data, media_type="application/json",
                    headers={"Cache-Control": "no-cache"})
