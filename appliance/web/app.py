"""The HTTP application: routes of every service module, auth and errors.

Middlewares, outermost first:

1. errors: every error leaves as a small JSON body (``common.http_error``);
   an unexpected exception is logged with the method and path and answered
   500 without any detail (never a traceback to the client);
2. access: with ``RemoteAccessAllowed`` false the listener binds the
   loopback only, and a non-loopback peer that reaches us anyway (another
   bind address, a forwarded socket) is refused with 403, as Orthanc does;
3. authentication: HTTP Basic against ``RegisteredUsers`` when
   ``AuthenticationEnabled`` (see appliance.web.auth), 401 with
   ``WWW-Authenticate`` otherwise.

Request heads larger than the limits below never reach a handler: aiohttp
answers them itself with 400 (text, not JSON: no application code runs) and
closes the connection; the log gets one WARNING line, not a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from appliance.config import Modality
from appliance.store.archive import Archive
from appliance.web import admin, manage, modalities, outbound, qido, stow, wado, wado_uri
from appliance.web import worklists
from appliance.web import instances
from appliance.web import metrics
from appliance.web import ui
from appliance.web.auth import AUTH_USER, LOCAL_USER, REALM, Authenticator, is_local_token
from appliance.web.common import CONTEXT, WebConfig, WebContext, http_error, is_loopback

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's parser limits, stated here so that they are ours: a request line
# (URL) or one header of more than 8 KiB, or more than 100 header lines, is
# refused with 400 before any handler runs.
_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 100}
_SERVER_LOG = "appliance.web.server"


class _BadRequestLog(logging.Filter):
    """aiohttp logs each request it cannot parse at ERROR with a traceback:
    a client's garbage is not our error, so it becomes one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.args:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "%s: HTTP request refused (%d): %s"
            record.args = (record.args[0], exc.code, str(exc.message).split(":")[0][:200])
            record.exc_info = record.exc_text = None
        return True


def _server_logger() -> logging.Logger:
    logger = logging.getLogger(_SERVER_LOG)
    if not any(isinstance(f, _BadRequestLog) for f in logger.filters):
        logger.addFilter(_BadRequestLog())
    return logger


class Users:
    """Who may log in; the daemon swaps ``authenticator`` on SIGHUP (None: no
    authentication, AuthenticationEnabled false)."""

    def __init__(self, registered_users: Mapping[str, str], enabled: bool) -> None:
        self.authenticator: Authenticator | None = None
        # The command line's secret (appliance.ops.manage), accepted from the
        # loopback only, as the user "cli"; None: none.
        self.local_token: str | None = None
        self.load(registered_users, enabled)

    def load(self, registered_users: Mapping[str, str], enabled: bool) -> None:
        """Take RegisteredUsers, and AuthenticationEnabled (``enabled``)."""
        self.authenticator = Authenticator(registered_users) if enabled else None


def make_app(*, archive: Archive, config: WebConfig, users: Users, dicom_port: int = 0,
             dicom_echo: Callable[[Modality, float | None], bool] | None = None,
             ) -> web.Application:
    """Build the aiohttp application for one configuration.

    ``users`` are who may log in (the daemon reloads them on SIGHUP); ``dicom_port`` is
    the DICOM port actually bound (for ``/system``); ``dicom_echo`` performs a C-ECHO to
    a modality (``/modalities/{name}/echo``).
    """
    middlewares = [_errors, _access(config), _authentication(users)]
    app = web.Application(middlewares=middlewares,
                          handler_args={**_LIMITS, "logger": _server_logger()})
    app[CONTEXT] = WebContext(archive=archive, config=config, dicom_port=dicom_port,
                              dicom_echo=dicom_echo)
    if config.dicom_web.enable:
        root = config.dicom_web.root.rstrip("/")
        qido.add_routes(app.router, root)
        wado.add_routes(app.router, root)
        stow.add_routes(app.router, root)
        manage.add_dicomweb_routes(app.router, root)
        if config.dicom_web.enable_wado:
            wado_uri.add_routes(app.router, config.dicom_web.wado_root.rstrip("/"))
    admin.add_routes(app.router, "")
    modalities.add_routes(app.router, "")
    outbound.install(app, config.dicom_web.root.rstrip("/") if config.dicom_web.enable else None)
    worklists.add_routes(app.router, "")
    instances.add_routes(app.router, "")  # POST /instances (Orthanc's; pacs-appliance import)
    app[instances.IMPORT_RUNS] = instances.ImportRuns()
    manage.add_routes(app.router, "")
    metrics.install(app)  # GET /metrics, /status, /status.html, request timing
    ui.install(app)  # GET / (the web UI), /ui/...
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as JSON bodies; unexpected exceptions as a logged, bare 500."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400 or e.content_type != "text/plain":
            raise  # a success, or a body of its own (http_error, a STOW-RS report...)
        # aiohttp's own (no route: 404, wrong method: 405, body too large:
        # 413...) carry a text body: same status and headers, JSON body.
        headers = {k: v for k, v in e.headers.items()
                   if k.lower() not in ("content-type", "content-length")}
        message = (e.text or "").strip().removeprefix(f"{e.status}: ") or e.reason
        raise http_error(e.status, message, headers) from None
    except Exception:  # noqa: BLE001 - the one place that turns bugs into 500s
        log.exception("%s: %s %s: unexpected error", request.remote, request.method,
                      request.rel_url.path)
        raise http_error(500, "internal error (logged)") from None


def _access(config: WebConfig):
    """Refuse non-loopback peers unless RemoteAccessAllowed (403)."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not config.remote_access_allowed and not is_loopback(request.remote):
            log.warning("%s: HTTP %s %s refused: RemoteAccessAllowed is false",
                        request.remote, request.method, request.rel_url.path)
            raise http_error(403, "remote access is not allowed (RemoteAccessAllowed is false)")
        return await handler(request)

    return access


def _authentication(users: Users):
    """HTTP Basic authentication (RFC 7617) for every route, when enabled."""
    challenge = {"WWW-Authenticate": f'Basic realm="{REALM}"'}

    @web.middleware
    async def authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        if is_loopback(request.remote) and is_local_token(header, users.local_token):
            request[AUTH_USER] = LOCAL_USER
            return await handler(request)
        authenticator = users.authenticator
        if authenticator is None:
            return await handler(request)
        user = await authenticator.check(header)
        if user is None:
            if header:
                # Only failed attempts are logged: a browser first asks
                # without credentials.
                log.warning("%s: HTTP %s %s: authentication failed", request.remote,
                            request.method, request.rel_url.path)
            raise http_error(401, "authentication required", challenge)
        request[AUTH_USER] = user
        return await handler(request)

    return authentication
