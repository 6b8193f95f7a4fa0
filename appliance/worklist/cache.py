"""The worklist parse cache: what each ``.wl`` file was read into, kept across restarts.

Two files beside the index, in ``IndexDirectory``:

* a *snapshot* (``pacs-appliance.worklist-cache.snapshot``): every served item with its
  signature (size, mtime_ns, inode), a digest of its bytes, its packed content
  (:func:`appliance.worklist.catalog.pack`) and the catalog's index, written when the
  daemon stops (and when the journal has grown long). One ``marshal`` header holds the
  columns and the index; the packed contents follow it back to back, so that a start reads
  the file with one ``read`` and serves each item's content as a view into it, not as
  10,000 copies (reading it through SQLite and unmarshalling every item took 35 ms of the
  50 ms a 10,000-file restart spent on it);
* a *journal* (``pacs-appliance.worklist-cache.sqlite``, SQLite): one row per file changed
  since the snapshot (its new row, or a tombstone), written as each change is served: a
  change costs one row, not a rewrite of the whole.

At start-up the snapshot and the journal give back the catalog without parsing, indexing
or even unpacking any item; only files whose signature differs from their row are read.

It is only a cache: a row is trusted only for the exact file version it describes, so a
journal older or newer than the snapshot costs reads, never a wrong answer; a snapshot
whose parts disagree is rebuilt from its rows; and a cache that cannot be opened, is
corrupt or was written by another version of the parser (or of Python's ``marshal``
format) is emptied or ignored, never an error. The journal runs in WAL mode without fsync
(a crash loses at most the last rows, whose files are then parsed again); the snapshot is
written to a temporary file, synced and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import itertools
import logging
import marshal
import os
import struct
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import apsw
import pydicom

from appliance.worklist.catalog import WorklistItem

log = logging.getLogger(__name__)

CACHE_NAME = "pacs-appliance.worklist-cache.sqlite"
SNAPSHOT_SUFFIX = ".snapshot"  # the snapshot file: CACHE_NAME with this suffix instead
# Change when the packed format, the parser or the encoder changes what a file becomes.
FORMAT = 3
_MAGIC = b"PACS-WL\x00"
# After the magic: the CRC-32 of everything after it, then the length of the marshal header.
_PREFIX = struct.Struct("<IQ")


class Row(NamedTuple):
    """One cached file."""

    size: int
    mtime_ns: int
    ino: int
    digest: int
    verified_ns: int  # wall clock when this signature was last seen with these bytes
    charset: str | None
    packed: bytes


# A journal row's head: the CRC-32 of the name, the rest of the head and the packed
# content; then size, mtime_ns, ino, digest, verified_ns; then the charset.
_CRC = struct.Struct("<I")
_FIELDS = struct.Struct("<qqqqq")


def _head(name: str, row: Row) -> bytes:
    rest = _FIELDS.pack(row.size, row.mtime_ns, row.ino, row.digest, row.verified_ns) + (
        b"\0" if row.charset is None else row.charset.encode("utf-8"))
    return _CRC.pack(_row_crc(name, rest, row.packed)) + rest


def _row_crc(name: str, rest: bytes, packed) -> int:
    return zlib.crc32(packed, zlib.crc32(rest, zlib.crc32(name.encode("utf-8"))))


def _row(name: str, head: bytes, packed: bytes) -> Row:
    """The row of ``name``; ValueError if it is not the row that was written."""
    (crc,) = _CRC.unpack_from(head)
    rest = head[_CRC.size:]
    if crc != _row_crc(name, rest, packed):
        raise ValueError(f"journal row of {name!r} damaged (checksum)")
    charset = rest[_FIELDS.size:]
    return Row(*_FIELDS.unpack_from(rest), None if charset == b"\0" else charset.decode("utf-8"),
               packed)


def _version() -> str:
    return (f"{FORMAT}/py{sys.version_info[0]}.{sys.version_info[1]}/marshal{marshal.version}"
            f"/pydicom{pydicom.__version__}")


class Cached(NamedTuple):
    """What :meth:`ParseCache.load` found."""

    items: dict[str, WorklistItem]  # the snapshot's
    verified_ns: int  # when the snapshot's signatures were last seen with these bytes
    index: dict | None  # the snapshot's catalog index (None: no snapshot)
    journal: dict[str, Row | None]  # changed since the snapshot (None: no longer served)


NOTHING = Cached({}, 0, None, {})  # what an unusable cache gives


class ParseCache:
    """The cache file of one worklist folder; used from one thread at a time."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = Path(path)
        self.snapshot_path = self.path.with_suffix(SNAPSHOT_SUFFIX)
        self.folder = str(folder)
        self._conn: apsw.Connection | None = None
        self.journal_rows = 0  # rows in the journal (to know when to write a snapshot)

    def open(self) -> bool:
        """Open (or create, or reset) the cache; False if it cannot be used at all."""
        for attempt in (1, 2):
            try:
                self._conn = self._connect()
                return True
            except apsw.Error as e:
                self.close()
                if attempt == 1 and isinstance(e, (apsw.CorruptError, apsw.NotADBError)):
                    log.warning("worklist parse cache %s is damaged: starting a new one", self.path)
                    self._remove_files()
                    continue
                log.warning("worklist parse cache %s cannot be used (%s): every file is parsed "
                            "at start", self.path, e)
                return False
        return False

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(str(self.path))
        conn.set_busy_timeout(2000)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)")
            conn.execute("CREATE TABLE IF NOT EXISTS journal(name TEXT PRIMARY KEY, head BLOB, "
                         "packed BLOB)")
            # One folder per file: a journal of another folder or format is dropped (the
            # snapshot file says its own folder and format).
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            if meta.get("version") != _version() or meta.get("folder") != self.folder:
                conn.execute("DROP TABLE IF EXISTS snapshot")  # where format 1 kept it
                conn.execute("DELETE FROM journal")
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 (("version", _version()), ("folder", self.folder)))
        return conn

    def _remove_files(self) -> None:
        # The snapshot too: a damaged cache is started again as a whole.
        for path in (*(Path(str(self.path) + suffix) for suffix in ("", "-wal", "-shm")),
                     self.snapshot_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("worklist parse cache: cannot remove %s: %s", path, e.strerror or e)

    def load(self) -> Cached:
        """The snapshot and the journal (empty if the cache is not usable). A snapshot or
        journal row that is not what was written (its checksum) is not used: the files
        are read instead."""
        if self._conn is None:
            return NOTHING
        try:
            items, verified_ns, index = self._read_snapshot()
        except (OSError, ValueError, EOFError, TypeError, struct.error,
                UnicodeDecodeError) as e:
            log.warning("worklist parse cache %s cannot be read (%s): reading every file; "
                        "it is written again at the next stop", self.snapshot_path,
                        getattr(e, "strerror", None) or e)
            self._discard_snapshot()
            items, verified_ns, index = {}, 0, None
        try:
            journal: dict[str, Row | None] = {}
            for name, head, packed in self._conn.execute(
                    "SELECT name, head, packed FROM journal"):
                try:
                    journal[name] = None if head is None else _row(name, head, packed)
                except (ValueError, TypeError, struct.error, UnicodeDecodeError) as e:
                    # Not trusted, and neither is the snapshot's row: the file is read.
                    log.warning("worklist parse cache %s: %s: reading that file", self.path, e)
                    journal[name] = None
            self.journal_rows = len(journal)
        except apsw.Error as e:
            log.warning("worklist parse cache %s cannot be read (%s): reading every file",
                        self.path, e)
            return NOTHING
        return Cached(items, verified_ns, index, journal)

    def _discard_snapshot(self) -> None:
        try:
            self.snapshot_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("worklist parse cache: cannot remove %s: %s", self.snapshot_path,
                        e.strerror or e)

    def _read_snapshot(self) -> tuple[dict[str, WorklistItem], int, dict | None]:
        try:
            fd = os.open(self.snapshot_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}, 0, None
        try:
            size = os.fstat(fd).st_size
            data = os.read(fd, size)
        finally:
            os.close(fd)
        start = len(_MAGIC) + _PREFIX.size
        if len(data) != size or size < start or data[:len(_MAGIC)] != _MAGIC:
            raise ValueError("not a snapshot")
        crc, length = _PREFIX.unpack_from(data, len(_MAGIC))
        view = memoryview(data)  # each item's content is a slice of it, not a copy
        # Whole, or not used: a damaged byte in an item would be served as a wrong value.
        if zlib.crc32(view[len(_MAGIC) + 4:]) != crc:
            raise ValueError("checksum mismatch")
        (version, folder, verified_ns, names, sizes, mtimes, inos, digests, charsets, lengths,
         index) = marshal.loads(view[start:start + length])
        if version != _version() or folder != self.folder:
            return {}, 0, None  # written by another version, or for another folder
        if not (len(names) == len(sizes) == len(mtimes) == len(inos) == len(digests)
                == len(charsets) == len(lengths)) or start + length + sum(lengths) != size:
            raise ValueError("snapshot of inconsistent length")
        ends = list(itertools.accumulate(lengths, initial=start + length))
        packed = map(view.__getitem__, map(slice, ends, ends[1:]))
        items = dict(zip(names, map(WorklistItem, names, sizes, mtimes, inos, digests,
                                    charsets, packed)))
        return items, verified_ns, index

    def write(self, rows: Iterable[tuple[str, Row | None]]) -> None:
        """Journal these rows (None: the file is no longer served) in one transaction."""
        if self._conn is None:
            return
        rows = list(rows)
        if not rows:
            return
        try:
            with self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO journal VALUES (?, ?, ?)",
                                       ((name, None if row is None else _head(name, row),
                                         None if row is None else row.packed)
                                        for name, row in rows))
            self.journal_rows += len(rows)
        except apsw.Error as e:
            self._failed(e)

    def write_snapshot(self, items: dict[str, WorklistItem], index: dict,
                       verified_ns: int) -> None:
        """Replace the snapshot with these items and index (``verified_ns``: when their
        signatures were last seen with these bytes); empties the journal."""
        if self._conn is None:
            return
        names = sorted(items)
        listed = [items[name] for name in names]
        header = marshal.dumps((
            _version(), self.folder, verified_ns, names, [i.size for i in listed],
            [i.mtime_ns for i in listed], [i.ino for i in listed], [i.digest for i in listed],
            [i.charset for i in listed], [len(i.packed) for i in listed], index))
        temp = self.snapshot_path.with_name(f".{self.snapshot_path.name}.tmp")
        payload = b"".join(i.packed for i in listed)
        crc = zlib.crc32(payload, zlib.crc32(header, zlib.crc32(struct.pack("<Q", len(header)))))
        try:
            with open(temp, "wb") as f:
                f.write(_MAGIC + _PREFIX.pack(crc, len(header)))
                f.write(header)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())  # whole before it is named: the rename may outlive a crash
            os.replace(temp, self.snapshot_path)
        except OSError as e:
            log.warning("worklist parse cache %s: cannot write the snapshot (%s)",
                        self.snapshot_path, e.strerror or e)
            temp.unlink(missing_ok=True)
            return
        try:
            with self._conn:
                self._conn.execute("DELETE FROM journal")
            self.journal_rows = 0
        except apsw.Error as e:
            self._failed(e)

    def _failed(self, e: Exception) -> None:
        log.warning("worklist parse cache %s: cannot write (%s); it is no longer used",
                    self.path, e)
        self.close()

    def close(self) -> None:
        """Close the file (the WAL is checkpointed into it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except apsw.Error:
                pass
