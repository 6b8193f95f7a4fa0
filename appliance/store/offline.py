"""The store's door for offline maintenance: rebuilding an index from the stored
files (reindex), and bringing a restored index back in line with them (restore).

These run while no daemon holds the data folders (appliance.ops.lock decides
that; the callers in appliance.ops take the lock). What an index file and the
stored-file layout are stays the store's business: ops/ calls the functions
here and never opens an Index or a BlobStore itself (tests/test_layers.py).

The stored files are plain DICOM Part-10 files named by internal id in 256
fan-out folders (``StorageDirectory/ab/<32 hex>.dcm``). Only those are read, so
``.incoming``, the default ``.tmp``, backups or Orthanc's own files in a shared
folder are never touched. An index row may also name a reference to a file of
an adopted Orthanc archive (``orthanc:<uuid>``, appliance.store.blobs): it is
read where Orthanc keeps it, copied to a mirror under ``orthanc/`` and, when
only the mirror has it still, brought back as a file of ours (never into
Orthanc's folders). Each header is read with the same code and record
building as ingest (appliance.dicomfile.header.read_header,
appliance.store.archive.instance_record).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import field
from datetime import datetime, timezone
from pathlib import Path

from appliance.dicomfile.header import InvalidObject, read_header
from appliance.durable import fsync_dir
from appliance.store.adoption import file_id_of, marks_to_carry
from appliance.lazyclasses import lazy_dataclass
from appliance.store.archive import Origin, header_uids, instance_record
from appliance.store.blobs import BlobStore, file_sha256, referenced_uuid, resolve
from appliance.store.index import DB_NAME, SCHEMA_VERSION, Index, InstanceRecord, Snapshot

__all__ = [
    "DB_NAME", "REPLACED_DIR", "SCHEMA_VERSION", "IndexedFiles", "Snapshot", "file_sha256",
    "is_stored_relpath", "mirror_relpath", "rebuild_index", "reconcile_index", "replace_index",
    "restored_relpath", "stored_files", "stored_path",
]

_FANOUT = re.compile(r"[0-9a-f]{2}\Z")
_STORED = re.compile(r"([0-9a-f]{2})/\1[0-9a-f]{30}\.dcm\Z")
REINDEX_ORIGIN = Origin("reindex")
REPLACED_DIR = "replaced"
_BATCH = 500


def is_stored_relpath(rel: str) -> bool:
    """True for a path of the stored-file layout (``ab/ab<30 hex>.dcm``); anything
    else read from an index or a backup is never joined to a directory."""
    return bool(_STORED.match(rel))


def stored_path(root: Path, rel: str) -> Path | None:
    """Where the file an index row names is read (ours under ``root``, a
    reference in Orthanc's folder); None for a path of no known form, which is
    never joined to a directory."""
    if is_stored_relpath(rel):
        return root / rel
    try:
        return resolve(root, rel) if referenced_uuid(rel) is not None else None
    except ValueError:
        return None


def mirror_relpath(rel: str) -> str | None:
    """Where the storage mirror keeps the file an index row names: ours at the
    same path, a referenced one of Orthanc's under ``orthanc/``; None for a
    path of no known form."""
    uuid = referenced_uuid(rel)
    if uuid is None:
        return rel if is_stored_relpath(rel) else None
    return f"orthanc/{uuid[:2]}/{uuid}" if stored_path(Path("."), rel) is not None else None


def restored_relpath(rel: str) -> str | None:
    """Where a file copied back from the mirror goes in the storage: ours where
    it was, a referenced one as a file of ours named after its Orthanc uuid
    (Orthanc's folders are never written); None for a path of no known form."""
    uuid = referenced_uuid(rel)
    if uuid is None:
        return rel if is_stored_relpath(rel) else None
    try:
        return BlobStore.relpath(file_id_of(uuid))
    except ValueError:
        return None


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
    """The index record of one stored file; InvalidObject or OSError if unreadable.

    What the file cannot tell is recorded as such: the origin is "reindex" and the
    time received is the file's modification time (the time it was stored).
    """
    path = root / rel
    header = read_header(path)
    uids = header_uids(header)
    sha256, size = file_sha256(path)
    try:
        return instance_record(header, uids, size, REINDEX_ORIGIN,
                               received_at=os.stat(path).st_mtime, file_path=rel, sha256=sha256)
    except Exception as e:  # noqa: BLE001 - an odd value fails this file only, as at ingest
        raise InvalidObject(f"unusable header: {type(e).__name__}: {e}") from None


@lazy_dataclass
class IndexedFiles:
    """What indexing a set of stored files did."""

    indexed: int = 0
    duplicates: list[str] = field(default_factory=list)        # older copies of an instance
    unreadable: list[tuple[str, str]] = field(default_factory=list)   # (path, why)
    counts: dict[str, int] = field(default_factory=dict)       # rows in the index afterwards
    marks_carried: bool = False     # the old index's adoption marks were read (a reindex)


def _index_files(index: Index, root: Path, rels: Iterable[str], done: IndexedFiles,
                 progress: Callable[[int], None] | None = None) -> None:
    """Read the stored files ``rels`` and insert their rows, in batches.

    Two files of one SOP Instance UID (an overwrite interrupted before the old
    file was deleted): the newer file (received later) is kept, the other one is
    reported as a duplicate and left on disk.
    """
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
                index.insert_many([rec], overwrite=True)
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


def rebuild_index(storage_directory: Path, work: Path,
                  progress: Callable[[int], None] | None = None,
                  old_index: Path | None = None) -> IndexedFiles:
    """Build a new index in the empty folder ``work`` from every stored file under
    ``storage_directory``; the database ``work/DB_NAME`` is then whole in one file
    (its WAL folded in), ready for :func:`replace_index`. The adoption marks of
    the index in the folder ``old_index``, when it can be read, are carried over
    (appliance.store.adoption.marks_to_carry: all but the referenced instances',
    which the caller adopts again from Orthanc's index)."""
    done = IndexedFiles()
    index = Index(work, BlobStore.sync_dirs)
    index.open()
    try:
        root = Path(storage_directory)
        marks = marks_to_carry(old_index) if old_index is not None else None
        if marks:
            index.carry_adoption_marks(marks)
        done.marks_carried = marks is not None
        _index_files(index, root, stored_files(root), done, progress)
        index.settle_timestamps()
        done.counts = index.counts()
    finally:
        index.close()
    # Its last connection was a read-only one, which leaves the WAL unmerged.
    Snapshot.checkpoint(work / DB_NAME)
    return done


def reconcile_index(index_directory: Path, storage_directory: Path, gone: list[str],
                    moved: dict[str, str] | None = None) -> tuple[int, IndexedFiles]:
    """Bring the index in ``index_directory`` (just restored from a backup, and
    migrated here if older) in line with the stored files: drop the rows of the
    files ``gone`` (missing or damaged), point the rows of ``moved`` (old path ->
    new: referenced files brought back from the mirror as ours) at their new
    file, and index the stored files it does not list (stored after the backup
    was taken). Returns (rows dropped, what was indexed)."""
    done = IndexedFiles()
    index = Index(index_directory, BlobStore.sync_dirs)
    index.open()  # migrates a backup made by an older version
    try:
        dropped = index.delete_instances_at(gone) if gone else 0
        if moved:
            index.move_files(moved)
        listed = {rel for _sop, rel, _size, _sha in index.all_files()}
        storage = Path(storage_directory)
        _index_files(index, storage, (r for r in stored_files(storage) if r not in listed), done)
        done.counts = index.counts()
    finally:
        index.close()
    return dropped, done


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
