"""Rebuild the index from the stored files alone (the index lost or corrupt case).

The stored files are plain DICOM Part-10 files named by internal id in 256 fan-out
folders (``StorageDirectory/ab/<32 hex>.dcm``). A reindex walks exactly those (so
``.incoming``, the default ``.tmp``, backups or Orthanc's own files in a shared
folder are never touched), reads each header with the same code and record
building as ingest (appliance.dicomfile.header.read_header,
appliance.store.archive.instance_record), hashes the file, and inserts the rows
in batches into a new index beside the old one (all of that is the store's:
appliance.store.offline). Once every file was seen, the new
index is moved into place and the old one kept aside under
``<IndexDirectory>/replaced/``; files that could not be read are listed (and left
where they are).

What the files cannot tell is lost: where each instance came from (peer, calling
AE title: recorded as "reindex") and the MPPS history; the time received becomes
the file's modification time (the time it was stored).

An adopted Orthanc archive: what our folders hold of it (links, decompressed
files) is reindexed like any stored file; the instances adopted **by
reference** (their files are in Orthanc's folders only) are adopted again from
Orthanc's index by a pass run at the end (appliance.ops.adopt), which reads
them as the first adoption did. The old index's adoption marks are carried over
when it can still be read, so that an instance deleted since stays deleted and
a linked one is not read again; when it cannot, that pass brings back every
Orthanc instance not in our folders, deleted ones too (the report says so).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.ops.files import match_owner
from appliance.ops.lock import data_folders_locked
from appliance.store.offline import DB_NAME, rebuild_index, replace_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReindexReport:
    """What a reindex did."""

    indexed: int
    duplicates: list[str]
    unreadable: list[tuple[str, str]]
    counts: dict[str, int]
    replaced: Path | None      # where the old index was put aside
    seconds: float
    adoption: dict | None = None   # the pass over Orthanc's index (its snapshot), if one ran
    marks_carried: bool = False    # the old index's adoption marks were read


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
        done = rebuild_index(Path(storage_directory), work, progress, old_index=index_dir)
        match_owner(work / DB_NAME, index_dir)
        aside = replace_index(index_dir, work / DB_NAME, "reindex")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("reindex: %d instances indexed, %d unreadable, %d duplicates, %.1f s",
             done.indexed, len(done.unreadable), len(done.duplicates), time.monotonic() - t0)
    adoption, counts = _adopt_again(Path(storage_directory), index_dir)
    return ReindexReport(done.indexed, done.duplicates, done.unreadable, counts or done.counts,
                         aside, time.monotonic() - t0, adoption, done.marks_carried)


def _adopt_again(storage: Path, index_dir: Path) -> tuple[dict | None, dict[str, int] | None]:
    """A pass over the Orthanc archive in the data folders, if there is one
    (the referenced instances come back): its snapshot, and the counts after it."""
    from appliance.ops.adopt import OrthancAdopter
    from appliance.ops.adopt_command import hand_over
    from appliance.store import Archive, orthanc_index_file

    if orthanc_index_file(index_dir) is None:
        return None, None
    archive = Archive(storage, index_dir)
    archive.open()
    try:
        adopter = OrthancAdopter(archive, storage, index_dir)
        adopter.run_pass()
        return adopter.snapshot(), archive.counts()
    finally:
        archive.close()
        hand_over(storage, index_dir)  # run as root: what the pass wrote, to the daemon's user
