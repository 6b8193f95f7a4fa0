"""``GET /metrics`` (Prometheus text), ``GET /status`` (the snapshot as JSON, for the
web UI's system page) and ``GET /status.html`` (a small read-only status page, for a
text browser; ``/`` is the web UI, appliance.web.ui).

Both render the daemon's status snapshot, which the daemon hands over as a
callable under :data:`STATUS` (absent in an application built without a daemon:
503). A middleware times every request for the latency histogram. Both routes are
behind the application's authentication like every other route.
"""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import web

from appliance.ops.adoption_view import adoption_text, import_texts
from appliance.ops.disk import human_bytes
from appliance.ops.metrics import CONTENT_TYPE, HttpStats, outbound_line, queries_summary, render
from appliance.web.common import CONTEXT, http_error

StatusSource = Callable[[], dict]
STATUS = web.AppKey("status", StatusSource)
HTTP_STATS = web.AppKey("http_stats", HttpStats)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install(app: web.Application) -> None:
    """Add the routes and the timing middleware to ``app`` (before it starts)."""
    app[HTTP_STATS] = HttpStats()
    config = app[CONTEXT].config
    prefixes = [("/metrics", "metrics")]
    if config.dicom_web.enable:
        prefixes.append((config.dicom_web.root.rstrip("/") + "/", "dicomweb"))
        if config.dicom_web.enable_wado:
            prefixes.append((config.dicom_web.wado_root, "wado"))
    app.middlewares.append(_timing(prefixes))
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status_json)
    app.router.add_get("/status.html", status_page)


def _service(path: str, prefixes: list[tuple[str, str]]) -> str:
    if path.startswith("/status"):
        return "status"
    if path == "/" or path.startswith("/ui/"):
        return "ui"
    for prefix, name in prefixes:
        if path.startswith(prefix):
            return name
    return "other"


def _timing(prefixes: list[tuple[str, str]]):
    @web.middleware
    async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            request.app[HTTP_STATS].observe(_service(request.path, prefixes), status,
                                            time.perf_counter() - t0)

    return timing


def _snapshot(request: web.Request) -> dict:
    source = request.app.get(STATUS)
    if source is None:
        raise http_error(503, "status not available")
    return source()


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition format."""
    text = render(_snapshot(request), request.app[HTTP_STATS])
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def status_json(request: web.Request) -> web.Response:
    """The status snapshot (what ``pacs-appliance status --json`` prints)."""
    return web.json_response(_snapshot(request))


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days} d {hours} h" if days else f"{hours} h {rest // 60} min"


async def status_page(request: web.Request) -> web.Response:
    """A small read-only HTML summary of the status."""
    s = _snapshot(request)
    c = s.get("counts") or {}
    rows: list[tuple[str, str]] = [
        ("Version", f"{s['version']}, up {_duration(s['uptime'])}"),
        ("DICOM", f"AE title {s['dicom_aet']}, port {s['ports']['dicom']}, "
                  f"{s['associations']} association(s) open"),
        ("Stored", f"{c.get('patients', '?')} patients, {c.get('studies', '?')} studies, "
                   f"{c.get('series', '?')} series, {c.get('instances', '?')} instances, "
                   f"{human_bytes(c.get('bytes'))}"),
        ("Since start", f"{s['stored_since_start']} received, {s['failed_since_start']} failed"),
    ]
    if s.get("http_authentication") is False:
        rows.insert(0, ("WARNING", "HTTP authentication is OFF: anyone who reaches this port "
                                   "reads and changes every study (AuthenticationEnabled)"))
    queries = queries_summary(s)
    if queries is not None:
        rows.append(("Queries", queries))
    disk = s.get("disk")
    if disk:
        for fs in disk["filesystems"]:
            rows.append((f"Disk {'+'.join(fs['roles'])}",
                         f"{fs['percent']:.0f}% used, {human_bytes(fs['free'])} free ({fs['path']})"
                         + ("" if fs["level"] == "OK" else f" — {fs['level']}")))
        for m in disk["missing"]:
            # As `status` says it: a backup disk not mounted must be seen at a glance.
            rows.append((f"Disk {m['role']}", f"{m['path']} MISSING (not mounted?)"))
        f = disk["forecast"]
        if f["bytes_per_day"] is not None:
            left = f["days_left"]
            rows.append(("Growth", f"{human_bytes(f['bytes_per_day'])}/day"
                         + (f", full in {left:.0f} days" if left is not None else "")))
    adoption = adoption_text(s.get("adoption"))
    if adoption:
        rows.append(("Orthanc archive", adoption))
    rows += [("Import", text) for text in import_texts(s.get("imports"))]
    adm = s.get("admission") or {}
    if adm:
        rows.append(("New objects", "accepted" if adm["accepting"] else f"REFUSED: {adm['refusing']}"))
    b = s.get("backups") or {}
    last, ok = b.get("last_attempt"), b.get("last_success")
    rows.append(("Last backup", "never" if not last else
                 f"{_when(last['time'])} {'OK' if last['ok'] else 'FAILED'}: {last['message']}"))
    if ok and last and not last["ok"]:
        rows.append(("Last good backup", _when(ok["time"])))
    rows.append(("Next backup", _when(b.get("next")) if b.get("next") else "not scheduled"))
    for d in s.get("outbound") or []:
        rows.append((f"Send to {d['destination']}", outbound_line(d, s["time"])))
    err = s.get("last_error")
    rows.append(("Last error", f"{_when(err['time'])} {err['message']}" if err else "none"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>{html.escape(s['name'])} — pacs-appliance</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:2em;vertical-align:top}}
td,th{{padding:.2em}}</style></head>
<body><h1>{html.escape(s['name'])}</h1><table>{body}</table>
<p><a href="/metrics">metrics</a></p></body></html>
"""
    return web.Response(text=page, content_type="text/html")
