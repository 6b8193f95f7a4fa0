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

``pacs-appliance import`` names its run in an ``X-Pacs-Import`` header
("<run id> <files in the run>"): the daemon counts each run's files as they
arrive, so ``status``, the status page and the UI's System page show an import's
progress (:class:`ImportRuns`); a run not heard of for a minute is dropped.

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
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from appliance.lazyclasses import lazy_dataclass
from appliance.store import IncomingFile, Origin, StoreOutcome, StoreResult
from appliance.web.common import context

__all__ = ["add_routes", "IMPORT_HEADER", "IMPORT_RUNS", "ImportRuns", "SOURCE"]

log = logging.getLogger(__name__)

# Origin.source of objects stored through this endpoint (metrics, status, index).
SOURCE = "REST"
IMPORT_HEADER = "X-Pacs-Import"
# A run is shown until this long after its last file (the command ended or died).
_RUN_FORGOTTEN = 60.0
# Received bytes are handed to a worker thread in batches of about this size.
_WRITE_BATCH = 1 << 20


@lazy_dataclass
class _Run:
    total: int
    started: float
    last: float
    done: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    bytes: int = 0


@dataclass
class ImportRuns:
    """The ``pacs-appliance import`` runs feeding this daemon, for the status."""

    _runs: dict[str, _Run] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, header: str, outcome: StoreOutcome, size: int) -> None:
        """One file of the run the header names ("<run id> <total files>")."""
        run_id, _, total = header.partition(" ")
        now = time.time()
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                if len(self._runs) >= 16:  # a client cannot grow this without bound
                    return
                run = self._runs[run_id] = _Run(int(total) if total.isdigit() else 0, now, now)
            run.last = now
            run.done += 1
            run.bytes += size
            if outcome.result.stored:
                if outcome.result is StoreResult.ALREADY_STORED:
                    run.duplicates += 1
                else:
                    run.stored += 1
            else:
                run.refused += 1

    def snapshot(self) -> list[dict]:
        """The runs heard of in the last minute: files done of total, stored,
        duplicates, refused, bytes, files per second."""
        now = time.time()
        with self._lock:
            for run_id in [k for k, r in self._runs.items() if now - r.last > _RUN_FORGOTTEN]:
                del self._runs[run_id]
            return [{"done": r.done, "total": r.total, "stored": r.stored,
                     "duplicates": r.duplicates, "refused": r.refused, "bytes": r.bytes,
                     "rate": round(r.done / max(now - r.started, 1e-3), 1),
                     "seconds_since_last": round(now - r.last, 1)}
                    for r in self._runs.values()]


IMPORT_RUNS = web.AppKey("import_runs", ImportRuns)


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
    run = request.headers.get(IMPORT_HEADER)
    if run is not None and IMPORT_RUNS in request.app:
        request.app[IMPORT_RUNS].count(run, outcome, incoming.size)
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
