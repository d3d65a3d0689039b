"""The local inference API (stdlib ``ThreadingHTTPServer``; keeps the agent light).

* ``POST /v1/infer`` — JSON ``{"inputs": {"input": [[...]]}}`` → ``{"outputs": {...}}``;
  or a raw tensor (``Content-Type: application/octet-stream``, ``X-Shape: 1,64``,
  ``X-Dtype: float32``) for a single-input model → the first output, raw, with the
  same headers.  Bad bodies → 400, no model → 503; over the admission rate → 429 and a
  full queue → 503 at once, both with ``Retry-After`` (see :mod:`edge_agent.batching`).
* ``GET /health`` — 200 when serving, 503 otherwise; JSON with release, sha256, state.
* ``GET /metrics`` — Prometheus text format.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import numpy as np

from edge_agent.engine import InferenceResult
from edge_agent.errors import (
    BackendError,
    BadRequest,
    InferenceError,
    NotServing,
    Overloaded,
    RateLimited,
)
from edge_agent.runtime import InputSpec

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
RAW_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
RAW_TYPE = "application/octet-stream"


class Inferer(Protocol):
    """What the API runs requests through: the service or the batcher in front of it."""

    def input_specs(self) -> list[InputSpec]: ...

    def infer(self, inputs: dict[str, np.ndarray]) -> InferenceResult: ...


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        service: Inferer,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        metrics: Callable[[], str],
    ) -> None:
        super().__init__(address, _Handler)
        self.service = service
        self.health = health
        self.metrics = metrics
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="agent-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def parse_raw(body: bytes, shape_header: str | None, dtype_header: str | None) -> np.ndarray:
    """A raw tensor body → ndarray; raise :class:`BadRequest` saying what is wrong."""
    if not shape_header:
        raise BadRequest("raw body needs an X-Shape header, e.g. 'X-Shape: 1,64'")
    dtype = (dtype_header or "float32").strip()
    if dtype not in RAW_DTYPES:
        raise BadRequest(f"X-Dtype {dtype!r} not supported; use one of {', '.join(RAW_DTYPES)}")
    try:
        shape = tuple(int(part) for part in shape_header.split(","))
    except ValueError:
        raise BadRequest(f"X-Shape {shape_header!r} must be comma-separated integers") from None
    if not shape or any(d < 0 for d in shape):
        raise BadRequest(f"X-Shape {shape_header!r} must be non-negative integers")
    need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if need != len(body):
        raise BadRequest(
            f"X-Shape {list(shape)} of {dtype} needs {need} bytes, body has {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def parse_json(body: bytes) -> dict[str, np.ndarray]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), dict) or not data["inputs"]:
        raise BadRequest('JSON body must be {"inputs": {"<input name>": [[...]]}}')
    inputs: dict[str, np.ndarray] = {}
    for name, value in data["inputs"].items():
        try:
            array = np.asarray(value)
        except ValueError as exc:
            raise BadRequest(f"input {name!r} is not a rectangular array: {exc}") from exc
        if array.dtype.kind not in "biuf":
            raise BadRequest(f"input {name!r} must be a (nested) list of numbers")
        inputs[str(name)] = array
    return inputs


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out as separate writes on a keep-alive connection: with Nagle's
    # algorithm on, the body waits for the client's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("api: " + format, *args)

    # -- routes -------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            ok, body = self.server.health()
            self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
        elif path == "/metrics":
            text = self.server.metrics().encode()
            self._send(HTTPStatus.OK, text, "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route GET {path}")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/v1/infer":
            self._drain()
            self._error(HTTPStatus.NOT_FOUND, f"no route POST {path}")
            return
        try:
            body = self._body()
            raw = self.headers.get("Content-Type", "").split(";")[0].strip() == RAW_TYPE
            if raw:
                array = parse_raw(body, self.headers.get("X-Shape"), self.headers.get("X-Dtype"))
                specs = self.server.service.input_specs()
                if len(specs) != 1:
                    raise BadRequest("raw bodies need a single-input model; send JSON instead")
                result = self.server.service.infer({specs[0].name: array})
                self._raw(result)
            else:
                result = self.server.service.infer(parse_json(body))
                self._json(HTTPStatus.OK, {
                    "outputs": {k: v.tolist() for k, v in result.outputs.items()},
                    "release": result.release,
                    "sha256": result.sha256,
                    "latency_ms": round(result.latency_ms, 3),
                })
        except _TooLarge as exc:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc), close=True)
        except BadRequest as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc), close=True)
        except RateLimited as exc:
            self._error(HTTPStatus.TOO_MANY_REQUESTS, str(exc), retry_after=1)
        except Overloaded as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), retry_after=1)
        except NotServing as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except (BackendError, InferenceError) as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))

    # -- helpers ------------------------------------------------------------------
    def _body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise BadRequest("request needs a Content-Length header")
        try:
            length = int(length_header)
        except ValueError:
            raise BadRequest("Content-Length must be an integer") from None
        if length < 0:
            raise BadRequest("Content-Length must be non-negative")
        if length > MAX_BODY:
            raise _TooLarge(f"body of {length} bytes exceeds {MAX_BODY}")
        return self.rfile.read(length)

    def _drain(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY:
            self.rfile.read(length)

    def _raw(self, result: InferenceResult) -> None:
        name, value = next(iter(result.outputs.items()))
        array = np.ascontiguousarray(value)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", RAW_TYPE)
        self.send_header("X-Output", name)
        self.send_header("X-Shape", ",".join(str(d) for d in array.shape))
        self.send_header("X-Dtype", str(array.dtype))
        if result.release:
            self.send_header("X-Release", result.release)
        self.send_header("X-Sha256", result.sha256)
        data = array.tobytes()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str, *, close: bool = False,
               retry_after: int | None = None) -> None:
        if close:
            self.close_connection = True
        data = json.dumps({"error": message, "status": int(status)}).encode()
        self._send(status, data, "application/json", retry_after=retry_after)

    def _send(self, status: HTTPStatus, data: bytes, content_type: str,
              retry_after: int | None = None) -> None:
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class _TooLarge(InferenceError):
    pass


def prometheus(metrics: list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]) -> str:
    """Render ``(name, type, help, [(labels, value)])`` as Prometheus text format."""
    lines: list[str] = []
    for name, kind, help_text, samples in metrics:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ""
            if labels:
                parts = [f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())]
                label_text = "{" + ",".join(parts) + "}"
            lines.append(f"{name}{label_text} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
