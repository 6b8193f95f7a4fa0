"""The HTTP application: routes of every service module, auth and errors."""

from __future__ import annotations

from aiohttp import web

from appliance.config import Config
from appliance.store.archive import Archive
from appliance.web import admin, qido, stow, wado, wado_uri
from appliance.web.common import CONTEXT, WebContext


def make_app(*, archive: Archive, config: Config) -> web.Application:
    """Build the aiohttp application for one configuration."""
    app = web.Application()
    app[CONTEXT] = WebContext(archive=archive, config=config)
    if config.dicom_web.enable:
        root = config.dicom_web.root.rstrip("/")
        qido.add_routes(app.router, root)
        wado.add_routes(app.router, root)
        stow.add_routes(app.router, root)
        if config.dicom_web.enable_wado:
            wado_uri.add_routes(app.router, config.dicom_web.wado_root.rstrip("/"))
    admin.add_routes(app.router, "")
    return app
