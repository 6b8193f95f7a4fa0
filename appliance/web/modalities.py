"""Orthanc-compatible ``POST /modalities/{name}/echo``: C-ECHO SCU to a modality.

As Orthanc 1.10 (OrthancRestModalities.cpp, ``DicomEcho``): ``name`` is a key
of ``DicomModalities`` (404 when there is none); the body is empty or a JSON
object whose optional ``Timeout`` (seconds, a whole number, 0: none) replaces
the modality's timeout for this echo; the answer is ``{}`` with 200 when the
modality answered Success, 500 otherwise. Orthanc's ``CheckFind`` (a C-FIND
after the echo) is not supported: ``true`` is refused with 400.

The C-ECHO itself is the daemon's (appliance.dicom.scu, through
``WebContext.dicom_echo``): web/ does not import dicom/.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from appliance.web.common import context, http_error, json_object


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register this module's routes under root (no trailing slash)."""
    router.add_post(f"{root}/modalities/{{name}}/echo", echo)


async def echo(request: web.Request) -> web.Response:
    """POST /modalities/{name}/echo: C-ECHO to a configured modality."""
    ctx = context(request)
    name = request.match_info["name"]
    modality = next((m for m in ctx.config.dicom_modalities if m.name == name), None)
    if modality is None:
        raise http_error(404, f"unknown modality: {name[:64]!r}")
    timeout = _timeout(await request.read())
    if ctx.dicom_echo is None:
        raise http_error(503, "DICOM is not running")
    if await asyncio.to_thread(ctx.dicom_echo, modality, timeout):
        return web.json_response({})
    raise http_error(500, f"C-ECHO to modality {name} failed (see the log)")


def _timeout(body: bytes) -> float | None:
    """The ``Timeout`` of an echo request's body, or None when it has none."""
    if not body.strip():
        return None
    request = json_object(body)
    if request.get("CheckFind", False) is not False:
        raise http_error(400, "CheckFind is not supported")
    timeout = request.get("Timeout")
    if timeout is None:
        return None
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise http_error(400, f"Timeout: expected a whole number of seconds, got {timeout!r}"[:200])
    return timeout
