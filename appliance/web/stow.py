"""STOW-RS (PS3.18 10.5): POST {root}/studies[/{study}] with a multipart/related body
of application/dicom parts.

The body is parsed as it arrives (:class:`appliance.web.multipart.MultipartParser`);
each part is written straight into an incoming file of the archive, never held
in memory. Storing starts once the whole body has been received and found
well-formed, so a garbled body (400) or one past ``DicomWeb.MaximumStowBodySize``
(413) stores nothing and leaves no file behind. Then every part goes through
``Archive.store_instance`` - the same path as C-STORE - in worker threads, in
parallel, so their fsyncs overlap and their index rows share commits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import field
from typing import Any

import pydicom
from aiohttp import web

from appliance.lazyclasses import lazy_dataclass
from appliance.store import Archive, IncomingFile, Origin, StoreOutcome, StoreResult
from appliance.web import media
from appliance.web.common import check_uid, context, dicomweb_url, http_error
from appliance.web.multipart import MultipartError, MultipartParser, check_boundary

__all__ = ["add_routes", "STUDY_MISMATCH", "PART_NOT_DICOM"]

log = logging.getLogger(__name__)

# PS3.18 Table I.2-2 has no code for "not in the study of the request URL" and
# allows implementation-specific ones: this one is in the Cxxx "Error: Cannot
# understand" range. (Orthanc answers 0x0110 Processing failure.)
STUDY_MISMATCH = 0xC409
# A part that is not application/dicom (PS3.18 Table I.2-2: Cannot understand).
PART_NOT_DICOM = 0xC000
# More parts than this in one request is refused (413): each one is a file.
MAX_PARTS = 10_000
# Received bytes are handed to a worker thread in batches of about this size.
_WRITE_BATCH = 1 << 20
_MB = 1 << 20
_PART10_HEAD = 132  # preamble + "DICM" (PS3.10 7.1)


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register this module's routes under root (no trailing slash)."""
    router.add_post(root + "/studies", store)
    router.add_post(root + "/studies/{study}", store)


@lazy_dataclass
class _Received:
    """One part of the request body, as received."""

    incoming: IncomingFile | None  # None when the part was not application/dicom
    content_type: str
    outcome: StoreOutcome | None = None
    failure: int = 0  # FailureReason when refused before the archive saw it
    reason: str = ""
    head: bytes | None = b""  # first bytes, until the start of the part is recognised


@lazy_dataclass
class _Body:
    parts: list[_Received] = field(default_factory=list)
    size: int = 0


def _check_request(request: web.Request) -> str:
    """The boundary of an acceptable STOW-RS request; 406/415/400 otherwise."""
    accept = media.parse_accept(request.headers.getall("Accept", []))
    if not media.choose_json(accept):
        raise http_error(406, "STOW-RS responses are application/dicom+json")
    kind, params = media.parse_media_type(request.headers.get("Content-Type", ""))
    if kind != "multipart/related":
        raise http_error(415, "STOW-RS takes a multipart/related body of application/dicom parts")
    part_type = params.get("type", media.DICOM).strip().lower()
    if part_type != media.DICOM:
        # PS3.18 10.5.1 also allows metadata + bulk data bodies: not supported here.
        raise http_error(415, f'multipart/related type "{part_type[:60]}" is not supported: '
                              'send type="application/dicom"')
    try:
        return check_boundary(params.get("boundary"))
    except MultipartError as e:
        raise http_error(400, str(e)) from None


async def store(request: web.Request) -> web.Response:
    """Store Instances (PS3.18 10.5)."""
    started = time.monotonic()
    ctx = context(request)
    study = request.match_info.get("study")
    if study is not None:
        check_uid(study, "StudyInstanceUID")
    boundary = _check_request(request)
    limit = ctx.config.dicom_web.maximum_stow_body_size * _MB or None
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise http_error(413, f"the body is larger than the {limit // _MB} MB allowed "
                              "(DicomWeb.MaximumStowBodySize)")
    body = _Body()
    try:
        await _receive(request, ctx.archive, boundary, limit, body)
    except BaseException:
        await asyncio.to_thread(_discard, body)
        raise
    if not body.parts:
        raise http_error(400, "the body has no part")
    origin = Origin("DICOMweb", request.remote)
    await asyncio.gather(*(asyncio.to_thread(_store_part, ctx.archive, origin, part, study)
                           for part in body.parts))
    status, payload = _response(body.parts, study, dicomweb_url(request))
    stored = sum(1 for p in body.parts if p.outcome is not None and p.outcome.result.stored)
    log.info("%s: STOW-RS: %d stored, %d failed, %d bytes, %.2f s, status %d", request.remote,
             stored, len(body.parts) - stored, body.size, time.monotonic() - started, status)
    return web.Response(status=status, body=json.dumps(payload).encode("utf-8"),
                        content_type="application/dicom+json")


async def _receive(request: web.Request, archive: Archive, boundary: str, limit: int | None,
                   body: _Body) -> None:
    """Parse the body as it arrives, each DICOM part into its own incoming file."""
    parser = MultipartParser(boundary)
    current: _Received | None = None
    batch: list[bytes] = []
    batched = 0
    try:
        async for chunk in request.content.iter_any():
            body.size += len(chunk)
            if limit is not None and body.size > limit:
                raise http_error(413, f"the body is larger than the {limit // _MB} MB allowed "
                                      "(DicomWeb.MaximumStowBodySize)")
            for event, value in parser.feed(chunk):
                if event == "start":
                    if parser.parts > MAX_PARTS:
                        raise http_error(413, f"more than {MAX_PARTS} parts in one request")
                    current = await _start_part(archive, value)
                    body.parts.append(current)
                elif event == "data" and current is not None and current.incoming is not None:
                    batch.append(value)
                    batched += len(value)
                    if batched >= _WRITE_BATCH:
                        await asyncio.to_thread(_write, current, batch)
                        batch, batched = [], 0
                elif event == "end" and current is not None:
                    if current.incoming is not None:
                        await asyncio.to_thread(_write, current, batch, True)
                    batch, batched, current = [], 0, None
            if parser.done:
                break
        parser.close()
    except MultipartError as e:
        raise http_error(400, f"garbled multipart body: {e}") from None


async def _start_part(archive: Archive, headers: dict[str, str]) -> _Received:
    content_type = headers.get("content-type", media.DICOM)
    kind, _ = media.parse_media_type(content_type)
    if kind != media.DICOM:
        return _Received(None, content_type, failure=PART_NOT_DICOM,
                         reason=f"part is {kind[:60]!r}, not application/dicom")
    return _Received(await asyncio.to_thread(archive.new_incoming), content_type)


def _write(part: _Received, chunks: list[bytes], last: bool = False) -> None:
    """Write received bytes of ``part`` (worker thread)."""
    incoming = part.incoming
    assert incoming is not None
    data = b"".join(chunks)
    if incoming.size == 0 and part.head is not None:
        part.head += data
        if len(part.head) < _PART10_HEAD and not last:
            return  # not enough to recognise the start yet
        data, part.head = part.head, None
        if data[128:132] != b"DICM" and data[:2] == b"\x02\x00":
            # File Meta without the preamble and "DICM" (what pydicom writes for a
            # Dataset built in memory, so what dicomweb-client sends for one): make
            # it the Part-10 file the archive stores.
            incoming.write(bytes(128) + b"DICM")
    if data:
        incoming.write(data)
    if last:
        incoming.flush()


def _discard(body: _Body) -> None:
    for part in body.parts:
        if part.incoming is not None:
            part.incoming.discard()


def _peek_uids(incoming: IncomingFile) -> dict[str, str]:
    """SOP Class, SOP Instance and Study Instance UIDs of a received part, if readable."""
    try:
        ds = pydicom.dcmread(incoming.path, stop_before_pixels=True, specific_tags=[
            "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
    except Exception:  # noqa: BLE001 - the archive will say why it is unreadable
        return {}
    return {kw: str(ds.get(kw, "")).strip() for kw in
            ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")}


def _store_part(archive: Archive, origin: Origin, part: _Received, study: str | None) -> None:
    """Store one received part (worker thread); the outcome lands in ``part``."""
    if part.incoming is None:
        log.warning("%s: STOW-RS part refused: %s", origin.peer, part.reason)
        return
    if study is not None:
        uids = _peek_uids(part.incoming)
        found = uids.get("StudyInstanceUID")
        if found and found != study:
            # PS3.18 10.5.1: instances of another study than the URL's are refused.
            part.incoming.discard()
            part.failure, part.reason = STUDY_MISMATCH, "instance of another study than the URL's"
            part.outcome = StoreOutcome(StoreResult.INVALID, part.reason,
                                        uids.get("SOPClassUID"), uids.get("SOPInstanceUID"),
                                        found)
            log.warning("%s: STOW-RS part refused: %s", origin.peer, part.reason)
            return
    part.outcome = archive.store_instance(part.incoming, origin)
    if not part.outcome.result.stored:
        log.warning("%s: STOW-RS part refused (%s): %s", origin.peer,
                    part.outcome.result.label, part.outcome.reason)


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _response(parts: list[_Received], study: str | None, base: str) -> tuple[int, dict]:
    """HTTP status and Store Instances Response Module (PS3.18 10.5.3, Table 10.5.3-2)."""
    referenced, failed, studies = [], [], set()
    for part in parts:
        outcome = part.outcome
        if outcome is not None and outcome.result.stored and not part.failure:
            url = (f"{base}/studies/{outcome.study_instance_uid}/series/"
                   f"{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}")
            referenced.append({
                "00081150": _uid(outcome.sop_class_uid),
                "00081155": _uid(outcome.sop_instance_uid),
                "00081190": {"vr": "UR", "Value": [url]},
            })
            studies.add(outcome.study_instance_uid)
        else:
            reason = part.failure or (outcome.result.dimse_status if outcome else PART_NOT_DICOM)
            failed.append({
                "00081150": _uid(outcome.sop_class_uid if outcome else None),
                "00081155": _uid(outcome.sop_instance_uid if outcome else None),
                "00081197": {"vr": "US", "Value": [reason]},
            })
    payload: dict[str, Any] = {}
    retrieve_study = study or (next(iter(studies)) if len(studies) == 1 else None)
    payload["00081190"] = ({"vr": "UR", "Value": [f"{base}/studies/{retrieve_study}"]}
                           if retrieve_study else {"vr": "UR"})
    if failed:
        payload["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        payload["00081199"] = {"vr": "SQ", "Value": referenced}
    if not failed:
        return 200, payload
    if referenced:
        return 202, payload  # some stored, some failed
    if all(p.outcome is not None and p.outcome.result is StoreResult.OUT_OF_RESOURCES
           for p in parts):
        # Storage full or quota reached (docs/DESIGN.md, the one promise): nothing stored.
        return 507, payload
    # PS3.18 Table 10.5.3-1: 409 when no instance could be stored (conflict, or a
    # mixture of reasons).
    return 409, payload
