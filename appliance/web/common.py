"""What every HTTP module shares: the context, URLs as the client sees them,
UID checks and JSON errors."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from aiohttp import web

from appliance.config import Config
from appliance.store.archive import Archive


@dataclass(frozen=True)
class WebContext:
    """What request handlers may use (built by the daemon, read-only)."""

    archive: Archive
    config: Config


CONTEXT = web.AppKey("context", WebContext)

# PS3.5 9.1 UID grammar (digits and dots, no empty component, <= 64 chars);
# leading zeros tolerated as at ingest (appliance.store.header.is_valid_uid).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def context(request: web.Request) -> WebContext:
    """The application's context."""
    return request.app[CONTEXT]


def http_error(status: int, message: str) -> web.HTTPException:
    """An HTTP error with a small JSON body (never an HTML page, never a traceback)."""
    body = json.dumps({"HttpStatus": status, "Message": message})
    exc_class = web.HTTPException
    for cls in _ERRORS:
        if cls.status_code == status:
            exc_class = cls
            break
    exc = exc_class(text=body, content_type="application/json")
    if exc_class is web.HTTPException:
        exc.set_status(status)
    return exc


_ERRORS = (web.HTTPBadRequest, web.HTTPUnauthorized, web.HTTPForbidden, web.HTTPNotFound,
           web.HTTPMethodNotAllowed, web.HTTPNotAcceptable, web.HTTPConflict,
           web.HTTPRequestEntityTooLarge, web.HTTPUnsupportedMediaType,
           web.HTTPInternalServerError, web.HTTPServiceUnavailable, web.HTTPInsufficientStorage)


def check_uid(value: str, what: str) -> str:
    """``value`` if it is a valid UID, else 400 naming ``what``."""
    if not (0 < len(value) <= 64 and _UID.match(value)):
        raise http_error(400, f"{what}: not a valid UID: {value[:80]!r}")
    return value


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def base_url(request: web.Request) -> str:
    """``scheme://host[:port]`` as the client used it.

    X-Forwarded-Proto / X-Forwarded-Host / Forwarded (RFC 7239) are honoured
    only from a loopback peer (the local nginx), so a LAN client cannot make
    us write URLs pointing elsewhere.
    """
    scheme, host = request.scheme, request.host
    if is_loopback(request.remote):
        fwd = request.headers.get("Forwarded")
        if fwd:
            first = fwd.split(",")[0]
            for part in first.split(";"):
                key, _, val = part.strip().partition("=")
                val = val.strip().strip('"')
                if key.lower() == "proto" and val in ("http", "https"):
                    scheme = val
                elif key.lower() == "host" and val:
                    host = val
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
        if proto in ("http", "https"):
            scheme = proto
        fhost = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if fhost:
            host = fhost
    return f"{scheme}://{host}"
