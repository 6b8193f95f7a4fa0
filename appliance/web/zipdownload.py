"""A study (or series) as a ZIP of its DICOM files, streamed (issue 16.1).

``GET {DicomWeb.Root}/studies/{study}`` with ``Accept: application/zip`` (or
``?accept=application/zip``, for a plain download link), the media type
PS3.18 8.7.3 lists for a retrieve as a bulk archive. Each stored file goes in
as it is (stored, no compression: the pixel data of a clinic's images is
compressed or noise, and the client gets bytes from the first file on),
named ``{SeriesInstanceUID}/{SOPInstanceUID}.dcm``. Nothing is held in
memory but one chunk: zipfile writes to a sink that is emptied into the
response as it fills (sizes and CRCs in data descriptors, ZIP64 when a file
needs it), on a worker thread.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from appliance.web import media
from appliance.web.common import WebContext
from appliance.web.multipart import Part, send_parts, thread_chunks

log = logging.getLogger(__name__)

ZIP = "application/zip"
_CHUNK = 1 << 20


def wants_zip(ranges: list[media.MediaRange]) -> bool:
    """True when the client's preferred representation is application/zip."""
    return bool(ranges) and ranges[0].media_type == ZIP and not ranges[0].multipart


class _Sink:
    """What zipfile writes into, handed out in chunks (not seekable, so zipfile
    streams: sizes and CRC after each file's data)."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self.pending = 0

    def write(self, data) -> int:
        self._pieces.append(bytes(data))
        self.pending += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing buffered beyond what :meth:`take` hands out."""

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces.clear()
        self.pending = 0
        return data


def zip_chunks(files: list[tuple[str, Path, int]], when: float) -> Iterator[bytes]:
    """The ZIP of ``files`` ((name in the archive, path, size)), in chunks of
    about 1 MiB; ``when`` (epoch seconds) is every entry's time."""
    sink = _Sink()
    stamp = time.localtime(max(when, 315532800))[:6]  # the ZIP epoch is 1980
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path, size in files:
            info = zipfile.ZipInfo(name, stamp)
            info.file_size = size  # lets zipfile choose ZIP64 for a large file up front
            with open(path, "rb") as f, archive.open(info, "w") as out:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                    if sink.pending >= _CHUNK:
                        yield sink.take()
    yield sink.take()


async def send_zip(request: web.Request, ctx: WebContext, rows, uid: str) -> web.StreamResponse:
    """Stream ``rows`` (StoredInstance, in viewing order) as ``{uid}.zip``."""
    started = time.monotonic()
    files = [(f"{r.series_instance_uid}/{r.sop_instance_uid}.dcm", ctx.archive.file_of(r),
              r.file_size) for r in rows]
    part = Part(ZIP, lambda: thread_chunks(lambda: zip_chunks(files, time.time())))
    response = await send_parts(request, [part], multipart_type=None, headers={
        "Content-Disposition": f'attachment; filename="{uid}.zip"'})
    log.info("%s: ZIP download: %d instance(s), %d bytes of files, %.3f s", request.remote,
             len(files), sum(size for _, _, size in files), time.monotonic() - started)
    return response
