"""The STOW-RS client (PS3.18 10.5): stored files to a ``DicomWeb.Servers`` entry.

One POST of ``multipart/related; type="application/dicom"`` to ``<Url>studies``
per batch, streamed from the stored files (memory does not grow with the
batch), with the server's Basic credentials and extra headers, over HTTP or
HTTPS, trusting certificates as Orthanc's HTTP client does (:class:`HttpsTrust`:
HttpsVerifyPeers, HttpsCACertificates). The answer decides per instance:
200 all stored; 202 or 409 with a FailedSOPSequence (0008,1198), those listed
failed; any other answer, or no answer, the whole batch failed.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from appliance.config import DicomWebServer
from appliance.lazyclasses import lazy_dataclass

_CHUNK = 1 << 20
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"


class StowError(Exception):
    """The request as a whole failed (no connection, an HTTP error status...)."""


@dataclass(frozen=True)
class HttpsTrust:
    """Which HTTPS servers we trust: the slice of the config (``Config.view``) with
    Orthanc's top-level HttpsVerifyPeers and HttpsCACertificates."""

    https_verify_peers: bool = True
    https_ca_certificates: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A TLS context for one connection. Built per connection so that a CA file
        changed on disk is read again (Orthanc's curl reads CURLOPT_CAINFO per request).

        Verifying: the chain up to a CA of HttpsCACertificates (only those, as curl's
        --cacert) or of the system, and the host name (curl's VERIFYHOST 2). Not
        verifying (HttpsVerifyPeers false): any certificate, as Orthanc.
        Raises OSError (FileNotFoundError, ssl.SSLError) when the CA file is unusable.
        """
        if not self.https_verify_peers:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if self.https_ca_certificates is None:
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=str(self.https_ca_certificates))


@lazy_dataclass(frozen=True)
class Part:
    """One instance to send: its SOP Instance UID and stored file."""

    sop_instance_uid: str
    path: Path
    size: int


def _body(boundary: bytes, parts: Sequence[Part]) -> Iterator[bytes]:
    head = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
    for part in parts:
        yield head
        with open(part.path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
        yield b"\r\n"
    yield b"--" + boundary + b"--\r\n"


def _length(boundary: bytes, parts: Sequence[Part]) -> int:
    head = len(b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n")
    return sum(head + p.size + 2 for p in parts) + len(boundary) + 6


def stow(server: DicomWebServer, parts: Sequence[Part], timeout: float | None,
         trust: HttpsTrust = HttpsTrust()) -> dict[str, str]:
    """POST ``parts`` to the server's STOW-RS endpoint; the failed instances by
    SOP Instance UID (with why), empty when all were stored. Blocking.

    Raises StowError when nothing can be said per instance.
    """
    url = urlsplit(server.url)
    path = (url.path or "/") + "studies"
    boundary = uuid.uuid4().hex.encode()
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary.decode()}',
        "Accept": "application/dicom+json",
        "Content-Length": str(_length(boundary, parts)),
        **server.http_headers,
    }
    if server.username is not None:
        token = base64.b64encode(f"{server.username}:{server.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    import http.client  # here: with the email package it imports, ~4 ms of every start

    try:
        if url.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                url.hostname, url.port, timeout=timeout, context=trust.context())
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    except OSError as e:  # the CA file: missing, or no certificate in it
        raise StowError(f"HttpsCACertificates {trust.https_ca_certificates}: "
                        f"{type(e).__name__}: {e}") from None
    try:
        conn.request("POST", path, body=_body(boundary, parts), headers=headers)
        response = conn.getresponse()
        text = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise StowError(f"{type(e).__name__}: {e}") from None
    finally:
        conn.close()
    if response.status == 200:
        return {}
    if response.status in (202, 409):
        failed = _failed(text)
        if failed or response.status == 202:
            return failed
    raise StowError(f"HTTP {response.status} {response.reason}")


def _failed(text: bytes) -> dict[str, str]:
    """The FailedSOPSequence of a STOW-RS answer (DICOM JSON), by SOP Instance UID."""
    try:
        answer = json.loads(text)
        items = answer.get(_FAILED_SOP_SEQUENCE, {}).get("Value", [])
        out = {}
        for item in items:
            uid = item[_REFERENCED_SOP_INSTANCE_UID]["Value"][0]
            reason = item.get(_FAILURE_REASON, {}).get("Value", ["?"])[0]
            out[uid] = f"refused by the server (FailureReason {reason})"
        return out
    except (ValueError, AttributeError, KeyError, IndexError, TypeError):
        return {}
