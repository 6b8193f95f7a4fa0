"""Orthanc-compatible ``GET /system`` and ``GET /statistics``.

The field names and types are those of Orthanc 1.10 (OrthancRestSystem.cpp,
checked against a running Debian Orthanc 1.10.1), so scripts and viewers
written for it keep working:

* ``/system``: ``Version`` and ``ApiVersion`` are those of the Orthanc REST
  API this daemon answers like (1.10.1, API 16), because clients test them
  to decide which calls exist; our own version is in the extra
  ``PacsApplianceVersion`` field. ``DicomPort`` and ``HttpPort`` are the
  ports actually bound (the configured port may be 0). ``DatabaseVersion``
  is our index schema version. No plugins, so ``PluginsEnabled`` is false
  and the plugin fields are null. ``IsHttpServerSecure`` follows Orthanc:
  false only when remote access is allowed without authentication.
* ``/statistics``: counts as numbers, byte totals as decimal strings and
  MiB totals as whole numbers (Orthanc's types); no storage compression, so
  the uncompressed size is the disk size.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from appliance import __version__
from appliance.store import SCHEMA_VERSION
from appliance.web.common import context

ORTHANC_VERSION = "1.10.1"
ORTHANC_API_VERSION = 16
_MIB = 1024 * 1024


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register this module's routes under root (no trailing slash)."""
    router.add_get(f"{root}/system", system)
    router.add_get(f"{root}/statistics", statistics)


async def system(request: web.Request) -> web.Response:
    """GET /system: what the server is and where it listens."""
    ctx = context(request)
    config = ctx.config
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return web.json_response({
        "ApiVersion": ORTHANC_API_VERSION,
        "CheckRevisions": False,
        "DatabaseBackendPlugin": None,
        "DatabaseVersion": SCHEMA_VERSION,
        "DicomAet": config.dicom_aet,
        "DicomPort": ctx.dicom_port or config.dicom_port,
        # The port this request came in on is the one bound, even with HttpPort 0.
        "HttpPort": sockname[1] if sockname else config.http_port,
        "IsHttpServerSecure": not config.remote_access_allowed or config.authentication_enabled,
        "Name": config.name,
        "PacsApplianceVersion": __version__,
        "PluginsEnabled": False,
        "StorageAreaPlugin": None,
        "Version": ORTHANC_VERSION,
    })


async def statistics(request: web.Request) -> web.Response:
    """GET /statistics: resource counts and storage size."""
    counts = await asyncio.to_thread(context(request).archive.counts)
    size = counts["bytes"]
    return web.json_response({
        "CountInstances": counts["instances"],
        "CountPatients": counts["patients"],
        "CountSeries": counts["series"],
        "CountStudies": counts["studies"],
        "TotalDiskSize": str(size),
        "TotalDiskSizeMB": size // _MIB,
        "TotalUncompressedSize": str(size),
        "TotalUncompressedSizeMB": size // _MIB,
    })
