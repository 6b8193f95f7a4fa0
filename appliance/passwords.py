"""The password forms RegisteredUsers accepts; pure, so the config check and the
HTTP authenticator share one definition.

A value is either a plain-text password, as Orthanc has them, or a salted hash
that ``pacs-appliance hash-password`` prints::

    pbkdf2_sha256$<iterations>$<salt, base64>$<PBKDF2-HMAC-SHA256, base64>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re

from appliance.lazyclasses import lazy_dataclass

SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000       # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
MIN_ITERATIONS = 10_000
MAX_ITERATIONS = 10_000_000        # a typo must not make every login take minutes
SALT_BYTES = 16


class PasswordFormatError(ValueError):
    """A RegisteredUsers value that looks like a hash but is not a valid one."""


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """The ``pbkdf2_sha256$...`` form of ``password`` with a random salt."""
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be {MIN_ITERATIONS}-{MAX_ITERATIONS}, got {iterations}")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return "$".join((SCHEME, str(iterations), _b64(salt), _b64(digest)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@lazy_dataclass(frozen=True)
class Hashed:
    iterations: int
    salt: bytes
    digest: bytes


def is_hashed(value: str) -> bool:
    """True if a RegisteredUsers value is meant as a hash (not a plain password)."""
    return value.startswith(SCHEME + "$")


def parse_hash(value: str) -> Hashed:
    """Parse a ``pbkdf2_sha256$...`` value; PasswordFormatError says what is wrong."""
    parts = value.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise PasswordFormatError(f"expected {SCHEME}$<iterations>$<salt>$<hash>")
    if not re.fullmatch(r"[0-9]{1,9}", parts[1]) or not MIN_ITERATIONS <= int(parts[1]) <= MAX_ITERATIONS:
        raise PasswordFormatError(
            f"iterations must be a number {MIN_ITERATIONS}-{MAX_ITERATIONS}, got {parts[1][:20]!r}")
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        raise PasswordFormatError("salt and hash must be base64") from None
    if not salt or len(digest) != hashlib.sha256().digest_size:
        raise PasswordFormatError("empty salt or hash of the wrong length (32 bytes expected)")
    return Hashed(int(parts[1]), salt, digest)


def password_entry_problem(value: str) -> str | None:
    """Why a RegisteredUsers value cannot be used, or None (for config checks)."""
    if not is_hashed(value):
        return None
    try:
        parse_hash(value)
    except PasswordFormatError as e:
        return str(e)
    return None
