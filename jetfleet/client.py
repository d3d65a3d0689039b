"""A small stdlib-only REST client for the fleet server (used by the CLI and the demo)."""

from __future__ import annotations

import contextlib
import json
import mimetypes
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from jetfleet.errors import JetfleetError


class ApiError(JetfleetError):
    """The fleet server answered with an error status (or could not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FleetClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> Any:
        url = f"{self.base_url}{path}"
        if not url.startswith(("http://", "https://")):
            raise ApiError(f"server url {self.base_url!r} must start with http:// or https://")
        req = urllib.request.Request(url, data=body, method=method)  # noqa: S310 (scheme checked)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                data = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.dumps(json.loads(detail).get("detail", detail))
            raise ApiError(f"{method} {path} → {exc.code}: {detail}", exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"cannot reach {self.base_url}: {exc}") from exc
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        return self._request("POST", path, json.dumps(payload).encode(), "application/json")

    def upload_package(self, path: Path) -> Any:
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: {ctype}\r\n\r\n'
        ).encode()
        body = head + Path(path).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return self._request(
            "POST", "/api/v1/packages", body, f"multipart/form-data; boundary={boundary}"
        )
