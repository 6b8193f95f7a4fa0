"""Rebuild the index from the stored files alone (the index lost or corrupt case).

The stored files are plain DICOM Part-10 files named by internal id in 256 fan-out
folders (``StorageDirectory/ab/<32 hex>.dcm``). A reindex walks exactly those (so
``.incoming``, the default ``.tmp``, backups or Orthanc's own files in a shared
folder are never touched), reads each header with the same code and record
building as ingest (appliance.dicomfile.header.read_header,
appliance.store.archive.instance_record), hashes the file, and inserts the rows
in batches into a new index beside the old one. Once every file was seen, the new
index is moved into place and the old one kept aside under
``<IndexDirectory>/replaced/``; files that could not be read are listed (and left
where they are).

What the files cannot tell is lost: where each instance came from (peer, calling
AE title: recorded as "reindex") and the MPPS history; the time received becomes
the file's modification time (the time it was stored).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from appliance.ops.files import match_owner
from appliance.ops.lock import data_folders_locked
from appliance.store.archive import Origin, header_uids, instance_record
from appliance.durable import fsync_dir
from appliance.store.blobs import BlobStore, file_sha256
from appliance.dicomfile.header import InvalidObject, read_header
from appliance.store.index import DB_NAME, Index, InstanceRecord, Snapshot

log = logging.getLogger(__name__)

_FANOUT = re.compile(r"[0-9a-f]{2}\Z")
_STORED = re.compile(r"([0-9a-f]{2})/\1[0-9a-f]{30}\.dcm\Z")
REINDEX_ORIGIN = Origin("reindex")
REPLACED_DIR = "replaced"
_BATCH = 500


def is_stored_relpath(rel: str) -> bool:
    """True for a path of the stored-file layout (``ab/ab<30 hex>.dcm``); anything
    else read from an index or a backup is never joined to a directory."""
    return bool(_STORED.match(rel))


def stored_files(root: Path) -> Iterator[str]:
    """The relative paths of the stored files under ``root``, folder by folder."""
    try:
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and _FANOUT.match(e.name))
    except FileNotFoundError:
        return
    for folder in folders:
        for entry in sorted(os.scandir(root / folder), key=lambda e: e.name):
            rel = f"{folder}/{entry.name}"
            if is_stored_relpath(rel) and entry.is_file(follow_symlinks=False):
                yield rel


def read_record(root: Path, rel: str) -> InstanceRecord:
    """The index record of one stored file; InvalidObject or OSError if unreadable."""
    path = root / rel
    header = read_header(path)
    uids = header_uids(header)
    sha256, size = file_sha256(path)
    try:
        return instance_record(header, uids, size, REINDEX_ORIGIN,
                               received_at=os.stat(path).st_mtime, file_path=rel, sha256=sha256)
    except Exception as e:  # noqa: BLE001 - an odd value fails this file only, as at ingest
        raise InvalidObject(f"unusable header: {type(e).__name__}: {e}") from None


@dataclass
class IndexedFiles:
    """What :func:`index_files` did."""

    indexed: int = 0
    duplicates: list[str] = field(default_factory=list)        # older copies of an instance
    unreadable: list[tuple[str, str]] = field(default_factory=list)   # (path, why)


def index_files(index: Index, root: Path, rels: Iterable[str],
                progress: Callable[[int], None] | None = None) -> IndexedFiles:
    """Read the stored files ``rels`` and insert their rows, in batches.

    Two files of one SOP Instance UID (an overwrite interrupted before the old
    file was deleted): the newer file (received later) is kept, the other one is
    reported as a duplicate and left on disk.
    """
    done = IndexedFiles()
    batch: list[InstanceRecord] = []

    def flush() -> None:
        outcomes = index.insert_many(batch, overwrite=False)
        for rec, outcome in zip(batch, outcomes):
            if outcome.inserted:
                done.indexed += 1
                continue
            kept = index.find_instance(rec.sop_instance_uid)
            kept_at = index.read("SELECT received_at FROM instances WHERE id = ?", (kept.id,))[0][0]
            if rec.received_at > kept_at:
                (outcome,) = index.insert_many([rec], overwrite=True)
                done.duplicates.append(kept.file_path)
            else:
                done.duplicates.append(rec.file_path)
        batch.clear()

    for n, rel in enumerate(rels, 1):
        try:
            batch.append(read_record(root, rel))
        except (InvalidObject, OSError) as e:
            done.unreadable.append((rel, str(e)))
        if len(batch) >= _BATCH:
            flush()
        if progress is not None and n % 1000 == 0:
            progress(n)
    if batch:
        flush()
    return done


@dataclass(frozen=True)
class ReindexReport:
    """What a reindex did."""

    indexed: int
    duplicates: list[str]
    unreadable: list[tuple[str, str]]
    counts: dict[str, int]
    replaced: Path | None      # where the old index was put aside
    seconds: float


def replace_index(index_directory: Path, new_file: Path, reason: str) -> Path | None:
    """Move ``new_file`` into place as the index; the old one (with its WAL) goes to
    ``replaced/<time>-<reason>/``, which is returned (None when there was none).

    The old WAL must leave before the new file arrives: SQLite would otherwise
    replay another database's WAL into it.
    """
    current = index_directory / DB_NAME
    companions = [current.with_name(current.name + s) for s in ("-wal", "-shm")]
    aside = None
    if current.exists() or any(p.exists() for p in companions):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = index_directory / REPLACED_DIR / f"{stamp}-{reason}"
        n = 1
        while aside.exists():
            n += 1
            aside = index_directory / REPLACED_DIR / f"{stamp}-{reason}-{n}"
        aside.mkdir(parents=True)
        if current.exists():
            try:
                os.link(current, aside / current.name)
            except OSError:
                shutil.copy2(current, aside / current.name)
        for p in companions:
            if p.exists():
                os.rename(p, aside / p.name)
        fsync_dir(aside)
        fsync_dir(aside.parent)
    os.replace(new_file, current)
    fsync_dir(index_directory)
    return aside


def reindex(storage_directory: Path, index_directory: Path,
            progress: Callable[[int], None] | None = None) -> ReindexReport:
    """Rebuild the index in ``index_directory`` from the files stored in
    ``storage_directory``; see the module docstring.

    Raises appliance.ops.lock.FolderInUse while a daemon (or another offline
    command) uses the data folders; holds their lock meanwhile, so that no
    daemon starts on the index being replaced.
    """
    with data_folders_locked(storage_directory, index_directory, create_storage=False):
        return _reindex_locked(storage_directory, index_directory, progress)


def _reindex_locked(storage_directory: Path, index_directory: Path,
                    progress: Callable[[int], None] | None) -> ReindexReport:
    t0 = time.monotonic()
    index_dir = Path(index_directory)
    index_dir.mkdir(parents=True, exist_ok=True)
    work = index_dir / f".reindex-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        index = Index(work, BlobStore.sync_dirs)
        index.open()
        try:
            root = Path(storage_directory)
            done = index_files(index, root, stored_files(root), progress)
            index.settle_timestamps()
            counts = index.counts()
        finally:
            index.close()
        # Its last connection was a read-only one, which leaves the WAL unmerged.
        Snapshot.checkpoint(work / DB_NAME)
        match_owner(work / DB_NAME, index_dir)
        aside = replace_index(index_dir, work / DB_NAME, "reindex")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("reindex: %d instances indexed, %d unreadable, %d duplicates, %.1f s",
             done.indexed, len(done.unreadable), len(done.duplicates), time.monotonic() - t0)
    return ReindexReport(done.indexed, done.duplicates, done.unreadable, counts, aside,
                         time.monotonic() - t0)
