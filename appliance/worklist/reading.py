"""What one ``.wl`` file is read into, as the worklist folder serves it.

:func:`read_file` opens, checks and reads one file, and parses and packs it
(:func:`appliance.worklist.parse.parse_worklist`, :func:`appliance.worklist.catalog.pack`)
unless its bytes are those of the version already served. It keeps no state: the folder
(:mod:`appliance.worklist.source`) turns what it returns into what it serves, and a helper
process (:mod:`appliance.worklist.helper`) runs it for part of a first start's files.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from typing import NamedTuple

from appliance.worklist.catalog import index_keys, pack
from appliance.worklist.parse import WorklistFileError, parse_worklist

__all__ = ["EMPTY", "MAX_FILE_SIZE", "Read", "Unreadable", "digest_of", "read_file"]

MAX_FILE_SIZE = 4 * 1024 * 1024  # a worklist item is ~1 KB; anything this big is not one
EMPTY = "empty file"  # why an empty file is not served (no warning: a writer's first step)

Signature = tuple[int, int, int]  # (mtime_ns, size, inode) of one version of a file


class Read(NamedTuple):
    """A file read: its signature, digest and packed content. ``packed`` None: the bytes
    are those of the version given as ``same`` (touched, not rewritten: not parsed)."""

    signature: Signature
    digest: int
    verified_ns: int  # wall clock when these bytes were read under this signature
    charset: str | None
    packed: bytes | None
    keys: list | None = None  # its catalog index keys (catalog.index_keys), when parsed


class Unreadable(NamedTuple):
    """A file that is not served: why (EMPTY for an empty file), and its signature."""

    why: str
    signature: Signature


def digest_of(data: bytes) -> int:
    """The digest kept for a file's bytes (an in-place rewrite of the same size shows)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def read_file(folder: str, name: str, *, hidden: Signature | None = None,
              same: tuple[int, int] | None = None) -> Read | Unreadable | str | None:
    """File ``name`` of ``folder`` now: a :class:`Read`, an :class:`Unreadable`, a
    string (it cannot be opened or read now; nothing to remember), or None (gone, not a
    regular file, or the version ``hidden`` that was taken out). ``same``: (digest, size)
    of the version served; bytes that match it are not parsed again."""
    try:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    try:
        verified_ns = time.time_ns()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == hidden:
            return None
        if st.st_size > MAX_FILE_SIZE:
            return Unreadable(f"{st.st_size} bytes: too large for a worklist item", signature)
        chunks = []
        while True:
            chunk = os.read(fd, max(st.st_size + 1, 65536))
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    finally:
        os.close(fd)
    if not data:
        return Unreadable(EMPTY, signature)
    digest = digest_of(data)
    if same == (digest, len(data)):
        return Read(signature, digest, verified_ns, None, None)
    try:
        attrs = parse_worklist(data)
        charset, packed = pack(attrs)
    except WorklistFileError as e:
        return Unreadable(str(e), signature)
    except Exception as e:  # noqa: BLE001 - one odd file must not stop the others
        return Unreadable(f"not readable ({type(e).__name__}: {str(e)[:80]})", signature)
    # Indexed here, from the attributes at hand: the catalog need not unpack the item again
    # (and a helper process's items are indexed on its core).
    return Read(signature, digest, verified_ns, charset, packed, index_keys(attrs))
