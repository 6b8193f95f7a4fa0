"""The clinic's web UI at ``/``: plain HTML, CSS and JavaScript shipped in the package.

No build step, nothing fetched from the internet: ``appliance/web/ui/`` holds the
static files (our own code, no third-party library); this module serves them and the
few things the pages need that no service API gives:

* ``GET /`` the single page, with the settings it needs (DICOMweb root, viewer URL
  template, the server's name) inlined as JSON, so the first paint needs no extra
  round trip;
* ``GET /ui/{file}`` the static files (only those shipped; never a path from the URL);
  the page names them with ``?v=`` and a digest of their content, and such a request is
  cached for a year, so a page load costs no revalidation and an upgrade is never stale;
* ``GET /ui/dictionary.json`` tag -> keyword of the DICOM dictionary, for the
  attribute table of an instance (DICOM JSON carries tags only);
* ``GET /ui/worklist`` the worklist items as one line each, with the state of the
  MPPS (PS3.4 F.7.2.1) that refers to each (by StudyInstanceUID or AccessionNumber);
* ``GET /status/disk-history`` the disk samples kept by
  :class:`appliance.ops.diskhistory.DiskHistory` (30 days, hourly), for the plot.

Everything else the pages do goes through the same public APIs as any client:
QIDO-RS, WADO-RS (rendered frames, thumbnails, metadata), STOW-RS for uploads,
``/worklists``, ``/status``, and the delete / modify / send / ZIP endpoints. All of it
is behind the application's middlewares: the same authentication and access rules.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from appliance.web.common import context, http_error
from appliance.worklist import authoring

UI_DIR = Path(__file__).with_name("ui")
# The files that may be served, by name; anything else under /ui/ is 404.
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".svg": "image/svg+xml", ".txt": "text/plain"}

DiskHistorySource = Callable[[], list]
DISK_HISTORY = web.AppKey("disk_history", DiskHistorySource)


def install(app: web.Application) -> None:
    """Add the UI's routes to ``app`` (before it starts)."""
    files = {p.name: p for p in UI_DIR.iterdir() if p.suffix in _TYPES and p.is_file()}
    app.router.add_get("/", functools.partial(_index, files))
    app.router.add_get("/ui/dictionary.json", _dictionary)
    app.router.add_get("/ui/worklist", _worklist)
    # index.html only as / (with its settings filled in).
    static = {name: path for name, path in files.items() if name != "index.html"}
    app.router.add_get("/ui/{name}", functools.partial(_static, static))
    # Browsers ask for /favicon.ico whatever the page says: the same icon, no 404.
    app.router.add_get("/favicon.ico", functools.partial(_static, {"favicon.ico": files["icon.svg"]}))
    app.router.add_get("/status/disk-history", _disk_history)


def _settings(request: web.Request) -> dict:
    config = context(request).config
    return {"name": config.name,
            "dicomWebRoot": config.dicom_web.root.rstrip("/") if config.dicom_web.enable else None,
            "viewerUrlTemplate": config.viewer_url_template,
            "worklists": bool(config.worklists.enable and config.worklists.database)}


@functools.cache
def _page(files: tuple[tuple[str, Path], ...]) -> str:
    """index.html with each ``/ui/NAME`` it names made ``/ui/NAME?v=DIGEST``."""
    text = dict(files)["index.html"].read_text("utf-8")
    for name, path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        text = text.replace(f'"/ui/{name}"', f'"/ui/{name}?v={digest}"')
    return text


async def _index(files: dict[str, Path], request: web.Request) -> web.Response:
    """GET /: the page, with its settings inlined (``<`` escaped: it sits in HTML)."""
    settings = json.dumps(_settings(request)).replace("<", "\\u003c")
    page = await asyncio.to_thread(_page, tuple(sorted(files.items())))
    return web.Response(text=page.replace("{{SETTINGS}}", settings), content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


async def _static(files: dict[str, Path], request: web.Request) -> web.StreamResponse:
    """GET /ui/{name}: a shipped file; for a year when asked by digest (``?v=``),
    else revalidated each time."""
    path = files.get(request.match_info.get("name", "favicon.ico"))
    if path is None:
        raise http_error(404, "no such file")
    cache = "max-age=31536000, immutable" if "v" in request.query else "no-cache"
    return web.FileResponse(path, headers={"Content-Type": _TYPES[path.suffix],
                                           "Cache-Control": cache})


@functools.cache
def _dictionary_body() -> bytes:
    from pydicom.datadict import DicomDictionary  # lazy: only the attribute table needs it

    names = {f"{tag:08X}": entry[4] for tag, entry in DicomDictionary.items() if entry[4]}
    return json.dumps(names, separators=(",", ":")).encode()


async def _dictionary(request: web.Request) -> web.Response:
    """GET /ui/dictionary.json: {"00100010": "PatientName", ...}."""
    body = await asyncio.to_thread(_dictionary_body)
    return web.Response(body=body, content_type="application/json",
                        headers={"Cache-Control": "max-age=86400"})


async def _worklist(request: web.Request) -> web.Response:
    """GET /ui/worklist: one line per item (``worklist list``'s columns) with the
    newest MPPS state of its study or accession number, or null."""
    ctx = context(request)
    wl = ctx.config.worklists
    if not wl.enable or wl.database is None:
        raise http_error(404, "the worklist server is disabled (Worklists.Enable)")

    def read() -> list[dict]:
        items = authoring.list_items(wl.database)
        lines = []
        for item_id, attrs in items:
            line = authoring.describe(item_id, attrs)
            study = attrs.get(0x0020000D)
            line["StudyInstanceUID"] = str(study[1][0]) if study and study[1] else ""
            lines.append(line)
        states = ctx.archive.mpps_states(
            {line["StudyInstanceUID"] for line in lines if line["StudyInstanceUID"]},
            {line["AccessionNumber"] for line in lines if line["AccessionNumber"]})
        for line in lines:
            line["MPPS"] = (states.get(("study", line["StudyInstanceUID"]))
                            or states.get(("accession", line["AccessionNumber"])))
        return lines

    return web.json_response(await asyncio.to_thread(read))


async def _disk_history(request: web.Request) -> web.Response:
    """GET /status/disk-history: [{"time", "filesystems": [...]}, ...], oldest first."""
    source = request.app.get(DISK_HISTORY)
    if source is None:
        raise http_error(503, "disk history not available")
    return web.json_response(await asyncio.to_thread(source))
