"""WADO-URI (PS3.18 9, "URI Service") at ``DicomWeb.WadoRoot`` (default /wado).

``?requestType=WADO&studyUID=&seriesUID=&objectUID=`` with ``contentType``
application/dicom (optionally ``transferSyntax``), image/jpeg (the default for
images) or image/png, plus ``frameNumber``, ``rows``, ``columns``, ``region``,
``windowCenter``/``windowWidth`` and ``imageQuality`` for images.

As in Orthanc's DICOMweb plugin, only ``objectUID`` is required; ``studyUID``
and ``seriesUID``, when given, must be those of the instance (else 404).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from appliance.dicomfile import render
from appliance.web import media, render_params
from appliance.web.common import check_uid, context, http_error
from appliance.web.wado import can_transcode, instance_part, render_instance, send

__all__ = ["add_routes"]

log = logging.getLogger(__name__)

_KNOWN = frozenset({
    "requestType", "studyUID", "seriesUID", "objectUID", "contentType", "charset",
    "anonymize", "annotation", "rows", "columns", "region", "windowCenter", "windowWidth",
    "frameNumber", "imageQuality", "presentationUID", "presentationSeriesUID",
    "transferSyntax",
})


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register this module's routes under root (no trailing slash)."""
    router.add_get(root, wado)


def _one(query, name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise http_error(400, f"{name} given more than once")
    return values[0] if values else None


def _content_type(text: str | None, is_image: bool) -> str:
    """The first supported type of the contentType list (PS3.18 9.1.2.1.5)."""
    if text is None:
        return "image/jpeg" if is_image else media.DICOM
    for r in media.parse_accept([text]):
        if r.matches(media.DICOM) and r.media_type != "*/*" and r.media_type != "application/*":
            return media.DICOM
        if r.media_type in ("*/*",):
            return "image/jpeg" if is_image else media.DICOM
        for kind in ("image/jpeg", "image/png"):
            if r.matches(kind):
                return kind
    raise http_error(406, "contentType: application/dicom, image/jpeg or image/png")


def _int(query, name: str, lo: int, hi: int) -> int | None:
    text = _one(query, name)
    if text is None:
        return None
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise http_error(400, f"{name}: expected an integer {lo}-{hi}")
    return int(text)


def _float(query, name: str) -> float | None:
    text = _one(query, name)
    if text is None:
        return None
    try:
        return render_params.parse_number(text)
    except ValueError:
        raise http_error(400, f"{name}: expected a number") from None


def _region(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        x1, y1, x2, y2 = (render_params.parse_number(v) for v in text.split(","))
    except ValueError:
        raise http_error(400, "region: expected x1,y1,x2,y2 between 0.0 and 1.0") from None
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise http_error(400, "region: expected x1,y1,x2,y2 between 0.0 and 1.0")
    return x1, y1, x2, y2


async def wado(request: web.Request) -> web.StreamResponse:
    """One WADO-URI request."""
    query = request.query
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise http_error(400, f"unknown parameter {unknown[0][:40]!r}")
    if _one(query, "requestType") != "WADO":
        raise http_error(400, "requestType=WADO is required")
    sop = _one(query, "objectUID")
    if sop is None:
        raise http_error(400, "objectUID is required")
    check_uid(sop, "objectUID")
    study, series = _one(query, "studyUID"), _one(query, "seriesUID")
    for value, what in ((study, "studyUID"), (series, "seriesUID")):
        if value is not None:
            check_uid(value, what)
    if (_one(query, "anonymize") or "").lower() == "yes":
        # Refused rather than ignored: the answer would carry what was to be removed.
        raise http_error(400, "anonymize=yes is not supported")
    ctx = context(request)
    row = await asyncio.to_thread(ctx.archive.find_instance, sop)
    if row is None or study not in (None, row.study_instance_uid) \
            or series not in (None, row.series_instance_uid):
        raise http_error(404, "no such instance")
    content_type = _content_type(_one(query, "contentType"), bool(row.rows))

    if content_type == media.DICOM:
        ts = _one(query, "transferSyntax")
        if ts is not None:
            check_uid(ts, "transferSyntax")
        # Same rules as WADO-RS (PS3.18 8.7.3.4): default Explicit VR LE, lossy as stored.
        rep = media.choose_dicom([media.MediaRange(media.DICOM, False, ts)],
                                 row.transfer_syntax_uid,
                                 can_transcode=can_transcode(row.transfer_syntax_uid))
        if rep is None:
            raise http_error(406, f"the instance cannot be sent in transfer syntax {ts}")
        log.info("%s: WADO-URI retrieve, %s", request.remote,
                 "as stored" if rep.stored else "transcoded")
        return await send(request, [instance_part(ctx, row, rep)], None)

    frame = _int(query, "frameNumber", 1, 1 << 31) or 1
    rows = _int(query, "rows", 1, render.MAX_SIDE)
    columns = _int(query, "columns", 1, render.MAX_SIDE)
    center, width = _float(query, "windowCenter"), _float(query, "windowWidth")
    if (center is None) != (width is None):
        raise http_error(400, "windowCenter and windowWidth go together")
    if width is not None and width < 1:
        raise http_error(400, "windowWidth: expected a number >= 1")
    options = render.RenderOptions(
        media_type=content_type,
        viewport=(columns or 0, rows or 0) if rows or columns else None,
        region=_region(_one(query, "region")),
        quality=_int(query, "imageQuality", 1, 100) or render.DEFAULT_QUALITY,
        window=(center, width, "linear") if center is not None else None,
    )
    return await render_instance(request, ctx, row, frame, options)
