"""A multipart/form-data request body read as it arrives, for an upload with a size cap.

FastAPI's `UploadFile` has Starlette read the whole body (to a temporary file) before the endpoint
runs, so a cap could only be checked once an oversized file had been received whole. Here the body
is parsed a network chunk at a time (python-multipart's push parser, as Starlette uses): small fields
are kept (`fields`), and a file part's bytes are handed on as they come (`file_pieces`), so the
caller can count them and stop. `body_chunks` gives the request's body to a sync endpoint (FastAPI
runs those in a worker thread; each chunk is awaited on the server's loop).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio.from_thread
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from router.errors import InputError

# A form field other than the file (purpose) is short: one longer than this is refused.
MAX_FIELD_BYTES = 64 * 1024


def body_chunks(request: Request) -> Iterator[bytes]:
    """The request's body, chunk by chunk as the client sends it, from a sync endpoint's thread."""
    stream = request.stream().__aiter__()

    async def following() -> bytes:
        return await stream.__anext__()

    while True:
        try:
            chunk = anyio.from_thread.run(following)
        except (StopAsyncIteration, ClientDisconnect):
            return
        if chunk:
            yield chunk


class StreamedForm:
    """A multipart/form-data body, parsed as it is read from `body`.

    `next_file()` reads up to the start of the next file part (keeping the fields before it) and
    returns its (field name, filename); `file_pieces()` then yields that part's bytes as they arrive
    and, at its end, reads the rest of the body (keeping the fields after it); `drain(limit)` reads
    and discards up to `limit` more bytes (a refused upload's rest, so the client reads the answer)."""

    def __init__(self, content_type: str | None, body: Iterator[bytes]) -> None:
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InputError("send the file as multipart/form-data (file, and purpose=batch)", field="file")
        self.fields: dict[str, str] = {}
        self._body = body
        self._events: list[tuple[str, Any]] = []
        self._header: list[bytes] = [b"", b""]
        self._headers: dict[bytes, bytes] = {}
        self._field: tuple[str, bytearray] | None = None  # the text field being read
        self._in_file = False
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._header.__setitem__(
                    0, self._header[0] + data[start:end]
                ),
                "on_header_value": lambda data, start, end: self._header.__setitem__(
                    1, self._header[1] + data[start:end]
                ),
                "on_header_end": self._header_end,
                "on_headers_finished": lambda: self._events.append(("headers", dict(self._headers))),
                "on_part_data": lambda data, start, end: self._events.append(("data", bytes(data[start:end]))),
                "on_part_end": lambda: self._events.append(("end", None)),
                "on_end": lambda: self._events.append(("done", None)),
            },
        )

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._header[0].lower()] = self._header[1]
        self._header = [b"", b""]

    def _events_read(self) -> Iterator[tuple[str, Any]]:
        """The parser's events, feeding it the body a chunk at a time as they are needed."""
        while True:
            while self._events:
                yield self._events.pop(0)
            if self._ended:
                return
            chunk = next(self._body, None)
            if chunk is None:
                self._ended = True
                self._parser.finalize()
                continue
            self._parser.write(chunk)

    def next_file(self) -> tuple[str, str] | None:
        """Read on to the start of the next file part: its (field name, filename); None at the end."""
        for kind, value in self._events_read():
            if kind == "headers":
                _, options = parse_options_header(value.get(b"content-disposition"))
                name = options.get(b"name", b"").decode("utf-8", "replace")
                if b"filename" in options:
                    self._in_file = True
                    return name, options[b"filename"].decode("utf-8", "replace")
                self._field = (name, bytearray())
            elif kind == "data" and self._field is not None:
                self._field[1].extend(value)
                if len(self._field[1]) > MAX_FIELD_BYTES:
                    raise InputError(f"form field '{self._field[0]}' is longer than {MAX_FIELD_BYTES:,} bytes")
            elif kind == "end" and self._field is not None:
                self.fields[self._field[0]] = self._field[1].decode("utf-8", "replace")
                self._field = None
        return None

    def file_pieces(self) -> Iterator[bytes]:
        """The current file part's bytes as they arrive; at its end, the rest of the body is read
        (its fields kept; a second file part is refused)."""
        if not self._in_file:
            return
        for kind, value in self._events_read():
            if kind == "data":
                yield value
            elif kind == "end":
                self._in_file = False
                break
        if self.next_file() is not None:
            raise InputError("send one file per upload", field="file")

    def drain(self, limit: int) -> None:
        """Read and discard up to `limit` bytes more of the body (nothing is parsed or kept)."""
        read = 0
        while read <= limit and not self._ended:
            chunk = next(self._body, None)
            if chunk is None:
                self._ended = True
            else:
                read += len(chunk)
