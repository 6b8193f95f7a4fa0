"""What every HTTP module shares: the context, URLs as the client sees them,
UID checks and JSON errors."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from appliance.config import DicomWebConfig, Modality, WorklistsConfig
from appliance.dicomfile.vr import is_valid_uid
from appliance.store.archive import Archive


@dataclass(frozen=True)
class WebConfig:
    """The part of the configuration the HTTP side reads (the daemon passes
    ``config.view(WebConfig)``); each field is Config's of the same name."""

    name: str
    dicom_aet: str
    dicom_port: int
    http_port: int
    remote_access_allowed: bool
    authentication_enabled: bool
    case_sensitive_pn: bool
    limit_find_results: int
    limit_find_instances: int
    dicom_web: DicomWebConfig
    worklists: WorklistsConfig
    dicom_modalities: tuple[Modality, ...]  # POST /modalities/{name}/echo
    viewer_url_template: str | None  # the web UI's "open in viewer" link


@dataclass(frozen=True)
class WebContext:
    """What request handlers may use (built by the daemon, read-only)."""

    archive: Archive
    config: WebConfig
    # The DICOM port actually bound (DicomPort 0 lets the OS choose); 0: unknown,
    # use the configured one.
    dicom_port: int = 0
    # C-ECHO SCU: (modality, timeout in seconds or None) -> Success? Blocking; given
    # by the daemon (appliance.dicom.scu), since web/ does not import dicom/.
    dicom_echo: Callable[[Modality, float | None], bool] | None = None


CONTEXT = web.AppKey("context", WebContext)



def context(request: web.Request) -> WebContext:
    """The application's context."""
    return request.app[CONTEXT]


def http_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    """An HTTP error with a small JSON body (never an HTML page, never a traceback)."""
    body = json.dumps({"HttpStatus": status, "Message": message})
    exc_class = web.HTTPException
    for cls in _ERRORS:
        if cls.status_code == status:
            exc_class = cls
            break
    exc = exc_class(text=body, content_type="application/json", headers=headers)
    if exc_class is web.HTTPException:
        exc.set_status(status)
    return exc


# Classes whose constructor takes just the body: 405 and 413 want more
# arguments, so they (like any other status) go through the generic class.
_ERRORS = (web.HTTPBadRequest, web.HTTPUnauthorized, web.HTTPForbidden, web.HTTPNotFound,
           web.HTTPNotAcceptable, web.HTTPConflict, web.HTTPUnsupportedMediaType,
           web.HTTPInternalServerError, web.HTTPServiceUnavailable, web.HTTPInsufficientStorage)


def check_uid(value: str, what: str) -> str:
    """``value`` if it is a valid UID, else 400 naming ``what``."""
    if not is_valid_uid(value):  # the rule ingest applies
        raise http_error(400, f"{what}: not a valid UID: {value[:80]!r}")
    return value


def json_object(body: bytes) -> dict:
    """A request body that must be one JSON object, parsed; 400 otherwise."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise http_error(400, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise http_error(400, "the body is not a JSON object")
    return value


def request_uids(request: web.Request) -> tuple[str, str | None, str | None]:
    """Study, series and SOP Instance UIDs of a ``/studies/{study}[/series/{series}
    [/instances/{instance}]]`` route (None for those not in it), each checked (400)."""
    info = request.match_info
    study = check_uid(info["study"], "StudyInstanceUID")
    series = check_uid(info["series"], "SeriesInstanceUID") if "series" in info else None
    sop = check_uid(info["instance"], "SOPInstanceUID") if "instance" in info else None
    return study, series, sop


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


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _is_loopback_name(host: str) -> bool:
    """True for a loopback host name or address, with or without a port."""
    name = host.strip().lower()
    if name.startswith("["):                      # [::1]:8042
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:                    # localhost:8042, 127.0.0.1:8042
        name = name.partition(":")[0]
    return name in _LOOPBACK_NAMES or is_loopback(name)


def base_url(request: web.Request) -> str:
    """``scheme://host[:port]`` as the client used it.

    X-Forwarded-Proto / X-Forwarded-Host / Forwarded (RFC 7239) are honoured
    only from a loopback peer (the local nginx), so a LAN client cannot make
    us write URLs pointing elsewhere.

    ``DicomWeb.Host`` (with ``DicomWeb.Ssl`` for the scheme), when set, wins
    over the request, as in Orthanc's DICOMweb plugin, except when it names
    the loopback: Debian's and Docker's stock dicomweb.json carry
    ``"Host": "localhost"``, which would send every client behind nginx to
    its own machine. ``DicomWeb.Ssl`` alone makes ``https`` the default
    scheme, which a forwarded proto still overrides.
    """
    dicom_web = request.app[CONTEXT].config.dicom_web
    if dicom_web.host and not _is_loopback_name(dicom_web.host):
        return f"{'https' if dicom_web.ssl else 'http'}://{dicom_web.host}"
    scheme, host = ("https" if dicom_web.ssl else request.scheme), request.host
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
    if not _HOST.match(host):
        # A Host header is the client's to choose: one that is not a plain
        # host[:port] must not reach URLs we hand out (header/URL injection).
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        host = _format_host(sock[0], sock[1]) if sock else "localhost"
    return f"{scheme}://{host}"


_HOST = re.compile(r"^(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def _format_host(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def dicomweb_url(request: web.Request) -> str:
    """The DICOMweb service URL as the client sees it, without a trailing
    slash (``{base_url}{DicomWeb.PublicRoot}``), the prefix of RetrieveURL
    and of the PS3.18 8.4 Warning header's service name."""
    public_root = request.app[CONTEXT].config.dicom_web.public_root.rstrip("/")
    return base_url(request) + public_root
