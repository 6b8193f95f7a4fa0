"""The worklist parse cache: what each ``.wl`` file was read into, kept across restarts.

A small SQLite file beside the index (``IndexDirectory/pacs-appliance.worklist-cache.sqlite``)
in two parts:

* a *snapshot*: every served item with its signature (size, mtime_ns, inode), a digest of
  its bytes, when it was last checked, its packed content
  (:func:`appliance.worklist.catalog.pack`) and the catalog's index, as one ``marshal``
  blob, written when the daemon stops (and when the journal has grown long);
* a *journal*: one row per file changed since the snapshot (its new row, or a tombstone),
  written as each change is served: a change costs one row, not a rewrite of the whole.

At start-up the snapshot and the journal give back the catalog without parsing, indexing
or even unpacking any item; only files whose signature differs from their row are read.
A restart with 10,000 unchanged files takes about 0.15 s instead of a cold parse.

It is only a cache: a row is trusted only for the exact file version it describes, a
snapshot whose parts disagree is rebuilt from its rows, and a cache that cannot be opened,
is corrupt or was written by another version of the parser (or of Python's ``marshal``
format) is emptied or ignored, never an error. WAL mode without fsync: a crash loses at
most the last rows, whose files are then parsed again.
"""

from __future__ import annotations

import logging
import marshal
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import apsw
import pydicom

log = logging.getLogger(__name__)

CACHE_NAME = "pacs-appliance.worklist-cache.sqlite"
# Change when the packed format, the parser or the encoder changes what a file becomes.
FORMAT = 1


class Row(NamedTuple):
    """One cached file."""

    size: int
    mtime_ns: int
    ino: int
    digest: int
    verified_ns: int  # wall clock when this signature was last seen with these bytes
    charset: str | None
    packed: bytes


_HEAD = struct.Struct("<qqqqq")  # size, mtime_ns, ino, digest, verified_ns; then the charset


def _head(row: Row) -> bytes:
    return _HEAD.pack(row.size, row.mtime_ns, row.ino, row.digest, row.verified_ns) + (
        b"\0" if row.charset is None else row.charset.encode("utf-8"))


def _row(head: bytes, packed: bytes) -> Row:
    charset = head[_HEAD.size:]
    return Row(*_HEAD.unpack_from(head), None if charset == b"\0" else charset.decode("utf-8"),
               packed)


def _version() -> str:
    return (f"{FORMAT}/py{sys.version_info[0]}.{sys.version_info[1]}/marshal{marshal.version}"
            f"/pydicom{pydicom.__version__}")


class Cached(NamedTuple):
    """What :meth:`ParseCache.load` found."""

    rows: dict[str, Row]  # the snapshot's
    index: dict | None  # the snapshot's catalog index (None: no snapshot)
    journal: dict[str, Row | None]  # changed since the snapshot (None: no longer served)


class ParseCache:
    """The cache file of one worklist folder; used from one thread at a time."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = Path(path)
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
            conn.execute("CREATE TABLE IF NOT EXISTS snapshot(id INTEGER PRIMARY KEY, data BLOB)")
            conn.execute("CREATE TABLE IF NOT EXISTS journal(name TEXT PRIMARY KEY, head BLOB, "
                         "packed BLOB)")
            # One folder per file: a snapshot of another folder or format is dropped.
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            if meta.get("version") != _version() or meta.get("folder") != self.folder:
                conn.execute("DELETE FROM snapshot")
                conn.execute("DELETE FROM journal")
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 (("version", _version()), ("folder", self.folder)))
        return conn

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                Path(str(self.path) + suffix).unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("worklist parse cache: cannot remove %s%s: %s", self.path, suffix,
                            e.strerror or e)

    def load(self) -> Cached:
        """The snapshot and the journal (empty if the cache is not usable)."""
        empty = Cached({}, None, {})
        if self._conn is None:
            return empty
        try:
            rows: dict[str, Row] = {}
            index = None
            found = self._conn.execute("SELECT data FROM snapshot WHERE id=1").fetchone()
            if found is not None:
                tag, items, index = marshal.loads(found[0])
                if tag != _version():
                    raise ValueError("snapshot of another version")
                rows = {name: Row(*fields) for name, fields in items.items()}
            journal = {name: None if head is None else _row(head, packed)
                       for name, head, packed in self._conn.execute(
                           "SELECT name, head, packed FROM journal")}
            self.journal_rows = len(journal)
            return Cached(rows, index, journal)
        except (apsw.Error, ValueError, EOFError, TypeError, struct.error,
                UnicodeDecodeError) as e:
            log.warning("worklist parse cache %s cannot be read (%s): reading every file",
                        self.path, e)
            return empty

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
                                       ((name, None if row is None else _head(row),
                                         None if row is None else row.packed)
                                        for name, row in rows))
            self.journal_rows += len(rows)
        except apsw.Error as e:
            self._failed(e)

    def write_snapshot(self, rows: dict[str, Row], index: dict) -> None:
        """Replace the snapshot with these rows and index; empties the journal."""
        if self._conn is None:
            return
        data = marshal.dumps((_version(), {name: tuple(row) for name, row in rows.items()},
                              index))
        try:
            with self._conn:
                self._conn.execute("INSERT OR REPLACE INTO snapshot VALUES (1, ?)", (data,))
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
