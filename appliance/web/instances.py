"""Orthanc-compatible ``POST /instances``: one DICOM file as the request body.

What Orthanc's own ``ImportDicomFiles.py`` and ``curl --data-binary @file
http://orthanc:8042/instances`` send, and what ``pacs-appliance import`` uses
while the daemon runs: the CLI reads the files (with its own permissions: the
daemon's systemd unit hides /home, /root and /tmp from it, so it could not open
them itself) and hands each one over the loopback, several at a time, so their
fsyncs share index commits. The body is streamed into an incoming file of the
archive, never held in memory, and goes through ``Archive.store_instance``: the
same checks, duplicate rule (OverwriteInstances), quotas and durability as a
C-STORE.

Answers: 200 with ``{"Status": "Success" | "AlreadyStored", "ID", "ParentStudy",
"ParentSeries", "Path"}`` (Orthanc's fields; the IDs here are the DICOM UIDs,
not Orthanc's hashes) or the store result's HTTP code (400 not DICOM or
truncated, 507 storage full or quota...) with ``{"HttpStatus", "Message",
"Status"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from appliance.store import IncomingFile, Origin, StoreOutcome
from appliance.web.common import context

__all__ = ["add_routes", "SOURCE"]

log = logging.getLogger(__name__)

# Origin.source of objects stored through this endpoint (metrics, status, index).
SOURCE = "REST"
# Received bytes are handed to a worker thread in batches of about this size.
_WRITE_BATCH = 1 << 20


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register this module's routes under root (no trailing slash)."""
    router.add_post(f"{root}/instances", store)


def _write(incoming: IncomingFile, chunks: list[bytes], last: bool) -> None:
    incoming.write(b"".join(chunks))
    if last:
        incoming.flush()


async def _receive(request: web.Request, incoming: IncomingFile) -> None:
    batch: list[bytes] = []
    batched = 0
    async for chunk in request.content.iter_any():
        batch.append(chunk)
        batched += len(chunk)
        if batched >= _WRITE_BATCH:
            await asyncio.to_thread(_write, incoming, batch, False)
            batch, batched = [], 0
    await asyncio.to_thread(_write, incoming, batch, True)


async def store(request: web.Request) -> web.Response:
    """Store the DICOM file of the request body (Orthanc's ``POST /instances``)."""
    archive = context(request).archive
    incoming = await asyncio.to_thread(archive.new_incoming, early_header=True)
    try:
        await _receive(request, incoming)
    except BaseException:
        await asyncio.to_thread(incoming.discard)
        raise
    outcome: StoreOutcome = await asyncio.to_thread(
        archive.store_instance, incoming, Origin(SOURCE, request.remote))
    result = outcome.result
    if not result.stored:
        # One line per refused file (the sender gets the same reason); no patient data in it.
        log.warning("%s: POST /instances refused (%s): %s", request.remote, result.label,
                    outcome.reason)
        body = {"HttpStatus": result.http_status, "Status": result.label,
                "Message": outcome.reason}
        return web.Response(status=result.http_status, body=json.dumps(body).encode(),
                            content_type="application/json")
    study, series, sop = (outcome.study_instance_uid, outcome.series_instance_uid,
                          outcome.sop_instance_uid)
    root = context(request).config.dicom_web.root.rstrip("/")
    body = {"Status": result.label, "ID": sop, "ParentStudy": study, "ParentSeries": series,
            "Path": f"{root}/studies/{study}/series/{series}/instances/{sop}"}
    return web.json_response(body)
