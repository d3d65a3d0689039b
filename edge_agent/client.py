"""A small Python client of the local inference API (stdlib ``urllib`` only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from edge_agent.errors import BadRequest, InferenceError, NotServing


class AgentClient:
    """``AgentClient("http://127.0.0.1:8470").infer(x)`` → the model's first output."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def infer(self, array: np.ndarray) -> np.ndarray:
        """Send one tensor raw (single-input models); return the first output."""
        array = np.ascontiguousarray(array)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Shape": ",".join(str(d) for d in array.shape),
            "X-Dtype": str(array.dtype),
        }
        status, reply_headers, body = self._request("POST", "/v1/infer", array.tobytes(), headers)
        self._raise_for(status, body)
        shape = tuple(int(d) for d in reply_headers["X-Shape"].split(",") if d != "")
        result: np.ndarray = np.frombuffer(body, dtype=reply_headers["X-Dtype"]).reshape(shape)
        copied: np.ndarray = result.copy()
        return copied

    def infer_json(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Send named inputs as JSON; return the JSON reply (``outputs``, ``release``...)."""
        payload = {"inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}
        status, _, body = self._request(
            "POST", "/v1/infer", json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        self._raise_for(status, body)
        result: dict[str, Any] = json.loads(body)
        return result

    def health(self) -> dict[str, Any]:
        """The /health JSON; ``serving`` says whether a model answers (503 is not an error)."""
        status, _, body = self._request("GET", "/health")
        result: dict[str, Any] = json.loads(body)
        result.setdefault("serving", status == 200)
        return result

    def metrics(self) -> str:
        status, _, body = self._request("GET", "/metrics")
        self._raise_for(status, body)
        return body.decode()

    def _request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.base_url + path, data=data, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()

    @staticmethod
    def _raise_for(status: int, body: bytes) -> None:
        if status == 200:
            return
        try:
            message = json.loads(body).get("error", body.decode(errors="replace"))
        except ValueError:
            message = body.decode(errors="replace")
        if status == 400:
            raise BadRequest(message)
        if status == 503:
            raise NotServing(message)
        raise InferenceError(f"HTTP {status}: {message}")
