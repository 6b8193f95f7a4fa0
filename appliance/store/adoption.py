"""Adopting an Orthanc archive in place: its DICOM files become stored
instances of this archive without being copied, and Orthanc's folders stay
exactly as they were.

For each DICOM attachment of Orthanc's index (appliance.store.orthanc) not
adopted yet:

1. its file is read once, hashed (SHA-256 for our index), walked whole and
   its header read with ingest's own record building
   (:func:`appliance.store.archive.record_of_file`);
2. it is made part of the store under the file id Orthanc's uuid gives
   (its 32 hex digits, so ``ab/ab…dcm`` in our fan-out folders; a rerun
   finds its own leftover): a **hard link** to Orthanc's file, so nothing is
   copied and Orthanc's file is untouched (same inode, same bytes; deleting
   our name never deletes Orthanc's). When no link can be made (another
   filesystem under the folder, ``fs.protected_hardlinks`` and another owner:
   the Debian package's service user and Orthanc's files) the row names a
   **reference** to Orthanc's file instead (``orthanc:<uuid>``,
   appliance.store.blobs): read where it is, never written, and forgotten, not
   deleted, when the instance goes. Nothing is copied then either: a copy
   would need the file readable in place, and then the reference serves it, so
   there is no case left where copying helps (``copied`` stays as an outcome
   for indexes adopted by earlier versions). A zlib attachment
   (``StorageCompression``) is decompressed once into a file of our own;
3. batches of instance rows are committed together with one
   ``orthanc_adopted`` mark per attachment, after the folders of the new
   names are fsynced: a crash leaves both or neither, so a restart adopts
   exactly what is left, and nothing twice.

Once every instance is visible, :meth:`OrthancAdoption.verify` compares each
adopted file with the ``uncompressedMD5`` Orthanc recorded (MD5 is slower than
everything else an adoption does, so it waits until the archive is visible): a
file damaged on disk is withdrawn (its row and our name go) and listed. Until
then its mark says ``verified = 0``, so a restart goes on verifying. A file
already found unreadable once, and a decompressed one, are compared at once.

An instance already here (received meanwhile, or twice in Orthanc) is a
duplicate: the archive's copy stays, but for one case: the instance was
adopted earlier from an attachment Orthanc no longer lists, so Orthanc
replaced it since (OverwriteInstances, during a roll-back): with
OverwriteInstances true here too, Orthanc's newer copy replaces ours, as a
second C-STORE of the instance would. An unreadable attachment (missing,
damaged, not DICOM) is marked and listed, tried again at the next pass, and
never stops the others. Adopted instances skip quotas: they were already on
this disk.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import os
import tempfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import apsw

from appliance.dicomfile import structure
from appliance.dicomfile.header import InvalidObject
from appliance.durable import fsync_dir
from appliance.lazyclasses import lazy_dataclass
from appliance.store import orthanc
from appliance.store.archive import Archive, Origin, record_of_file
from appliance.store.blobs import REFERENCE_PREFIX, BlobStore, reference_to, referenced_uuid
from appliance.store.index import DB_NAME, AdoptionMark, InstanceRecord, Superseded
from appliance.store.orthanc import Attachment

log = logging.getLogger(__name__)

ORTHANC_ORIGIN = "Orthanc"
# The head kept in memory for the header readers (as ingest's _FAST_HEADER_LIMIT).
_HEAD = 256 << 10
_CHUNK = 1 << 20
# Threads that fsync a batch's folders (waiting on the disk, not on the CPU).
_SYNCERS = 16
# A file up to this size is read in one piece, which the header readers and
# the structure walk then use whole (no second read of any part of it).
_WHOLE = 16 << 20
# Link errors after which the file is adopted by reference (no link possible here).
_NO_LINK = {errno.EPERM, errno.EACCES, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class Way(enum.Enum):
    """What became of one Orthanc attachment."""

    LINKED = "linked"               # a hard link: no byte copied
    REFERENCED = "referenced"       # no link possible: Orthanc's file read where it is
    COPIED = "copied"               # earlier versions, when no link was possible
    DECOMPRESSED = "decompressed"   # a zlib attachment, written out once
    DUPLICATE = "duplicate"         # the instance was already in the archive
    UNREADABLE = "unreadable"       # missing, damaged or not DICOM: listed, retried later


@lazy_dataclass(frozen=True)
class Adopted:
    """The outcome of one attachment."""

    uuid: str
    way: Way
    bytes: int                      # of the DICOM file
    study: str | None               # Study Instance UID, when read
    reason: str | None = None


@lazy_dataclass
class _Prepared:
    attachment: Attachment
    way: Way
    size: int = 0
    record: InstanceRecord | None = None
    rel: str | None = None
    reason: str | None = None
    verified: bool = True
    superseded: Superseded | None = None


class Damaged(Exception):
    """An attachment whose bytes are not what Orthanc's index says."""


def file_id_of(uuid: str) -> str:
    """Our file id of an Orthanc attachment: its uuid's 32 hex digits (Orthanc
    makes version 4 uuids), so the same attachment always gets the same name."""
    file_id = uuid.replace("-", "").lower()
    BlobStore.relpath(file_id)  # ValueError if it is not 32 hex digits
    return file_id


def _adopted_paths(uuid: str) -> tuple[str, str]:
    """The file paths an instance adopted from attachment ``uuid`` has in our
    index: our own name (linked, copied or decompressed) or a reference."""
    return BlobStore.relpath(file_id_of(uuid)), reference_to(uuid)


class OrthancAdoption:
    """Adopts the attachments of the Orthanc archive in ``orthanc_storage``
    into ``archive`` (whose store is on the same filesystem: the same folder,
    Orthanc's guide layout, or another one). ``listed``: the uuids of every
    DICOM attachment Orthanc's index lists now."""

    def __init__(self, archive: Archive, orthanc_storage: Path, listed: set[str], *,
                 workers: int = 2) -> None:
        self._archive = archive
        self._storage = Path(orthanc_storage)
        self._listed = frozenset(listed)
        self.replaced = 0                           # instances Orthanc's newer copy replaced here
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adopt")
        # The folders of a batch's new names are fsynced at once, not one after
        # the other: the filesystem commits its journal once for all of them
        # (ext4's jbd2 joins concurrent fsyncs), where a loop waited for each.
        self._syncers = ThreadPoolExecutor(max_workers=_SYNCERS, thread_name_prefix="adopt-sync")
        self.reference_reason: str | None = None   # why files are referenced, once known
        # Unreadable before: compared with Orthanc's MD5 at once, not after the pass.
        self._retried = archive.index.adoption_retried()

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True)
        self._syncers.shutdown(wait=True)

    def settled(self) -> set[str]:
        """Uuids of the attachments adopted (or found duplicate) already."""
        return self._archive.index.adopted_uuids()

    def vanished(self, listed: set[str]) -> tuple[list[str], list[str]]:
        """Instances adopted by reference whose file in Orthanc's folder is gone.

        Those whose attachment Orthanc's index no longer lists (``listed``: its
        attachment uuids now) were deleted by Orthanc, run again on these folders:
        they are forgotten, as Orthanc forgot them, rather than listed and answered
        with "file missing". Those it still lists are kept: a file gone behind both
        programs' backs (a folder not mounted yet, a disk fault) must not empty the
        index. Returns (uuids forgotten, uuids kept without a file)."""
        forget, kept = [], []
        for sop, rel in self._archive.index.instances_with_path_prefix(REFERENCE_PREFIX):
            if self._archive.blobs.path(rel).is_file():
                continue
            uuid = rel[len(REFERENCE_PREFIX):]
            if uuid in listed:
                kept.append(uuid)
            else:
                forget.append((uuid, sop, rel))
        self._archive.index.adoption_forget(forget)
        return [uuid for uuid, _, _ in forget], kept

    def unreadable(self, limit: int = 100) -> list[tuple[str, str | None, str]]:
        """(uuid, Orthanc instance id, why) of the attachments that could not be adopted."""
        return self._archive.index.adoption_unreadable(limit)

    def totals(self) -> dict[str, tuple[int, int]]:
        """outcome -> (attachments, bytes) so far, from the index."""
        return self._archive.index.adoption_totals()

    def adopt(self, batch: list[Attachment]) -> list[Adopted]:
        """Adopt ``batch`` (files read on the worker threads), commit it, and
        say what became of each attachment."""
        return self.commit(self.prepare(batch))

    def prepare(self, batch: list[Attachment]) -> list[Future]:
        """Start reading and placing ``batch`` on the worker threads; hand the
        result to :meth:`commit` (always: placed files wait for their rows).
        The next batch can be prepared while this one commits."""
        return [self._pool.submit(self._prepare, a) for a in batch]

    def commit(self, futures: list[Future]) -> list[Adopted]:
        """Commit a prepared batch and say what became of each attachment."""
        prepared = [f.result() for f in futures]
        # A reference placed nothing: no folder of ours changed for it.
        dirs = {self._archive.blobs.path(p.rel).parent for p in prepared
                if p.rel and referenced_uuid(p.rel) is None}
        # Only a placed file gets a row; a duplicate or unreadable one a mark alone.
        items = [(p.record if p.rel else None,
                  AdoptionMark(p.attachment.uuid, p.attachment.instance,
                               p.record.sop_instance_uid if p.record else None,
                               p.way.value, p.size, p.reason, p.verified),
                  p.superseded)
                 for p in prepared]
        try:
            # Durable names before the rows that point at them commit.
            list(self._syncers.map(fsync_dir, dirs))
            outcomes = self._archive.index.record_adoption(items, ())
        except Exception:
            for p in prepared:  # nothing committed: nothing of ours stays
                if p.rel:
                    self._archive.blobs.remove(p.rel)
            raise
        done = []
        for p, outcome in zip(prepared, outcomes):
            way, reason = p.way, p.reason
            if outcome is not None and not outcome.inserted:
                self._archive.blobs.remove(p.rel)  # only our name goes
                way, reason = Way.DUPLICATE, "already stored"
            elif outcome is not None and outcome.replaced_file:
                self._archive.blobs.remove(outcome.replaced_file)  # ours; a reference is forgotten
                self.replaced += 1
            done.append(Adopted(p.attachment.uuid, way, p.size,
                                p.record.study_instance_uid if p.record else None, reason))
        self._archive.note_adopted(sum(1 for a in done if a.way in _PLACED))
        return done

    def unverified(self) -> list[tuple[str, str, str, int, str]]:
        """(uuid, SOP Instance UID, our path, bytes, Study Instance UID) of the
        files still to compare."""
        return self._archive.index.adoption_unverified()

    def verify(self, batch: list[tuple[str, str, str, int, str]], md5_of: dict[str, str | None],
               ) -> list[tuple[tuple[str, str, str, int, str], str, Way]]:
        """Compare the files of ``batch`` (from :meth:`unverified`) with the MD5
        Orthanc recorded (``md5_of``: uuid -> MD5); withdraw the damaged ones.
        Returns (its item, why, how it had been adopted) of those withdrawn."""
        def check(item: tuple[str, str, str, int, str]) -> str | None:
            uuid, _sop, rel, _bytes, _study = item
            expected = md5_of.get(uuid)
            if not expected or rel not in _adopted_paths(uuid):
                # Orthanc did not record one (or forgot the attachment), or a
                # store replaced the instance since: nothing of Orthanc's to compare.
                return None
            try:
                _head, _size, _sha, md5 = _read_hashed(self._archive.blobs.path(rel), True,
                                                       sha256=False)
            except OSError as e:
                return e.strerror or str(e)
            return None if md5 == expected.lower() else _MD5_DIFFERS

        withdrawn = []
        for item, why in zip(batch, self._pool.map(check, batch)):
            if why is None:
                continue
            uuid, sop, rel, _bytes, _study = item
            path = self._archive.index.adoption_withdraw(uuid, sop, rel, why)
            if path:
                self._archive.blobs.remove(path)  # our name only: Orthanc's file stays
            withdrawn.append((item, why, Way.LINKED if referenced_uuid(rel) is None
                              else Way.REFERENCED))
        gone = {item[0] for item, _, _ in withdrawn}
        self._archive.index.adoption_verified(item[0] for item in batch if item[0] not in gone)
        return withdrawn

    # -- one attachment, on a worker thread ------------------------------------

    def _prepare(self, a: Attachment) -> _Prepared:
        try:
            return self._place(a)
        except (OSError, zlib.error, ValueError, InvalidObject, structure.Malformed, Damaged) as e:
            why = f"{type(e).__name__}: {e}" if isinstance(e, (zlib.error, ValueError)) else str(e)
            if isinstance(e, OSError):
                why = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            return _Prepared(a, Way.UNREADABLE, a.uncompressed_size, reason=why[:500])

    def _place(self, a: Attachment) -> _Prepared:
        source = orthanc.attachment_path(self._storage, a.uuid)
        rel = BlobStore.relpath(file_id_of(a.uuid))
        dest = self._archive.blobs.path(rel)
        temp = None
        try:
            now = bool(a.md5) and a.uuid in self._retried
            if a.compression == orthanc.COMPRESSION_NONE:
                size, record = _examined(source, _read_hashed(source, now), a, now, rel)
            elif a.compressed:
                now = bool(a.md5)  # written out anyway: hashed on the way
                temp, hashed = self._decompress(source, bool(a.md5))
                size, record = _examined(Path(temp), hashed, a, now, rel)
            else:
                raise Damaged(f"compression type {a.compression} unknown")
            existing = self._archive.index.find_instance(record.sop_instance_uid)
            superseded = None
            if existing is not None:
                superseded = self._superseded(record.sop_instance_uid, existing.file_path)
                if superseded is None:
                    if existing.file_path != rel:
                        _unlink_quietly(dest)  # a leftover of an interrupted pass
                    return _Prepared(a, Way.DUPLICATE, size, record, reason="already stored")
            if temp is not None:
                os.replace(temp, dest)
                temp = None
                way = Way.DECOMPRESSED
            elif self._link(source, dest):
                way = Way.LINKED
            else:
                way, rel = Way.REFERENCED, reference_to(a.uuid)
                record = replace(record, file_path=rel)
            return _Prepared(a, way, size, record=record, rel=rel, verified=now or not a.md5,
                             superseded=superseded)
        finally:
            if temp is not None:
                _unlink_quietly(Path(temp))

    def _superseded(self, sop_instance_uid: str, file_path: str) -> Superseded | None:
        """The earlier adoption a new attachment of this instance replaces: with
        OverwriteInstances, when the instance's file is still the one adopted
        from an attachment Orthanc's index no longer lists (Orthanc replaced the
        instance since). None otherwise: the copy here stays."""
        if not self._archive.overwrite_instances:
            return None
        for uuid in self._archive.index.adoption_placed(sop_instance_uid):
            if uuid not in self._listed and file_path in _adopted_paths(uuid):
                return Superseded(uuid, file_path)
        return None

    def _link(self, source: Path, dest: Path) -> bool:
        """Give ``dest`` the file ``source`` by a hard link; False when no link
        can be made here (the file is then adopted by reference)."""
        try:
            os.link(source, dest)
            return True
        except FileExistsError:
            if os.path.samefile(source, dest):
                return True  # linked by an interrupted pass
            os.unlink(dest)
            return self._link(source, dest)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            if self.reference_reason is None:
                self.reference_reason = e.strerror or str(e)
                log.warning("cannot hard-link Orthanc's files into %s (%s): adopting them by "
                            "reference, read where they are (nothing copied); they must stay in "
                            "Orthanc's folder", self._archive.blobs.root, e.strerror)
            return False

    def _decompress(self, source: Path, md5: bool) -> tuple[str, tuple[bytes, int, str, str | None]]:
        """Orthanc's ZlibWithSize (8-byte little-endian size, then a zlib stream)
        written out to an fsynced file in the incoming folder."""
        fd, temp = tempfile.mkstemp(dir=self._archive.blobs.incoming, suffix=".part")
        try:
            with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
                prefix = src.read(8)
                if len(prefix) < 8:
                    raise Damaged("compressed attachment shorter than its size prefix")
                expected = int.from_bytes(prefix, "little")
                z = zlib.decompressobj()
                hashed = _Hashing(md5)
                while chunk := src.read(_CHUNK):
                    data = z.decompress(chunk)
                    hashed.update(data)
                    out.write(data)
                data = z.flush()
                hashed.update(data)
                out.write(data)
                if not z.eof:
                    raise Damaged("compressed attachment cut short")
                if hashed.size != expected:
                    raise Damaged(f"decompressed to {hashed.size} bytes, its prefix says {expected}")
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            _unlink_quietly(Path(temp))
            raise
        return temp, hashed.result()


def _examined(readable: Path, hashed: tuple[bytes, int, str, str | None], a: Attachment,
              now: bool, rel: str) -> tuple[int, InstanceRecord]:
    """(size, record) of the DICOM file of ``a`` at ``readable``, read and
    hashed already (``hashed``: head, size, SHA-256, MD5): its size checked
    with Orthanc's index, its MD5 too when ``now``, then walked whole and its
    record built as ingest builds one, under our path ``rel``. Raises Damaged,
    InvalidObject, structure.Malformed or OSError."""
    head, size, sha256, md5 = hashed
    if now and md5 != a.md5.lower():
        raise Damaged(_MD5_DIFFERS)
    if a.uncompressed_size and size != a.uncompressed_size:
        raise Damaged(f"{size} bytes, Orthanc's index says {a.uncompressed_size}")
    origin = Origin(ORTHANC_ORIGIN, None, a.remote_aet)
    record, unlike = record_of_file(readable, head, size, origin, received_at=a.received_at,
                                    sha256=sha256, file_path=rel)
    if unlike is not None:
        # Orthanc stored it: kept, as it was served there.
        log.debug("adopting %s although %s", a.uuid, unlike)
    return size, record


_PLACED = (Way.LINKED, Way.REFERENCED, Way.COPIED, Way.DECOMPRESSED)
_MD5_DIFFERS = "MD5 differs from the one in Orthanc's index: the file is damaged"


class _Hashing:
    """SHA-256 (unless ``sha256`` is false: the MD5 comparison alone) and MD5
    (``md5``: Orthanc recorded one to compare with) of a stream, and its first
    bytes (for the header readers)."""

    def __init__(self, md5: bool = True, *, sha256: bool = True) -> None:
        self.sha256 = hashlib.sha256() if sha256 else None
        self.md5 = hashlib.md5() if md5 else None
        self.head = b""
        self.size = 0

    def update(self, data: bytes) -> None:
        if len(self.head) < _HEAD:
            self.head += data[:_HEAD - len(self.head)]
        # hashlib releases the GIL over buffers this size: the worker threads
        # hash in parallel.
        if self.sha256 is not None:
            self.sha256.update(data)
        if self.md5 is not None:
            self.md5.update(data)
        self.size += len(data)

    def result(self) -> tuple[bytes, int, str, str | None]:
        md5 = self.md5.hexdigest() if self.md5 is not None else None
        sha256 = self.sha256.hexdigest() if self.sha256 is not None else ""
        return self.head, self.size, sha256, md5


def _read_hashed(path: Path, md5: bool, *, sha256: bool = True,
                 ) -> tuple[bytes, int, str, str | None]:
    """(head, size, SHA-256, MD5) of the file at ``path``, read once. A file
    of up to _WHOLE bytes is read in one piece and its head is all of it."""
    hashed = _Hashing(md5, sha256=sha256)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size <= _WHOLE:
            # One more byte than the size: a file that grew is read on below.
            whole = f.read(size + 1)
            hashed.update(whole)
            hashed.head = whole
        while chunk := f.read(_CHUNK):
            hashed.update(chunk)
    return hashed.result()


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def settled_readonly(index_directory: Path) -> set[str]:
    """The settled attachments as the index in ``index_directory`` lists them,
    read without opening the archive (a dry run beside a running daemon, or
    with none); empty when there is no index or it predates adoption."""
    path = Path(index_directory) / DB_NAME
    if not path.exists():
        return set()
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.setbusytimeout(5000)
        return {r[0] for r in conn.execute(
            "SELECT uuid FROM orthanc_adopted WHERE outcome != 'unreadable'")}
    except apsw.SQLError:
        return set()  # no such table: nothing adopted yet
    finally:
        conn.close()


def marks_to_carry(index_directory: Path) -> list[tuple] | None:
    """The adoption marks a reindex carries over from the index in
    ``index_directory`` (read only), so that what was deleted stays deleted and
    what was linked is not read again: all but those of the instances it still
    lists by reference (those files are not in our folders, so the reindex
    adopts them again from Orthanc's index). None when there is no readable
    index, or it predates adoption."""
    path = Path(index_directory) / DB_NAME
    if not path.exists():
        return None
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error:
        return None
    try:
        conn.setbusytimeout(5000)
        return list(conn.execute(
            "SELECT uuid, orthanc_instance, sop_instance_uid, outcome, bytes, reason, adopted_at, "
            "verified FROM orthanc_adopted m WHERE NOT EXISTS "
            "(SELECT 1 FROM instances i WHERE i.file_path = ? || m.uuid)", (REFERENCE_PREFIX,)))
    except apsw.Error:
        return None  # damaged (the reason for a reindex), or no such table
    finally:
        conn.close()


__all__ = ["Adopted", "OrthancAdoption", "Way", "file_id_of", "marks_to_carry", "settled_readonly"]
