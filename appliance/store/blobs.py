"""The file store: DICOM Part-10 files as received, named by internal id.

Layout under the storage root::

    <root>/ab/ab0123...ef.dcm           stored instances (fan-out by id)

and under the incoming directory (same filesystem, so a rename is atomic)::

    <incoming>/<random>.part|.spare     objects being received, empty spares

A stored path never comes from client input: ids are generated here
(:meth:`BlobStore.new_id`, random but for the folder) and only ever joined
under the root.

An index row may instead name a **reference**, ``orthanc:<attachment uuid>``:
a file of the Orthanc archive adopted in place where no hard link could be
made (appliance.store.adoption). It is read where Orthanc keeps it
(``<root>/xx/yy/<uuid>``: Orthanc's StorageDirectory is ours) and never
written, renamed or unlinked here: removing a reference only forgets it. The
uuid and not Orthanc's absolute path is kept, so that code joining a row's
path to a folder (a mirror, a restore) can never land on Orthanc's file, and
the references follow the storage folder when it moves.

Durability (the store contract, docs/DESIGN.md): a received file is fsynced,
then renamed into place; the rename is made durable by fsyncing the
directory that holds it, which :meth:`BlobStore.sync_dirs` does for a whole
batch of renames at once just before the index commit that acknowledges them.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from appliance.durable import fsync_dir
from appliance.store.orthanc import attachment_path


log = logging.getLogger(__name__)

_SUFFIX = ".dcm"
_FILE_ID = re.compile(r"[0-9a-f]{32}")
_PART = ".part"
_SPARE = ".spare"    # made ahead, empty until taken (see _Spares)
REFERENCE_PREFIX = "orthanc:"


def reference_to(uuid: str) -> str:
    """The stored path of an Orthanc attachment adopted by reference."""
    attachment_path(Path("."), uuid)  # ValueError if it cannot be one
    return REFERENCE_PREFIX + uuid


def referenced_uuid(relpath: str) -> str | None:
    """The Orthanc attachment uuid a stored path refers to, or None for a file of ours."""
    return relpath[len(REFERENCE_PREFIX):] if relpath.startswith(REFERENCE_PREFIX) else None


def resolve(root: Path, relpath: str) -> Path:
    """Where the file of a stored path is: under ``root`` for ours, where
    Orthanc keeps it for a reference (to read only)."""
    uuid = referenced_uuid(relpath)
    return Path(root) / relpath if uuid is None else attachment_path(root, uuid)


def _libc_sync_file_range():
    """sync_file_range(2) from libc, or None where it does not exist."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE_WRITE = 2
# Start writeback of a file being received every this many bytes, so the
# fsync before acknowledging has little left to do and a large object does
# not pile up dirty pages in memory.
_WRITEBACK_EVERY = 256 << 10
# What arrives is collected in blocks of this size, each hashed and written
# by a writer thread while the receiving thread goes on receiving.
_BLOCK = 256 << 10
# At most this much of one object waits for its writer; beyond it the
# receiving thread waits (a disk slower than the network slows the sender).
_MAX_QUEUED = 8 << 20
# Once this much of an object is in, its header (a few KB for an ultrasound
# image) is almost always whole: IncomingFile.on_header runs then.
_HEADER_AT = 64 << 10
assert _HEADER_AT <= _BLOCK  # on_header gets the start from memory


class IncomingFile:
    """A file being received: ``write`` what arrives, ``flush`` and ``close`` at
    the end; its ``size`` and ``sha256`` are known when it is written out.

    It lives in the incoming directory, on the filesystem of the storage, where
    a rename into place is atomic. Protocol adapters wrap it in the shape their
    library wants (the DICOM transport's receive adapter, appliance.dicom.receive).

    The receiving thread only copies what arrives into a block; full blocks
    are hashed, written and started on their way to disk by a writer thread
    (``writers``: hashing, writing and sync_file_range all release the GIL),
    in order, one block at a time per file. :meth:`flush` waits for them and
    writes the rest. Without ``writers`` the caller's thread does it all.
    """

    def __init__(self, directory: Path, sync_file_range=None,
                 writers: ThreadPoolExecutor | None = None,
                 made: tuple[int, str] | None = None, received=None) -> None:
        # ``made``: an empty file (descriptor, path) made ahead in ``directory``;
        # ``received()`` is called once, when the receive ends (flush or close).
        fd, path = made or tempfile.mkstemp(dir=directory, suffix=_PART)
        self.path = path
        self._raw = os.fdopen(fd, "wb", buffering=0)  # blocks are written whole
        self.size = 0
        self._sync_file_range = sync_file_range
        self._written = 0
        self._synced_to = 0
        # A write error (disk full) is kept here rather than raised: raised, it
        # would kill the receiving thread mid-transfer and leave this file
        # behind; kept, the rest of the object is drained and dropped, and the
        # store answers it (0xA700 for a full disk).
        self.error: OSError | None = None
        # Called once, on the receiving thread, with the first _HEADER_AT bytes
        # (or more) once they are in; what it returns is kept in ``header``.
        self.on_header = None
        self.header = None
        self._sha = hashlib.sha256()
        self._block = bytearray()         # received, not handed to the writer yet
        self._writers = writers
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[bytearray] = deque()
        self._queued = 0                  # bytes handed over, not written yet
        self._writing = False             # a writer task runs for this file
        self._received = received

    def write(self, data: bytes) -> int:
        """Take ``data`` (written later, in order); after a write error, count and drop it."""
        n = len(data)
        self.size += n
        if self.error is not None:
            return n
        self._block += data
        if self.on_header is not None and self.size >= _HEADER_AT:
            # Nothing was handed over yet (_HEADER_AT <= _BLOCK): the block is the start.
            hook, self.on_header = self.on_header, None
            self.header = hook(self, bytes(self._block))
        if len(self._block) >= _BLOCK:
            self._hand_over()
        return n

    def _hand_over(self) -> None:
        block, self._block = self._block, bytearray()
        if self._writers is None:
            self._write_out(block)
            return
        with self._lock:
            while self._queued >= _MAX_QUEUED and self.error is None:
                self._changed.wait()
            self._queue.append(block)
            self._queued += len(block)
            if self._writing:
                return
            self._writing = True
        self._writers.submit(self._drain)

    def _drain(self) -> None:
        """Writer thread: write the queued blocks in order, until none is left."""
        while True:
            with self._lock:
                if not self._queue:
                    self._writing = False
                    self._changed.notify_all()
                    return
                block = self._queue.popleft()
            self._write_out(block)
            with self._lock:
                self._queued -= len(block)
                self._changed.notify_all()

    def _write_out(self, block: bytearray) -> None:
        if self.error is not None:
            return
        try:
            self._sha.update(block)
            with memoryview(block) as view:
                while view:
                    view = view[self._raw.write(view):]
            self._written += len(block)
            if self._sync_file_range is not None and self._written - self._synced_to >= _WRITEBACK_EVERY:
                self._start_writeback()
        except OSError as e:
            self._failed(e)

    def _failed(self, e: OSError) -> None:
        self.error = e
        try:
            os.ftruncate(self._raw.fileno(), 0)  # give the space back now
        except OSError:
            pass

    def _start_writeback(self) -> None:
        self._sync_file_range(self._raw.fileno(), self._synced_to, 0, _SYNC_FILE_RANGE_WRITE)
        self._synced_to = self._written

    def _settle(self) -> None:
        """Wait until the writer has written every block handed to it."""
        with self._lock:
            while self._writing:
                self._changed.wait()

    def flush(self, *, last: bool = True) -> None:
        """Write everything received and start it on its way to disk; the
        OSError of a write that failed meanwhile is raised. ``last``: the
        receive is over (False: more is coming, the file is only wanted
        readable now)."""
        if last:
            self._ended()
        if self._raw.closed or self.error is not None:
            return
        self._settle()
        if self._block:
            block, self._block = self._block, bytearray()
            self._write_out(block)
        if self.error is not None:
            raise self.error
        if self._sync_file_range is not None and self._written > self._synced_to:
            try:
                self._start_writeback()
            except OSError as e:
                self._failed(e)
                raise

    def _ended(self) -> None:
        received, self._received = self._received, None
        if received is not None:
            received()

    def sha256(self) -> str:
        """SHA-256 (hex) of everything written so far (after :meth:`flush`: all of it)."""
        return self._sha.hexdigest()

    def fileno(self) -> int:
        """The OS file descriptor."""
        return self._raw.fileno()

    def close(self) -> None:
        """Write what was received and close the file (idempotent)."""
        self._ended()
        if not self._raw.closed:
            try:
                self.flush()
            except OSError:
                pass  # kept in self.error
            try:
                self._raw.close()
            except OSError:
                if self.error is None:
                    raise

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._raw.closed

    def discard(self) -> None:
        """Close and delete the file; never raises for a missing file."""
        self._block = bytearray()  # not worth writing
        self._settle()
        try:
            self.close()
        except OSError:
            pass  # the unwritten rest (disk full): the file goes anyway
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "IncomingFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def partial_files(incoming: Path) -> list[Path]:
    """The files in an incoming directory but the empty spares made ahead:
    objects being received, or left by a crash until the next start."""
    return [p for p in sorted(incoming.iterdir()) if not _empty_spare(p)]


def _empty_spare(path: Path) -> bool:
    try:
        return path.suffix == _SPARE and path.stat().st_size == 0
    except FileNotFoundError:
        return True  # gone meanwhile: not left over


class _Spares:
    """Empty incoming files, made ahead by a thread of their own.

    Creating a file is ext4's inode allocation, 0.3 ms here and more on a
    file system with many recent deletions: made ahead, that time is not at
    the start of every receive, and it runs beside it (no GIL in the kernel).
    """

    def __init__(self, directory: Path, keep: int = 4) -> None:
        self._directory = directory
        self._keep = keep
        self._made: deque[tuple[int, str]] = deque()
        self._wanted = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start making files (the incoming directory exists and was swept)."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="spare-files", daemon=True)
        self._thread.start()

    def take(self) -> tuple[int, str] | None:
        """A made file (descriptor, path), or None when there is none ready."""
        with self._wanted:
            made = self._made.popleft() if self._made else None
            self._wanted.notify()
        return made

    def _run(self) -> None:
        failing = False
        while True:
            with self._wanted:
                while not self._stopping and len(self._made) >= self._keep:
                    self._wanted.wait()
                if self._stopping:
                    return
            try:
                made = tempfile.mkstemp(dir=self._directory, suffix=_SPARE)
            except OSError as e:
                if not failing:  # once, not for every retry (a full disk)
                    log.warning("could not make a spare incoming file: %s", e)
                failing = True
                with self._wanted:  # retried when one is taken, or in 5 s
                    self._wanted.wait(timeout=5)
                continue
            failing = False
            with self._wanted:
                self._made.append(made)

    def stop(self) -> None:
        """Stop the thread and delete the files not taken."""
        with self._wanted:
            self._stopping = True
            self._wanted.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        while self._made:
            fd, name = self._made.popleft()
            os.close(fd)
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass


class Sealing:
    """Writing out the rest of one received file and fsyncing it, running."""

    def __init__(self, incoming: IncomingFile, pool: ThreadPoolExecutor) -> None:
        self._flushed: Future = Future()
        self._synced = pool.submit(self._seal, incoming)

    def _seal(self, incoming: IncomingFile) -> str:
        try:
            incoming.flush()
        except BaseException as e:
            self._flushed.set_exception(e)
            raise
        self._flushed.set_result(None)
        os.fsync(incoming.fileno())
        return incoming.sha256()

    def wait_written(self) -> None:
        """Block until the whole file is written (readable by name, not yet
        durable); raises the OSError of a failed write."""
        self._flushed.result()

    def wait(self) -> str:
        """Block until the file is durable; its SHA-256, or the OSError raised."""
        return self._synced.result()


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
        self._sync_file_range = _libc_sync_file_range()
        # fsync releases the GIL; a few threads let concurrent stores overlap.
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
        # The writers of files being received (IncomingFile).
        self._writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="incoming")
        self._spares = _Spares(self.incoming)
        self._receiving = 0  # IncomingFile objects not flushed yet
        self._receiving_lock = threading.Lock()

    def open(self) -> int:
        """Create the directories and sweep leftovers of a crash.

        Returns the number of partial files removed (empty spares are not
        counted). Anything in the incoming directory at start-up was never
        acknowledged (acknowledgement happens only after the rename out of
        it), so deleting it loses nothing.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._make_fanout()
        swept = 0
        for entry in os.scandir(self.incoming):
            if entry.is_file(follow_symlinks=False):
                swept += entry.stat(follow_symlinks=False).st_size > 0
                os.unlink(entry.path)
        self._spares.start()
        return swept

    def _make_fanout(self) -> None:
        """Create the 256 fan-out directories once, durably, so that no store
        pays for a mkdir and the fsyncs of its parents."""
        made = False
        for i in range(256):
            d = self.root / f"{i:02x}"
            if not d.is_dir():
                d.mkdir()
                made = True
        if made:
            fsync_dir(self.root)
            fsync_dir(self.root.parent)

    def close(self) -> None:
        """Stop the I/O pool (after the last store)."""
        self._spares.stop()
        self._writers.shutdown(wait=True)
        self._io.shutdown(wait=True)

    def partial_files(self) -> list[Path]:
        """:func:`partial_files` of this store's incoming directory."""
        return partial_files(self.incoming)

    def new_incoming(self) -> IncomingFile:
        """A new file to receive an object into."""
        with self._receiving_lock:
            # A writer thread pays when a receive would otherwise wait for its
            # own hashing and writing; with other receives going on, the cores
            # are busy anyway and it only adds hand-overs of the GIL (measured:
            # 4 associations were ~8 % faster writing on their own threads).
            alone = self._receiving == 0
            self._receiving += 1
        return IncomingFile(self.incoming, self._sync_file_range, self._writers if alone else None,
                            self._spares.take(), self._received)

    def _received(self) -> None:
        with self._receiving_lock:
            self._receiving -= 1

    @staticmethod
    def new_id(now: float | None = None) -> str:
        """A fresh internal file id: 120 random bits behind a two-digit prefix
        that names the fan-out folder and changes every minute.

        The files stored in the same minute share one folder, so the group
        commit that acknowledges them fsyncs one folder rather than one per
        file (four parallel associations: four fsyncs, each a journal commit,
        per commit); over days the 256 folders still fill evenly.
        """
        minute = int((time.time() if now is None else now) // 60)
        return f"{minute % 256:02x}{uuid.uuid4().hex[2:]}"

    @staticmethod
    def relpath(file_id: str) -> str:
        """The storage-relative path of a file id (fan-out into 256 folders:
        a million instances is 4,000 files a folder, which ext4 indexes)."""
        if not _FILE_ID.fullmatch(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return f"{file_id[0:2]}/{file_id}{_SUFFIX}"

    def path(self, relpath: str) -> Path:
        """Absolute path of a stored file from its path in the index (a
        reference: Orthanc's file, to read only)."""
        return resolve(self.root, relpath)

    def seal(self, incoming: IncomingFile) -> "Sealing":
        """Write out the rest of ``incoming`` and fsync it on the I/O pool,
        while the caller checks the header (its hash is computed as it is
        written). The caller reads the file only after :meth:`Sealing.wait_written`."""
        return Sealing(incoming, self._io)

    def adopt(self, incoming: IncomingFile, file_id: str) -> tuple[str, Path]:
        """Move a received (and fsynced) file into place under ``file_id``.

        Returns (relative path, directory to fsync before acknowledging).
        """
        rel = self.relpath(file_id)
        dest = self.root / rel
        os.rename(incoming.path, dest)
        return rel, dest.parent

    @staticmethod
    def sync_dirs(directories: set[Path]) -> None:
        """fsync each directory once (a batch of renames)."""
        for d in directories:
            fsync_dir(d)

    def remove(self, relpath: str) -> None:
        """Delete a stored file; a missing file is not an error. A reference
        is only forgotten: Orthanc's file stays."""
        if referenced_uuid(relpath) is not None:
            return
        try:
            os.unlink(self.path(relpath))
        except FileNotFoundError:
            log.warning("stored file already missing: %s", relpath)

    def remove_durably(self, relpaths: list[str]) -> int:
        """Delete stored files (missing ones are not an error: a crash may
        have come after their unlink) and fsync their folders, so that none of
        them comes back after a power cut. Returns how many were there.
        References are only forgotten (Orthanc's files stay, uncounted).

        The unlinks run on the I/O pool: each is a journal update that waits
        on the filesystem, about 1 ms here, and they overlap."""
        paths = [self.path(rel) for rel in relpaths if referenced_uuid(rel) is None]
        removed = sum(self._io.map(_unlink, paths, chunksize=16)) if paths else 0
        self.sync_dirs({path.parent for path in paths})
        return removed


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
