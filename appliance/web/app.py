"""The HTTP application (DICOMweb and the REST API arrive with their issues)."""

from __future__ import annotations

from aiohttp import web

from appliance.store.archive import Archive


ARCHIVE = web.AppKey("archive", Archive)


def make_app(*, archive: Archive) -> web.Application:
    """Build the aiohttp application; every path answers 404 for now."""
    app = web.Application()
    app[ARCHIVE] = archive
    return app
