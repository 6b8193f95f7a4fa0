"""HTTP access control: loopback-only access and HTTP Basic authentication.

``RegisteredUsers`` (Orthanc's key) maps user names to passwords, either in
plain text as Orthanc has them, or as a salted hash that
``pacs-appliance hash-password`` prints::

    pbkdf2_sha256$<iterations>$<salt, base64>$<PBKDF2-HMAC-SHA256, base64>

Every comparison is constant-time (``hmac.compare_digest`` on SHA-256
digests, so lengths leak nothing either), and an unknown user costs the same
work as a known one. A successful check of a hashed password is cached under
a digest of the Authorization header, so the PBKDF2 work (deliberately
slow: 600,000 iterations by default) is paid once per client credential, not
per request; the cache keeps no password. PBKDF2 runs on a worker thread and
at most ``_PBKDF2_CONCURRENCY`` at a time, so wrong guesses cannot stall the
event loop or take every CPU.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping

from aiohttp import web

from appliance.ops.manage import CLI_USER
from appliance.passwords import SALT_BYTES, Hashed, PasswordFormatError, is_hashed, parse_hash

log = logging.getLogger(__name__)

REALM = "pacs-appliance"
# Who made a request, as the authentication middleware found it: the HTTP
# user, LOCAL_USER for the command line's local token, None when
# authentication is off. What the audit trail records.
AUTH_USER = web.RequestKey("user", str)
LOCAL_USER = CLI_USER
_CACHE_SIZE = 256
_PBKDF2_CONCURRENCY = 2


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Authenticator:
    """Checks HTTP Basic credentials against RegisteredUsers."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users: list[tuple[bytes, bytes | Hashed | None]] = []
        for name, value in users.items():
            entry: bytes | Hashed | None
            if is_hashed(value):
                try:
                    entry = parse_hash(value)
                except PasswordFormatError as e:
                    # Refuse this user rather than take the text as a password.
                    log.error("RegisteredUsers.%s: unusable password hash (%s): "
                              "this user cannot log in", name, e)
                    entry = None
            else:
                entry = _sha(value.encode("utf-8"))
            self._users.append((_sha(name.encode("utf-8")), entry))
        hashed = [e for _, e in self._users if isinstance(e, Hashed)]
        # An unknown user is checked against this, so that the time taken
        # does not tell which user names exist.
        self._decoy: bytes | Hashed = (
            Hashed(max(e.iterations for e in hashed), os.urandom(SALT_BYTES), os.urandom(32))
            if hashed else os.urandom(32))
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._slow = asyncio.Semaphore(_PBKDF2_CONCURRENCY)

    async def check(self, authorization: str | None) -> str | None:
        """The user name if the Authorization header carries valid Basic
        credentials, else None."""
        credentials = _decode_basic(authorization)
        if credentials is None:
            return None
        user, password = credentials
        entry = self._decoy
        known = False
        user_digest = _sha(user.encode("utf-8"))
        for name_digest, candidate in self._users:
            # Every name is compared (no early exit).
            if hmac.compare_digest(name_digest, user_digest) and candidate is not None:
                entry, known = candidate, True
        if isinstance(entry, bytes):
            ok = hmac.compare_digest(entry, _sha(password.encode("utf-8")))
            return user if ok and known else None
        key = _sha(authorization.encode("utf-8", "surrogateescape"))
        if known and key in self._verified:
            self._verified.move_to_end(key)
            return user
        async with self._slow:
            digest = await asyncio.to_thread(
                hashlib.pbkdf2_hmac, "sha256", password.encode("utf-8"), entry.salt, entry.iterations)
        if not (hmac.compare_digest(digest, entry.digest) and known):
            return None
        self._verified[key] = None
        while len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return user


def _decode_basic(authorization: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` value (RFC 7617)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # RFC 7617 2.1: clients without charset
    user, sep, password = text.partition(":")
    if not sep:
        return None
    return user, password


def is_local_token(authorization: str | None, token: str | None) -> bool:
    """True if the Authorization header is ``Bearer <token>``, the secret the
    daemon writes for its own command line (``pacs-appliance delete`` and
    ``modify`` on the same machine), compared in constant time."""
    if not token or not authorization:
        return False
    return hmac.compare_digest(_sha(authorization.strip().encode("utf-8", "surrogateescape")),
                               _sha(f"Bearer {token}".encode("ascii")))
