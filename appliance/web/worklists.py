"""The REST API of Orthanc's Worklists plugin (1.12.10+), on the worklist folder.

* ``POST /worklists/create`` ``{"Tags": {...}, "Force": false}`` -> ``{"ID", "Path"}``
* ``GET /worklists`` -> ``[{"ID", "Tags"}, ...]``
* ``GET /worklists/{id}`` -> ``{"ID", "Tags"}``
* ``PUT /worklists/{id}`` ``{"Tags": {...}}`` (``Force`` defaults to true, as in Orthanc)
* ``DELETE /worklists/{id}`` -> ``{}``

``?format=Human|Short|Full`` chooses the ``Tags`` layout, as in Orthanc. Writes go through
:mod:`appliance.worklist.authoring` (validated, atomic), into the folder the daemon watches,
so a created item is answered by C-FIND a moment later. Reads read the folder (not the
served snapshot), so a GET right after a POST sees the item. Authentication and access rules
are the application's middlewares.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from appliance.web.common import context, http_error
from appliance.worklist import authoring
from appliance.worklist.source import WorklistFileError


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register the worklist routes under ``root`` (no trailing slash)."""
    router.add_post(f"{root}/worklists/create", create)
    router.add_get(f"{root}/worklists", list_all)
    router.add_get(f"{root}/worklists/{{id}}", get_one)
    router.add_put(f"{root}/worklists/{{id}}", put_one)
    router.add_delete(f"{root}/worklists/{{id}}", delete_one)


def _folder(request: web.Request) -> Path:
    wl = context(request).config.worklists
    if not wl.enable or wl.database is None:
        raise http_error(404, "the worklist server is disabled (Worklists.Enable)")
    return wl.database


def _format(request: web.Request) -> str:
    fmt = request.query.get("format", "Human")
    if fmt not in authoring.FORMATS:
        raise http_error(400, f"format: expected one of {', '.join(authoring.FORMATS)}")
    return fmt


def _id(request: web.Request) -> str:
    try:
        return authoring.check_id(request.match_info["id"])
    except authoring.AuthoringError as e:
        raise http_error(400, str(e)) from None


async def _body(request: web.Request) -> dict:
    try:
        body = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise http_error(400, "A JSON payload was expected") from None
    if not isinstance(body, dict):
        raise http_error(400, "A JSON object was expected")
    force = body.get("Force")
    if force is not None and not isinstance(force, bool):
        raise http_error(400, "'Force' must be true or false")
    return body


async def _write(request: web.Request, worklist_id: str | None, default_force: bool) -> web.Response:
    folder = _folder(request)
    body = await _body(request)
    settings = context(request).config.worklists
    force = body.get("Force", default_force)
    try:
        ds = authoring.dataset_from_tags(
            body.get("Tags"), force=force,
            set_study_instance_uid=settings.set_study_instance_uid_if_missing)
        worklist_id = await asyncio.to_thread(authoring.write_item, folder, ds, worklist_id)
    except authoring.AuthoringError as e:
        raise http_error(400, str(e)) from None
    return web.json_response({"ID": worklist_id, "Path": f"/worklists/{worklist_id}"})


async def create(request: web.Request) -> web.Response:
    """POST /worklists/create: a new item with a generated ID."""
    return await _write(request, None, default_force=False)


async def put_one(request: web.Request) -> web.Response:
    """PUT /worklists/{id}: create or replace the item (Force true unless said)."""
    return await _write(request, _id(request), default_force=True)


async def list_all(request: web.Request) -> web.Response:
    """GET /worklists: every readable item of the folder."""
    folder, fmt = _folder(request), _format(request)
    items = await asyncio.to_thread(authoring.list_items, folder)
    return web.json_response([{"ID": i, "Tags": authoring.tags_json(attrs, fmt)} for i, attrs in items])


async def get_one(request: web.Request) -> web.Response:
    """GET /worklists/{id}."""
    folder, fmt, worklist_id = _folder(request), _format(request), _id(request)
    try:
        attrs = await asyncio.to_thread(authoring.read_item, folder, worklist_id)
    except WorklistFileError as e:
        # The file is there but is no worklist item (not served either): the request is
        # understood, the resource cannot be processed (RFC 9110 15.5.21), not our fault.
        raise http_error(422, f"worklist {worklist_id}: the file is not a readable "
                              f"worklist item: {e}") from None
    if attrs is None:
        raise http_error(404, "Worklist not found")
    return web.json_response({"ID": worklist_id, "Tags": authoring.tags_json(attrs, fmt)})


async def delete_one(request: web.Request) -> web.Response:
    """DELETE /worklists/{id}."""
    folder, worklist_id = _folder(request), _id(request)
    if not await asyncio.to_thread(authoring.delete_item, folder, worklist_id):
        raise http_error(404, "Worklist not found")
    return web.json_response({})
