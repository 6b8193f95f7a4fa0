"""Sending on demand over HTTP, as Orthanc's REST API and DICOMweb plugin do it.

- ``GET /modalities``, ``GET {DicomWeb.Root}servers``: the destination names
  (JSON arrays, as Orthanc answers them);
- ``POST /modalities/{name}/store``, ``POST {DicomWeb.Root}servers/{name}/stow``
  with ``{"Resources": [UIDs]}`` (or the bare list, or one string): every
  instance of those studies, series or instances is queued for ``name`` in one
  transaction, and the answer comes at once: ``{"ID": task, "Path": "/jobs/<task>"}``.
  Orthanc names resources by its own ids (SHA-1 of the UIDs); this daemon takes
  the DICOM UIDs themselves. A UID that names nothing stored: 404, nothing queued.
  With ``"Synchronous": true`` the answer waits until the task is done: 200 with
  the job's JSON once every instance was delivered, 502 with it as soon as an
  attempt failed (the task stays queued and is retried like any other). Orthanc
  waits by default; this daemon only when asked, since its queue outlives the
  request.
- ``GET /jobs/{id}``: the task's progress (``State`` Pending, Running, Success
  or Failure; ``Progress`` 0-100; counts; ``CreationTime`` in Orthanc's form,
  UTC); ``GET /jobs``: the ids of the tasks kept (``?expand``: each one's JSON),
  as Orthanc lists its jobs.

The queue is the store's (``archive.outbox``); the workers sending it are the
daemon's (appliance.outbound), woken by the enqueue itself.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from appliance.store import UnknownResources
from appliance.web.common import CONTEXT, context, http_error


class SettledSignal:
    """Wakes the requests waiting for their task when the queue commits outcomes
    (``Outbox.on_settled``, called from the workers' threads)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: set[asyncio.Future] = set()

    def notify_threadsafe(self) -> None:
        """From any thread: wake every waiter."""
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            pass   # the loop is closed: nobody waits any more

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def arm(self) -> asyncio.Future:
        """A future the next notification completes; arm before looking at the
        state it may change, so no notification falls in between."""
        waiter = self._loop.create_future()
        self._waiters.add(waiter)
        return waiter

    async def wait(self, waiter: asyncio.Future, timeout: float) -> None:
        """Until ``waiter`` is woken or ``timeout`` seconds pass."""
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            self._waiters.discard(waiter)


SETTLED = web.AppKey("outbound_settled", SettledSignal)
# How often a waiting request looks at its task without being woken (outcomes
# written by another process: the ``queue retry`` command, say).
_LOOK_EVERY = 1.0


def install(app: web.Application, dicom_web_root: str | None) -> None:
    """Register the routes (:func:`add_routes`) and, while the application runs,
    the queue's hook that wakes synchronous requests."""
    add_routes(app.router, dicom_web_root)

    async def hook(app: web.Application) -> None:
        app[SETTLED] = signal = SettledSignal(asyncio.get_running_loop())
        app[CONTEXT].archive.outbox.on_settled = signal.notify_threadsafe

    async def unhook(app: web.Application) -> None:
        app[CONTEXT].archive.outbox.on_settled = lambda: None

    app.on_startup.append(hook)
    app.on_cleanup.append(unhook)


def add_routes(router: web.UrlDispatcher, dicom_web_root: str | None) -> None:
    """Register the routes; the DICOMweb ones under ``dicom_web_root`` (no trailing
    slash) unless None (DICOMweb disabled)."""
    router.add_get("/modalities", list_modalities)
    router.add_post("/modalities/{name}/store", store_to_modality)
    router.add_get("/jobs", jobs)
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
    uids, synchronous = _request(await request.read())
    outbox = context(request).archive.outbox
    try:
        task, count = await asyncio.to_thread(outbox.request, name, uids)
    except UnknownResources as e:
        raise http_error(404, f"no stored study, series or instance with UID {e.uids[0][:64]}") from None
    if synchronous and SETTLED in request.app:
        return await _when_done(request.app[SETTLED], outbox, task)
    return web.json_response({"ID": str(task), "Path": f"/jobs/{task}", "Instances": count})


async def _when_done(signal: SettledSignal, outbox, task_id: int) -> web.Response:
    """The answer of a synchronous send: once the task is done, or has failed once."""
    while True:
        waiter = signal.arm()
        task = await asyncio.to_thread(outbox.task, task_id)
        state = job_json(task) if task is not None else None
        if state is None or state["State"] == "Failure" or task["failing"]:
            body = (state or {}) | {"Path": f"/jobs/{task_id}"}
            raise web.HTTPBadGateway(text=json.dumps(body | {
                "HttpStatus": 502, "Message": (state or {}).get("ErrorDetails") or
                "the destination did not take every instance; the task is retried"}),
                content_type="application/json")
        if state["State"] == "Success":
            return web.json_response(state | {"Path": f"/jobs/{task_id}"})
        await signal.wait(waiter, _LOOK_EVERY)


def _request(body: bytes) -> tuple[list[str], bool]:
    """The UIDs of a send request's body ({"Resources": [...]}, a list, or one
    string), and whether it asks to wait ("Synchronous": true, or Orthanc's
    "Asynchronous": false)."""
    try:
        value = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        value = body.decode("ascii", "replace").strip()  # Orthanc accepts a bare id too
    synchronous = False
    if isinstance(value, dict):
        synchronous = value.get("Synchronous") is True or value.get("Asynchronous") is False
        value = value.get("Resources")
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v.strip() for v in value)):
        raise http_error(400, 'expected {"Resources": [UIDs of studies, series or instances]}')
    return [v.strip() for v in value], synchronous


async def jobs(request: web.Request) -> web.Response:
    """GET /jobs: the ids of the tasks kept; with ``expand``, each one's JSON."""
    outbox = context(request).archive.outbox
    if "expand" not in request.query:
        return web.json_response([str(t) for t in await asyncio.to_thread(outbox.task_ids)])

    def expanded() -> list[dict]:
        tasks = (outbox.task(t) for t in outbox.task_ids())
        return [job_json(t) for t in tasks if t is not None]   # pruned meanwhile: left out
    return web.json_response(await asyncio.to_thread(expanded))


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
        "ErrorDetails": task["last_error"] or "", "CreationTime": _orthanc_time(task["created_at"]),
    }


def _orthanc_time(t: float) -> str:
    """Orthanc's job timestamps: ISO 8601 basic form, UTC, microseconds."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}"
