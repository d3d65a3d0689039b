"""Stream a multipart upload straight to a temporary file, with a size cap.

The request body is fed chunk by chunk to ``python_multipart``'s streaming parser; the
``file`` part is written to a temp file in the artifact store as it arrives (hashed on
the way), so nothing the size of a package is ever held in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from fleet_server.errors import InvalidInputError, TooLargeError

MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file part


@dataclass(frozen=True)
class ReceivedFile:
    path: Path
    sha256: str
    length: int
    filename: str | None


class _FilePart:
    """Parser callbacks that write one named part to ``path``."""

    def __init__(self, path: Path, field: str, max_bytes: int) -> None:
        self.path = path
        self.field = field
        self.max_bytes = max_bytes
        self.digest = hashlib.sha256()
        self.length = 0
        self.filename: str | None = None
        self.found = False
        self._fh: IO[bytes] | None = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition"))
        if params.get(b"name") == self.field.encode() and not self.found:
            self.found = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None
            self._fh = self.path.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._fh is None:
            return
        chunk = data[start:end]
        self.length += len(chunk)
        if self.length > self.max_bytes:
            raise TooLargeError(f"upload exceeds the {self.max_bytes}-byte package limit")
        self.digest.update(chunk)
        self._fh.write(chunk)

    def on_part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def receive_file(
    request: Request, dest: Path, max_bytes: int, field: str = "file"
) -> ReceivedFile:
    """Write the ``field`` part of a multipart request to ``dest``; the caller removes it."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidInputError(f"expected a multipart/form-data body with a {field!r} file part")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise TooLargeError(f"upload of {declared} bytes exceeds the {max_bytes}-byte limit")
    part = _FilePart(dest, field, max_bytes)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": part.on_part_begin,
            "on_header_field": part.on_header_field,
            "on_header_value": part.on_header_value,
            "on_header_end": part.on_header_end,
            "on_headers_finished": part.on_headers_finished,
            "on_part_data": part.on_part_data,
            "on_part_end": part.on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + MULTIPART_OVERHEAD:
                raise TooLargeError(f"upload exceeds the {max_bytes}-byte package limit")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInputError(f"malformed multipart body: {exc}") from exc
    finally:
        part.close()
    if not part.found:
        raise InvalidInputError(f"multipart body has no {field!r} part")
    return ReceivedFile(dest, part.digest.hexdigest(), part.length, part.filename)
