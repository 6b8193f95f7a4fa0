"""Delete, fix patient, and the audit trail over HTTP (issue 16.2, 16.3).

- ``DELETE {DicomWeb.Root}/studies/{study}[/series/{series}[/instances/{instance}]]``
  (the extension dcm4chee and the cloud DICOMweb servers offer): 204 deleted,
  404 unknown (a second delete too), 400 malformed UID; an optional
  ``?reason=`` goes to the audit trail.
- ``POST /studies/{StudyInstanceUID}/modify``: Orthanc's shape (its
  ``/studies/{id}/modify``) with the DICOM UID for Orthanc's id; body
  ``{"Replace": {"PatientName", "PatientID", "PatientBirthDate",
  "PatientSex", "AccessionNumber"}, "Reason": "...", "KeepUIDs": false}``,
  answer ``{"StudyInstanceUID": ..., "Instances": n}``; 409 when the study was
  deleted or fixed by another request meanwhile, 507 when the new files do not
  fit (nothing changed either way).
- ``GET /audit[?limit=&offset=]``: who deleted or changed what, newest first.

Thin: the Archive does the work (appliance.store: delete, modify_study) and
writes the audit entry and its log line; this module parses and maps.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from appliance.store import InvalidChange, ModifyConflict, ModifyError, ModifyNoSpace
from appliance.web.auth import AUTH_USER
from appliance.web.common import check_uid, context, http_error, json_object, request_uids

# A fix-patient body is a few hundred bytes; anything much larger is not one.
_MAX_BODY = 64 << 10
_MAX_REASON = 1024
_AUDIT_PAGE = 1000
_BODY_KEYS = {"Replace", "Reason", "KeepUIDs"}


def add_dicomweb_routes(router: web.UrlDispatcher, root: str) -> None:
    """DELETE of a study, series or instance under the DICOMweb root."""
    study = root + "/studies/{study}"
    for path in (study, study + "/series/{series}", study + "/series/{series}/instances/{instance}"):
        router.add_delete(path, delete)


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """The fix-patient endpoint and the audit trail under ``root``."""
    router.add_post(root + "/studies/{study}/modify", modify)
    router.add_get(root + "/audit", audit)


def _user(request: web.Request) -> str:
    """Who asks, for the audit trail ("anonymous" with authentication off)."""
    return request.get(AUTH_USER) or "anonymous"


def _reason(value: object) -> str:
    if not isinstance(value, str) or len(value) > _MAX_REASON:
        raise http_error(400, f"Reason: a text of at most {_MAX_REASON} characters")
    return value


async def delete(request: web.Request) -> web.Response:
    """Delete a study, a series of it or an instance of that: 204, or 404."""
    study, series, sop = request_uids(request)
    reason = _reason(request.query.get("reason", ""))
    archive = context(request).archive
    gone = await asyncio.to_thread(archive.delete, study, series, sop, user=_user(request),
                                   reason=reason)
    if gone is None:
        raise http_error(404, f"no such {'instance' if sop else 'series' if series else 'study'}")
    return web.Response(status=204)


async def modify(request: web.Request) -> web.Response:
    """Fix the patient of a study (new UIDs unless KeepUIDs)."""
    study = check_uid(request.match_info["study"], "StudyInstanceUID")
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise http_error(413, "body too large for a modification")
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise http_error(413, "body too large for a modification")
    body = json_object(raw)
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise http_error(400, f"not supported here: {', '.join(map(str, unknown))[:200]} "
                              f"(give {', '.join(sorted(_BODY_KEYS))})")
    keep_uids = body.get("KeepUIDs", False)
    if not isinstance(keep_uids, bool):
        raise http_error(400, "KeepUIDs: true or false")
    archive = context(request).archive
    try:
        done = await asyncio.to_thread(archive.modify_study, study, body.get("Replace"),
                                       keep_uids=keep_uids, user=_user(request),
                                       reason=_reason(body.get("Reason", "")))
    except InvalidChange as e:
        raise http_error(400, f"Replace: {e}") from None
    except ModifyConflict as e:
        raise http_error(409, f"study not modified: {e}") from None
    except ModifyNoSpace as e:
        raise http_error(507, f"study not modified: {e}") from None
    except ModifyError as e:
        raise http_error(500, f"study not modified: {e}") from None
    if done is None:
        raise http_error(404, "no such study")
    return web.json_response({"StudyInstanceUID": done.study_instance_uid,
                              "Instances": done.instances})


async def audit(request: web.Request) -> web.Response:
    """The audit trail, newest first (``limit``, at most 1000, and ``offset``)."""
    try:
        limit = int(request.query.get("limit", _AUDIT_PAGE))
        offset = int(request.query.get("offset", 0))
    except ValueError:
        raise http_error(400, "limit and offset are integers") from None
    if not 0 < limit <= _AUDIT_PAGE or offset < 0:
        raise http_error(400, f"limit: 1 to {_AUDIT_PAGE}; offset: 0 or more")
    archive = context(request).archive
    entries = await asyncio.to_thread(archive.audit_trail, limit, offset)
    return web.json_response([e.as_json() for e in entries])
