"""multipart/related bodies (RFC 2387, RFC 2046 5.1): an incremental parser for
STOW-RS requests and one streaming writer for every WADO-RS response.

:class:`MultipartParser` is pure (bytes in, events out), so a request body is
parsed as it arrives and a part never has to be held in memory.
:func:`send_parts` writes a sequence of :class:`Part` as one
``multipart/related`` response (or as a single body when the client asked for
a single part), streaming each part's chunks as they are produced.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path

from aiohttp import web

from appliance.lazyclasses import lazy_dataclass

__all__ = ["MultipartError", "MultipartParser", "Part", "check_boundary", "file_chunks",
           "send_parts", "thread_chunks"]

log = logging.getLogger(__name__)

# RFC 2046 5.1.1: 1-70 characters from bchars, not ending with a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_MAX_HEADER_BLOCK = 16 << 10
_MAX_PREAMBLE = 64 << 10
_CHUNK = 1 << 20


class MultipartError(ValueError):
    """The body is not a well-formed multipart body; ``str(e)`` says where."""


def check_boundary(boundary: str | None) -> str:
    """The boundary parameter if it is valid (RFC 2046 5.1.1), else MultipartError."""
    if not boundary or not _BOUNDARY.match(boundary):
        raise MultipartError("missing or invalid boundary parameter")
    return boundary


# Parser events: ("start", headers) / ("data", bytes) / ("end", None)
Event = tuple[str, object]

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)


class MultipartParser:
    """Incremental multipart parser: :meth:`feed` bytes as they arrive and get
    ``("start", {header: value})``, ``("data", bytes)`` and ``("end", None)``
    events; :meth:`close` at the end of the body checks it was complete.

    Header names are lower case; the close delimiter ends parsing (the
    epilogue is ignored, RFC 2046 5.1.1).
    """

    def __init__(self, boundary: str) -> None:
        self._dash_boundary = b"--" + check_boundary(boundary).encode("ascii")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buf = bytearray()
        self._state = _PREAMBLE
        self._seen = 0  # preamble bytes skipped so far
        self.parts = 0

    @property
    def done(self) -> bool:
        """True once the close delimiter has been seen."""
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> Iterator[Event]:
        """Parse ``data``; yield the events it completes."""
        if self._state == _EPILOGUE:
            return
        self._buf += data
        while True:
            if self._state == _PREAMBLE:
                if not self._preamble():
                    return
            elif self._state == _AFTER_DELIMITER:
                if not self._after_delimiter():
                    return
            elif self._state == _HEADERS:
                headers = self._headers()
                if headers is None:
                    return
                self.parts += 1
                yield "start", headers
            elif self._state == _BODY:
                found = self._buf.find(self._delimiter)
                if found < 0:
                    # Keep what could be the start of a delimiter split across chunks.
                    keep = len(self._delimiter) - 1
                    if len(self._buf) > keep:
                        out = bytes(self._buf[:-keep])
                        del self._buf[:-keep]
                        yield "data", out
                    return
                if found:
                    yield "data", bytes(self._buf[:found])
                del self._buf[:found + len(self._delimiter)]
                self._state = _AFTER_DELIMITER
                yield "end", None
            else:  # epilogue
                self._buf.clear()
                return

    def close(self) -> None:
        """The body has ended: raise MultipartError if it was incomplete."""
        if self._state == _PREAMBLE:
            raise MultipartError("no multipart boundary found in the body")
        if self._state != _EPILOGUE:
            raise MultipartError("the body ended before the closing boundary")

    def _preamble(self) -> bool:
        # The first delimiter may start the body (no CRLF before it).
        if self._buf.startswith(self._dash_boundary):
            del self._buf[:len(self._dash_boundary)]
            self._state = _AFTER_DELIMITER
            return True
        found = self._buf.find(self._delimiter)
        if found >= 0:
            del self._buf[:found + len(self._delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        keep = len(self._delimiter) - 1
        if len(self._buf) > keep:
            self._seen += len(self._buf) - keep
            del self._buf[:-keep]
        if self._seen > _MAX_PREAMBLE:
            raise MultipartError("no multipart boundary found in the body")
        return False

    def _after_delimiter(self) -> bool:
        if len(self._buf) < 2:
            return False
        if self._buf.startswith(b"--"):
            self._state = _EPILOGUE
            self._buf.clear()
            return False
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > 256:
                raise MultipartError("garbage after a boundary")
            return False
        if self._buf[:end].strip(b" \t"):  # only transport padding may follow
            raise MultipartError("garbage after a boundary")
        del self._buf[:end + 2]
        self._state = _HEADERS
        return True

    def _headers(self) -> dict[str, str] | None:
        if self._buf.startswith(b"\r\n"):  # no header fields at all
            del self._buf[:2]
            self._state = _BODY
            return {}
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEADER_BLOCK:
                raise MultipartError("part headers too long")
            return None
        if end > _MAX_HEADER_BLOCK:
            raise MultipartError("part headers too long")
        block = self._buf[:end].decode("latin-1")
        del self._buf[:end + 4]
        self._state = _BODY
        headers: dict[str, str] = {}
        last = None
        for line in block.split("\r\n"):
            if line[:1] in (" ", "\t") and last:  # obsolete folding (RFC 7230 3.2.4)
                headers[last] += " " + line.strip()
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip() or name != name.strip():
                raise MultipartError("malformed part header")
            last = name.lower()
            headers[last] = value.strip()
        return headers


# --------------------------------------------------------------------------- writer


@lazy_dataclass
class Part:
    """One part of a response: its Content-Type, and its body as chunks
    produced on demand (nothing is read before the part is sent)."""

    content_type: str
    chunks: Callable[[], AsyncIterator[bytes]]
    length: int | None = None


async def file_chunks(path: Path, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
    """A file (or ``length`` bytes of it from ``offset``), read in a worker thread."""
    f = await asyncio.to_thread(open, path, "rb")
    try:
        if offset:
            f.seek(offset)
        remaining = length
        while remaining is None or remaining > 0:
            size = _CHUNK if remaining is None else min(_CHUNK, remaining)
            data = await asyncio.to_thread(f.read, size)
            if not data:
                if remaining:
                    raise OSError(f"{path.name}: file shorter than expected")
                break
            if remaining is not None:
                remaining -= len(data)
            yield data
    finally:
        f.close()


async def thread_chunks(produce: Callable[[], Iterator[bytes]]) -> AsyncIterator[bytes]:
    """The chunks of a blocking generator, each produced in a worker thread."""
    chunks = await asyncio.to_thread(produce)
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        await asyncio.to_thread(chunks.close)


async def send_parts(request: web.Request, parts: Iterable[Part], *,
                     multipart_type: str | None,
                     headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Stream ``parts`` as the response.

    ``multipart_type`` is the ``type`` parameter of ``multipart/related``
    (PS3.18 8.6.1.2); None sends the only part as a single body. The first
    chunk is produced before the status line is sent, so an error there
    (a failed transcoding...) still becomes a proper HTTP error raised to the
    caller; an error after it is logged and the connection is closed, so the
    client sees a truncated body rather than a complete-looking one.
    ``headers`` are added to the response's (a Content-Disposition).
    """
    boundary = uuid.uuid4().hex
    total = _total_length(parts, boundary) if multipart_type is not None else None
    iterator = iter(parts)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no part to send")
    body = first.chunks()
    pending = await anext(body, b"")
    response = web.StreamResponse(headers=headers)
    if multipart_type is None:
        response.headers["Content-Type"] = first.content_type
        total = first.length
    else:
        response.headers["Content-Type"] = (
            f'multipart/related; type="{multipart_type}"; boundary={boundary}')
    if total is not None:
        # Known in advance when every part is a stored file: no chunked framing.
        response.content_length = total
    sent = 0
    try:
        await response.prepare(request)
        part: Part | None = first
        while part is not None:
            if multipart_type is not None:
                await response.write(_part_head(boundary, part))
            if pending:
                await response.write(pending)
                sent += len(pending)
            async for chunk in body:
                await response.write(chunk)
                sent += len(chunk)
            if multipart_type is not None:
                await response.write(b"\r\n")
            part = next(iterator, None)
            if part is not None:
                body, pending = part.chunks(), b""
        if multipart_type is not None:
            await response.write(_close(boundary))
        await response.write_eof()
    except ConnectionError:
        # Not an error of ours: the response simply ends here.
        log.info("%s: client went away after %d bytes of %s", request.remote, sent,
                 request.path)
    except Exception as e:  # noqa: BLE001 - headers are gone: all we can do is cut it short
        log.error("%s: response to %s aborted after %d bytes: %s", request.remote,
                  request.path, sent, e)
        if request.transport is not None:
            request.transport.close()
    finally:
        await body.aclose()
    return response


def _part_head(boundary: str, part: Part) -> bytes:
    head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
    if part.length is not None:
        head += f"Content-Length: {part.length}\r\n"
    return (head + "\r\n").encode("latin-1")


def _close(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def _total_length(parts: Iterable[Part], boundary: str) -> int | None:
    """The body length of a multipart response, when every part's length is known."""
    if not isinstance(parts, list | tuple) or any(p.length is None for p in parts):
        return None
    return sum(len(_part_head(boundary, p)) + p.length + 2 for p in parts) + len(_close(boundary))
