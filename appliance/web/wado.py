"""WADO-RS (PS3.18 10.4): instances, metadata, bulk data, frames, rendered images.

Every file is found through the index (``Archive.blobs.path`` of an index
row), never from a path in the URL: UIDs are checked against the UID grammar
first, bulk data paths are parsed strictly, frame lists bounded. Files are
streamed (:func:`appliance.web.multipart.send_parts`); blocking work (SQLite,
file reads, pydicom, Pillow) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from appliance.dicomfile import dicomjson, pixels, render, syntax
from appliance.store import StoredInstance
from appliance.web import media, render_params, zipdownload
from appliance.web.common import (
    WebContext, context, dicomweb_url, http_error, request_uids,
)
from appliance.web.multipart import Part, file_chunks, send_parts, thread_chunks

__all__ = ["add_routes", "can_transcode", "instance_part", "parse_accept",
           "render_instance", "render_options", "send"]

log = logging.getLogger(__name__)

# A frame list longer than this is refused (400) before anything is read.
MAX_FRAMES_PER_REQUEST = 4096
_FRAME_LIST = re.compile(r"^[0-9]{1,9}(,[0-9]{1,9})*$")
_BULK_URI = re.compile(r'("BulkDataURI"\s*:\s*")(bulk/)')
_PIXEL_DATA_PATHS = {(0x7FE00010,), (0x7FE00008,), (0x7FE00009,)}


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register this module's routes under root (no trailing slash)."""
    study = root + "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    for path in (study, series, instance):
        router.add_get(path, retrieve)
        router.add_get(path + "/metadata", metadata)
    for path in (study, series):
        router.add_get(path + "/thumbnail", thumbnail)
    router.add_get(instance + "/frames/{frames}", frames)
    router.add_get(instance + "/bulk/{bulk:.+}", bulk)
    for path in (instance, instance + "/frames/{frames}"):
        router.add_get(path + "/rendered", rendered)
        router.add_get(path + "/thumbnail", thumbnail)


# --------------------------------------------------------------------------- shared


def parse_accept(request: web.Request) -> list[media.MediaRange]:
    """The acceptable media types: the ``accept`` query parameter if given
    (PS3.18 8.3.3.1, for links where headers cannot be set), else the header."""
    if "accept" in request.query:
        return media.parse_accept(request.query.getall("accept"))
    return media.parse_accept(request.headers.getall("Accept", []))


async def _instances(request: web.Request) -> tuple[WebContext, list[StoredInstance]]:
    ctx = context(request)
    study, series, sop = request_uids(request)
    rows = await asyncio.to_thread(ctx.archive.instances_in, study, series, sop)
    if not rows:
        what = "instance" if sop else "series" if series else "study"
        raise http_error(404, f"no such {what}")
    return ctx, rows


def _path(ctx: WebContext, row: StoredInstance) -> Path:
    return ctx.archive.file_of(row)


@functools.lru_cache(maxsize=64)
def can_transcode(ts: str) -> bool:
    """pixels.can_transcode, remembered (the answer depends on installed decoders only)."""
    return pixels.can_transcode(ts)


@functools.lru_cache(maxsize=64)
def _can_decode(ts: str) -> bool:
    return pixels.can_decode(ts)


def instance_part(ctx: WebContext, row: StoredInstance, rep: media.Representation) -> Part:
    """The Part-10 file of ``row`` as stored, or transcoded to Explicit VR LE."""
    path = _path(ctx, row)
    if rep.stored:
        return Part(rep.content_type, lambda: file_chunks(path), row.file_size)
    return Part(rep.content_type,
                lambda: thread_chunks(lambda: pixels.transcode_to_explicit_le(path)))


async def send(request: web.Request, parts: list[Part], multipart_type: str | None,
               ) -> web.StreamResponse:
    """send_parts, with the errors that can happen before the first byte as HTTP errors."""
    try:
        return await send_parts(request, parts, multipart_type=multipart_type)
    except pixels.PixelError as e:
        # Before anything was sent: the representation asked for cannot be made.
        raise http_error(406, str(e)) from None
    except FileNotFoundError:
        log.error("%s: a stored file is missing for %s", request.remote, request.path)
        raise http_error(500, "a stored file is missing") from None


def _single_or_multipart(reps: list[media.Representation], count: int) -> bool:
    """True to send a bare single body: the client preferred it and there is one part."""
    if reps[0].multipart:
        return False
    if count > 1:
        raise http_error(406, "more than one part to send: accept multipart/related")
    return True


# --------------------------------------------------------------------------- instances


async def retrieve(request: web.Request) -> web.StreamResponse:
    """Retrieve Study / Series / Instance (PS3.18 10.4.1.1.1): Part-10 files."""
    started = time.monotonic()
    ctx, rows = await _instances(request)
    ranges = parse_accept(request)
    if zipdownload.wants_zip(ranges):
        named = [uid for uid in request_uids(request) if uid]
        return await zipdownload.send_zip(request, ctx, rows, named[-1])
    reps = []
    for row in rows:
        ts = row.transfer_syntax_uid
        rep = media.choose_dicom(ranges, ts, can_transcode=can_transcode(ts))
        if rep is None:
            raise http_error(406, f"an instance stored in {ts} cannot be sent as asked "
                                  f"(transfer syntaxes offered: as stored, or {media.EXPLICIT_LE})")
        reps.append(rep)
    single = _single_or_multipart(reps, len(rows))
    parts = [instance_part(ctx, row, rep) for row, rep in zip(rows, reps)]
    response = await send(request, parts, None if single else media.DICOM)
    log.info("%s: WADO-RS retrieve: %d instance(s), %d transcoded, %.3f s", request.remote,
             len(rows), sum(not r.stored for r in reps), time.monotonic() - started)
    return response


# --------------------------------------------------------------------------- metadata


async def metadata(request: web.Request) -> web.Response:
    """Retrieve Metadata (PS3.18 10.4.1.1.2) from the ingest-time JSON (no file read),
    each relative BulkDataURI made absolute for the client."""
    if not media.choose_json(parse_accept(request)):
        raise http_error(406, "metadata is available as application/dicom+json only")
    ctx = context(request)
    study, series, sop = request_uids(request)
    body = await asyncio.to_thread(_metadata_body, ctx, dicomweb_url(request), study, series, sop)
    if body is None:
        raise http_error(404, "no such instance" if sop else "no such series" if series
                         else "no such study")
    return web.Response(body=body, content_type="application/dicom+json")


def _metadata_body(ctx: WebContext, base: str, study: str, series: str | None,
                   sop: str | None) -> bytes | None:
    archive = ctx.archive
    for _ in range(3):
        # Two reads: an instance stored in between would shift one list; then retry.
        texts = archive.metadata_in(study, series, sop)
        uids = [(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
                for r in archive.instances_in(study, series, sop)]
        if len(uids) == len(texts) and all(f'"{u[2]}"' in t for u, t in zip(uids, texts)):
            break
    else:
        uids = [_instance_uids(text) for text in texts]
    if not texts:
        return None
    out = []
    for (st, se, i), text in zip(uids, texts):
        prefix = f"{base}/studies/{st}/series/{se}/instances/{i}/"
        escaped = json.dumps(prefix)[1:-1]  # the host comes from a request header
        out.append(_BULK_URI.sub(lambda m, e=escaped: m.group(1) + e + m.group(2), text))
    return ("[" + ",".join(out) + "]").encode("utf-8")


def _instance_uids(text: str) -> tuple[str, str, str]:
    """Study, series and SOP Instance UIDs of one metadata text (the slow way)."""
    obj = json.loads(text)

    def value(tag: str) -> str:
        return (obj.get(tag, {}).get("Value") or [""])[0]

    return value("0020000D"), value("0020000E"), value("00080018")


# --------------------------------------------------------------------------- frames


def _frame_numbers(text: str) -> list[int]:
    """PS3.18 10.4.1.1.5 frame list: comma-separated 1-based numbers; 400 otherwise."""
    if len(text) > 10 * MAX_FRAMES_PER_REQUEST or not _FRAME_LIST.match(text):
        raise http_error(400, "frame list: comma-separated frame numbers expected")
    numbers = [int(n) for n in text.split(",")]
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise http_error(400, f"frame list: at most {MAX_FRAMES_PER_REQUEST} frames a request")
    if min(numbers) < 1:
        raise http_error(400, "frame list: frame numbers start at 1")
    return numbers


async def _layout(request: web.Request, path: Path) -> pixels.PixelLayout:
    def read() -> pixels.PixelLayout:
        with open(path, "rb") as f:
            return pixels.read_layout(f)

    try:
        return await asyncio.to_thread(read)
    except pixels.PixelError as e:
        raise http_error(404 if "no pixel data" in str(e) else 406, str(e)) from None
    except FileNotFoundError:
        log.error("%s: a stored file is missing for %s", request.remote, request.path)
        raise http_error(500, "a stored file is missing") from None


def _frame_chunks(path: Path, layout: pixels.PixelLayout, index: int,
                  rep: media.Representation) -> Iterator[bytes]:
    with open(path, "rb") as f:
        if rep.stored and layout.encapsulated:
            yield pixels.stored_frame(f, layout, index)
        else:
            yield pixels.uncompressed_frame(f, layout, index)


def _frame_part(path: Path, layout: pixels.PixelLayout, index: int,
                rep: media.Representation) -> Part:
    return Part(rep.content_type,
                lambda: thread_chunks(lambda: _frame_chunks(path, layout, index, rep)))


def _choose_frames(ranges: list[media.MediaRange], row: StoredInstance) -> media.Representation:
    ts = row.transfer_syntax_uid
    rep = media.choose_frames(ranges, ts, can_decode=_can_decode(ts))
    if rep is None:
        raise http_error(406, f"frames stored in {ts} can be sent as stored "
                              f"({media.frame_media_type(ts)}) or, when they can be decoded, "
                              "as application/octet-stream")
    return rep


async def frames(request: web.Request) -> web.StreamResponse:
    """Retrieve Frames (PS3.18 10.4.1.1.5)."""
    numbers = _frame_numbers(request.match_info["frames"])
    ctx, (row,) = await _instances(request)
    rep = _choose_frames(parse_accept(request), row)
    if media.is_video(row.transfer_syntax_uid):
        raise http_error(406, "frames of a video cannot be retrieved one by one")
    path = _path(ctx, row)
    layout = await _layout(request, path)
    if max(numbers) > layout.number_of_frames:
        raise http_error(404, f"frame {max(numbers)} does not exist "
                              f"(the instance has {layout.number_of_frames})")
    single = _single_or_multipart([rep], len(numbers))
    parts = [_frame_part(path, layout, n - 1, rep) for n in numbers]
    return await send(request, parts, None if single else rep.media_type)


# --------------------------------------------------------------------------- bulk data


async def bulk(request: web.Request) -> web.StreamResponse:
    """Retrieve Bulkdata (PS3.18 10.4.1.1.3) at the URIs /metadata gives."""
    try:
        tag_path = dicomjson.parse_bulk_uri(dicomjson.BULK_URI_PREFIX + request.match_info["bulk"])
    except ValueError:
        raise http_error(400, "not a bulk data URI of this server") from None
    ctx, (row,) = await _instances(request)
    ranges = parse_accept(request)
    path = _path(ctx, row)
    if tag_path in _PIXEL_DATA_PATHS:
        return await _pixel_bulk(request, ranges, row, path)
    rep = media.choose_bulk(ranges)
    if rep is None:
        raise http_error(406, "bulk data is available as application/octet-stream")
    try:
        value = await asyncio.to_thread(pixels.element_value, path, tag_path)
    except FileNotFoundError:
        log.error("%s: a stored file is missing for %s", request.remote, request.path)
        raise http_error(500, "a stored file is missing") from None
    if value is None:
        raise http_error(404, "no such bulk data in this instance")
    part = Part(rep.content_type, lambda: _bytes_chunks(value), len(value))
    return await send(request, [part], None if not rep.multipart else media.OCTET_STREAM)


async def _bytes_chunks(data: bytes):
    yield data


async def _pixel_bulk(request: web.Request, ranges: list[media.MediaRange],
                      row: StoredInstance, path: Path) -> web.StreamResponse:
    """Pixel data as bulk data: uncompressed little endian octets (one part), or
    its compressed frames as stored, one part per frame (PS3.18 8.7.3.3.2)."""
    rep = _choose_frames(ranges, row)
    layout = await _layout(request, path)
    if not rep.stored or not layout.encapsulated:
        if not layout.encapsulated and layout.transfer_syntax != syntax.EXPLICIT_BE:
            part = Part(rep.content_type,
                        lambda: file_chunks(path, layout.value_offset, layout.length),
                        layout.length)
        else:
            part = Part(rep.content_type, lambda: thread_chunks(
                lambda: _all_uncompressed(path, layout)))
        return await send(request, [part], media.OCTET_STREAM if rep.multipart else None)
    if media.is_video(row.transfer_syntax_uid):
        parts = [Part(rep.content_type, lambda: thread_chunks(lambda: _video(path, layout)))]
    else:
        parts = [_frame_part(path, layout, i, rep) for i in range(layout.number_of_frames)]
    single = _single_or_multipart([rep], len(parts))
    return await send(request, parts, None if single else rep.media_type)


def _all_uncompressed(path: Path, layout: pixels.PixelLayout) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from pixels.uncompressed_frames(f, layout)


def _video(path: Path, layout: pixels.PixelLayout) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from pixels.stored_fragments(f, layout)


# --------------------------------------------------------------------------- rendered


def render_options(request: web.Request, *, thumbnail: bool) -> render.RenderOptions:
    """Rendering options from the query (PS3.18 8.3.5.1): viewport, quality, window;
    the media type from Accept. 400 for unusable values, 406 for other media types."""
    media_type = media.choose_rendered(parse_accept(request))
    if media_type is None:
        raise http_error(406, "rendered images are available as image/jpeg or image/png")
    query = request.query
    viewport, source = ((render.THUMBNAIL_SIDE, render.THUMBNAIL_SIDE), None) if thumbnail \
        else (None, None)
    quality, window = render.DEFAULT_QUALITY, None
    try:
        if "viewport" in query:
            viewport, source = render_params.parse_viewport(query["viewport"])
        if "quality" in query:
            quality = render_params.parse_quality(query["quality"])
        if "window" in query and not thumbnail:
            window = render_params.parse_window(query["window"])
    except ValueError as e:
        raise http_error(400, str(e)) from None
    return render.RenderOptions(media_type=media_type, viewport=viewport, source=source,
                                quality=quality, window=window)


async def render_instance(request: web.Request, ctx: WebContext, row: StoredInstance,
                          frame: int, options: render.RenderOptions) -> web.Response:
    """One frame (1-based) of ``row`` rendered as ``options`` say."""
    try:
        data = await asyncio.to_thread(render.render_file, _path(ctx, row), frame - 1, options)
    except IndexError:
        raise http_error(404, f"frame {frame} does not exist") from None
    except pixels.PixelError as e:
        # One line, no traceback: a known limitation or a damaged frame, not our error.
        log.warning("%s: %s: no rendered representation: %s", request.remote, request.path, e)
        raise http_error(406, f"no rendered representation: {e}") from None
    except ValueError as e:
        raise http_error(400, str(e)) from None
    except FileNotFoundError:
        log.error("%s: a stored file is missing for %s", request.remote, request.path)
        raise http_error(500, "a stored file is missing") from None
    return web.Response(body=data, content_type=options.media_type)


def _one_frame(request: web.Request) -> int:
    if "frames" not in request.match_info:
        # PS3.18 leaves the frame of a rendered multi-frame instance to the origin
        # server for single-frame media types: the first one, as Orthanc does.
        return 1
    numbers = _frame_numbers(request.match_info["frames"])
    if len(numbers) != 1:
        raise http_error(400, "one frame at a time can be rendered")
    return numbers[0]


async def rendered(request: web.Request) -> web.Response:
    """Retrieve Rendered Instance / Frame (PS3.18 10.4.1.1.4)."""
    frame = _one_frame(request)
    options = render_options(request, thumbnail=False)
    ctx, (row,) = await _instances(request)
    return await render_instance(request, ctx, row, frame, options)


async def thumbnail(request: web.Request) -> web.Response:
    """Retrieve Thumbnail (PS3.18 10.4.1.1.6) of a study, series, instance or frame:
    a small rendering of a representative frame (the first image of the study or
    series, in series and instance number order)."""
    frame = _one_frame(request)
    options = render_options(request, thumbnail=True)
    ctx, rows = await _instances(request)
    images = [row for row in rows if row.rows] or rows
    return await render_instance(request, ctx, images[0], frame, options)
