"""The file store: DICOM Part-10 files as received, named by internal id.

Layout under the storage root::

    <root>/ab/cd/abcd0123...ef.dcm      stored instances (fan-out by id)

and under the incoming directory (same filesystem, so a rename is atomic)::

    <incoming>/<random>.part            objects being received

A stored path never comes from client input: ids are generated here
(``uuid4().hex``) and only ever joined under the root.

Durability (the store contract in DESIGN.md): a received file is fsynced,
then renamed into place; the rename is made durable by fsyncing the
directory that holds it, which :meth:`BlobStore.sync_dirs` does for a whole
batch of renames at once just before the index commit that acknowledges them.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".dcm"
_PART = ".part"


class IncomingFile:
    """A file being received, hashing its bytes as they are written.

    It quacks like the ``NamedTemporaryFile(mode="wb")`` object pynetdicom
    writes a chunked C-STORE dataset to (``name``, ``write``, ``file.flush``,
    ``close``), so the SHA-256 costs no second read of the file, and the
    file lands in our incoming directory rather than the system temp dir,
    on the filesystem of the storage, where a rename into place is atomic.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, suffix=_PART)
        self.name = name
        self.file = os.fdopen(fd, "wb")
        self.size = 0
        self._sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        """Write and hash ``data``."""
        self._sha.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        """Flush Python's buffer to the OS."""
        self.file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self.file.closed:
            self.file.close()

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self.file.closed

    def sha256(self) -> str:
        """Hex SHA-256 of everything written so far."""
        return self._sha.hexdigest()

    def discard(self) -> None:
        """Close and delete the file; never raises for a missing file."""
        self.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "IncomingFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in chunks (bounded memory)."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


class BlobStore:
    """Stored files under ``root``; files being received under ``incoming``."""

    def __init__(self, root: Path, incoming: Path) -> None:
        self.root = Path(root)
        self.incoming = Path(incoming)

    def open(self) -> int:
        """Create the directories and sweep leftovers of a crash.

        Returns the number of partial files removed. Anything in the incoming
        directory at start-up was never acknowledged (acknowledgement happens
        only after the rename out of it), so deleting it loses nothing.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        swept = 0
        for entry in os.scandir(self.incoming):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                swept += 1
        return swept

    def new_incoming(self) -> IncomingFile:
        """A new file to receive an object into."""
        return IncomingFile(self.incoming)

    @staticmethod
    def new_id() -> str:
        """A fresh internal file id."""
        return uuid.uuid4().hex

    @staticmethod
    def relpath(file_id: str) -> str:
        """The storage-relative path of a file id (fan-out 256 x 256)."""
        if len(file_id) != 32 or not all(c in "0123456789abcdef" for c in file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return f"{file_id[0:2]}/{file_id[2:4]}/{file_id}{_SUFFIX}"

    def path(self, relpath: str) -> Path:
        """Absolute path of a stored file from its relative path in the index."""
        return self.root / relpath

    def adopt(self, source: str | os.PathLike, file_id: str) -> tuple[str, Path]:
        """fsync ``source`` and move it into place under ``file_id``.

        Returns (relative path, directory to fsync before acknowledging).
        ``source`` must be in the incoming directory; if it is on another
        filesystem it is copied (and fsynced) instead of renamed.
        """
        rel = self.relpath(file_id)
        dest = self.root / rel
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._ensure_dir(dest.parent)
        try:
            os.rename(source, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            self._copy_durably(Path(source), dest)
            os.unlink(source)
        return rel, dest.parent

    def _ensure_dir(self, directory: Path) -> None:
        if directory.is_dir():
            return
        # A new fan-out directory must itself be durable in its parent.
        for d in (directory.parent, directory):
            if not d.is_dir():
                d.mkdir(exist_ok=True)
                fsync_dir(d.parent)

    @staticmethod
    def _copy_durably(source: Path, dest: Path) -> None:
        tmp = dest.with_suffix(_PART)
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(tmp, dest)

    @staticmethod
    def sync_dirs(directories: set[Path]) -> None:
        """fsync each directory once (a batch of renames)."""
        for d in directories:
            fsync_dir(d)

    def remove(self, relpath: str) -> None:
        """Delete a stored file; a missing file is not an error."""
        try:
            os.unlink(self.path(relpath))
        except FileNotFoundError:
            log.warning("stored file already missing: %s", relpath)
