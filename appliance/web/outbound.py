"""Sending on demand over HTTP, as Orthanc's REST API and DICOMweb plugin do it.

- ``GET /modalities``, ``GET {DicomWeb.Root}servers``: the destination names
  (JSON arrays, as Orthanc answers them);
- ``POST /modalities/{name}/store``, ``POST {DicomWeb.Root}servers/{name}/stow``
  with ``{"Resources": [UIDs]}`` (or the bare list, or one string): every
  instance of those studies, series or instances is queued for ``name`` in one
  transaction, and the answer comes at once: ``{"ID": task, "Path": "/jobs/<task>"}``.
  Orthanc names resources by its own ids (SHA-1 of the UIDs); this daemon takes
  the DICOM UIDs themselves. A UID that names nothing stored: 404, nothing queued.
- ``GET /jobs/{id}``: the task's progress (``State`` Pending, Running, Success
  or Failure; ``Progress`` 0-100; counts).

The queue is the store's (``archive.outbox``); the workers sending it are the
daemon's (appliance.outbound), woken by the enqueue itself.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from appliance.store import UnknownResources
from appliance.web.common import context, http_error


def add_routes(router: web.UrlDispatcher, dicom_web_root: str | None) -> None:
    """Register the routes; the DICOMweb ones under ``dicom_web_root`` (no trailing
    slash) unless None (DICOMweb disabled)."""
    router.add_get("/modalities", list_modalities)
    router.add_post("/modalities/{name}/store", store_to_modality)
    router.add_get("/jobs/{id}", job)
    if dicom_web_root is not None:
        router.add_get(f"{dicom_web_root}/servers", list_servers)
        router.add_post(f"{dicom_web_root}/servers/{{name}}/stow", stow_to_server)


async def list_modalities(request: web.Request) -> web.Response:
    """GET /modalities: the DicomModalities names."""
    return web.json_response([m.name for m in context(request).config.dicom_modalities])


async def list_servers(request: web.Request) -> web.Response:
    """GET /dicom-web/servers: the DicomWeb.Servers names."""
    return web.json_response([s.name for s in context(request).config.dicom_web.servers])


async def store_to_modality(request: web.Request) -> web.Response:
    """POST /modalities/{name}/store: queue a C-STORE of the resources to a modality."""
    names = [m.name for m in context(request).config.dicom_modalities]
    return await _enqueue(request, names, "modality")


async def stow_to_server(request: web.Request) -> web.Response:
    """POST /dicom-web/servers/{name}/stow: queue a STOW-RS of the resources to a server."""
    names = [s.name for s in context(request).config.dicom_web.servers]
    return await _enqueue(request, names, "DICOMweb server")


async def _enqueue(request: web.Request, known: list[str], what: str) -> web.Response:
    name = request.match_info["name"]
    if name not in known:
        raise http_error(404, f"unknown {what}: {name[:64]!r}")
    uids = _resources(await request.read())
    try:
        task, count = await asyncio.to_thread(context(request).archive.outbox.request, name, uids)
    except UnknownResources as e:
        raise http_error(404, f"no stored study, series or instance with UID {e.uids[0][:64]}") from None
    return web.json_response({"ID": str(task), "Path": f"/jobs/{task}", "Instances": count})


def _resources(body: bytes) -> list[str]:
    """The UIDs of a send request's body: {"Resources": [...]}, a list, or one string."""
    try:
        value = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        value = body.decode("ascii", "replace").strip()  # Orthanc accepts a bare id too
    if isinstance(value, dict):
        value = value.get("Resources")
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v.strip() for v in value)):
        raise http_error(400, 'expected {"Resources": [UIDs of studies, series or instances]}')
    return [v.strip() for v in value]


async def job(request: web.Request) -> web.Response:
    """GET /jobs/{id}: a send task's progress."""
    try:
        task_id = int(request.match_info["id"])
    except ValueError:
        raise http_error(404, "unknown job") from None
    task = await asyncio.to_thread(context(request).archive.outbox.task, task_id)
    if task is None:
        raise http_error(404, "unknown job")
    return web.json_response(job_json(task))


def job_json(task: dict) -> dict:
    """A task as Orthanc-like job JSON (``State``, ``Progress``...)."""
    states = task["states"]
    pending, sent = states.get("pending", 0), states.get("sent", 0)
    given_up = states.get("dropped", 0) + states.get("cancelled", 0)
    total = pending + sent + given_up
    done = sent + given_up
    if pending == 0:
        state = "Success" if given_up == 0 else "Failure"
    elif done == 0 and task["failing"] == 0:
        state = "Pending"
    else:
        state = "Running"
    return {
        "ID": str(task["id"]), "Type": "Send" if task["kind"] == "store" else
        "StorageCommitmentReport", "Destination": task["destination"], "State": state,
        "Progress": int(100 * done / total) if total else 100, "Instances": total,
        "Sent": sent, "Failed": given_up + task["failing"], "Pending": pending,
        "Dropped": states.get("dropped", 0), "Cancelled": states.get("cancelled", 0),
        "ErrorDetails": task["last_error"] or "", "CreationTime": task["created_at"],
    }
