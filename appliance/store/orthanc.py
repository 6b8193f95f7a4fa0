"""Orthanc's own archive, read only: its SQLite index and its attachment files.

Orthanc 1.x (database schema 6, Orthanc's ``PrepareDatabase.sql``) keeps its
index in the file ``index`` of its IndexDirectory and every attachment under
its StorageDirectory as ``xx/yy/<uuid>`` (the uuid's first and next two hex
digits name the folders, Orthanc's ``FilesystemStorage.cpp``). The table
``AttachedFiles`` lists each attachment of a resource: ``fileType`` 1 is the
DICOM file; ``compressionType`` 1 is none, 2 is zlib behind an 8-byte
little-endian uncompressed size (``StorageCompression``, Orthanc's
``ZlibCompressor``); ``uncompressedMD5`` is the MD5 of the DICOM file
(``StoreMD5ForAttachments``, on by default). The instance's Metadata keep its
reception time (type 2, local time, ``YYYYMMDDTHHMMSS``) and the calling AE
title (type 3).

Nothing here ever writes Orthanc's folders: the index is opened with SQLite's
``immutable`` flag (no lock, no journal, no ``-shm``), or, when a ``-wal``
file says Orthanc is running or was not stopped cleanly, a copy of the index
and its WAL, made in the caller's folder, is read instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import apsw

from appliance.lazyclasses import lazy_dataclass

log = logging.getLogger(__name__)

INDEX_NAME = "index"
SCHEMA_VERSIONS = ("6",)            # GlobalProperties 1 (DatabaseSchemaVersion)
FILE_TYPE_DICOM = 1
COMPRESSION_NONE = 1
COMPRESSION_ZLIB_WITH_SIZE = 2
_METADATA_RECEPTION_DATE = 2
_METADATA_REMOTE_AET = 3
_SQLITE_MAGIC = b"SQLite format 3\x00"

_ATTACHMENTS_SQL = f"""
    SELECT a.uuid, inst.publicId, study.publicId, a.compressedSize, a.uncompressedSize,
           a.compressionType, a.uncompressedMD5, received.value, aet.value
    FROM AttachedFiles a
    JOIN Resources inst ON inst.internalId = a.id
    LEFT JOIN Resources series ON series.internalId = inst.parentId
    LEFT JOIN Resources study ON study.internalId = series.parentId
    LEFT JOIN Metadata received ON received.id = a.id AND received.type = {_METADATA_RECEPTION_DATE}
    LEFT JOIN Metadata aet ON aet.id = a.id AND aet.type = {_METADATA_REMOTE_AET}
    WHERE a.fileType = {FILE_TYPE_DICOM} AND inst.resourceType = 4
    ORDER BY a.id"""


class NotOrthancIndex(Exception):
    """The file is not an Orthanc index this code can read."""


@lazy_dataclass(frozen=True)
class Attachment:
    """One DICOM attachment of Orthanc's index."""

    uuid: str
    instance: str                   # Orthanc's public id of the instance
    study: str | None               # ... and of its study
    compressed_size: int
    uncompressed_size: int
    compression: int
    md5: str | None                 # of the uncompressed DICOM file; None when not kept
    received_at: float | None
    remote_aet: str | None

    @property
    def compressed(self) -> bool:
        """True for a zlib attachment (StorageCompression true when it was stored)."""
        return self.compression == COMPRESSION_ZLIB_WITH_SIZE


def index_file(index_directory: Path) -> Path | None:
    """Orthanc's index in ``index_directory``, or None when there is none."""
    path = Path(index_directory) / INDEX_NAME
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_SQLITE_MAGIC))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return path if magic == _SQLITE_MAGIC else None


def attachment_path(storage_directory: Path, uuid: str) -> Path:
    """Where Orthanc keeps an attachment (FilesystemStorage: ``xx/yy/<uuid>``)."""
    if len(uuid) < 4 or "/" in uuid or uuid.startswith("."):
        raise ValueError(f"not an attachment uuid: {uuid!r}")
    return Path(storage_directory) / uuid[0:2] / uuid[2:4] / uuid


def _reception_time(value: str | None) -> float | None:
    """Orthanc's ReceptionDate (local time, ``20261203T175147`` maybe with fractions)."""
    if not value:
        return None
    try:
        return time.mktime(time.strptime(value[:15], "%Y%m%dT%H%M%S"))
    except (ValueError, OverflowError):
        return None


@contextlib.contextmanager
def opened(index_path: Path, scratch: Path) -> Iterator["OrthancIndex"]:
    """Orthanc's index at ``index_path``, read only (see the module docstring);
    a copy, when one is needed, is made under ``scratch`` and removed after."""
    wal = index_path.with_name(index_path.name + "-wal")
    copy_dir = None
    target = index_path
    try:
        if wal.exists() and wal.stat().st_size > 0:
            log.warning("Orthanc's index %s has a write-ahead log: Orthanc is running or was not "
                        "stopped cleanly; reading a copy", index_path)
            copy_dir = Path(scratch) / f".orthanc-index-{os.getpid()}"
            shutil.rmtree(copy_dir, ignore_errors=True)
            copy_dir.mkdir(parents=True)
            target = copy_dir / INDEX_NAME
            shutil.copyfile(index_path, target)
            shutil.copyfile(wal, copy_dir / wal.name)
            uri = f"file:{urllib.parse.quote(str(target))}"
            flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI
        else:
            uri = f"file:{urllib.parse.quote(str(target))}?immutable=1"
            flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
        conn = apsw.Connection(uri, flags=flags)
        try:
            yield OrthancIndex(conn, index_path)
        finally:
            conn.close()
    finally:
        if copy_dir is not None:
            shutil.rmtree(copy_dir, ignore_errors=True)


class OrthancIndex:
    """Reads of an opened Orthanc index (:func:`opened`)."""

    def __init__(self, conn: apsw.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        try:
            row = conn.execute("SELECT value FROM GlobalProperties WHERE property = 1").fetchone()
        except apsw.Error as e:
            raise NotOrthancIndex(f"{path}: not an Orthanc index ({e})") from None
        if row is None or row[0] not in SCHEMA_VERSIONS:
            raise NotOrthancIndex(f"{path}: Orthanc database schema {row and row[0]!r} "
                                  f"(only {', '.join(SCHEMA_VERSIONS)} is read)")

    def attachments(self) -> Iterator[Attachment]:
        """Every DICOM attachment, in the order Orthanc stored them."""
        for (uuid, instance, study, csize, usize, compression, md5, received,
             aet) in self._conn.execute(_ATTACHMENTS_SQL):
            yield Attachment(uuid, instance, study, int(csize or 0), int(usize or 0),
                             int(compression or COMPRESSION_NONE), md5 or None,
                             _reception_time(received), aet or None)
