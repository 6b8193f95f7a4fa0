"""One daemon per data folder: an exclusive lock on the index and storage folders.

Whoever changes the data folders (the daemon for its whole life; ``reindex`` and
``backup restore`` while they run) first takes an exclusive ``flock`` on
``pacs-appliance.lock`` in the IndexDirectory and, when it is another folder, in
the StorageDirectory. A second process that finds either taken touches nothing
(no sweep of the incoming files, no runtime file written or removed) and stops
with :class:`FolderInUse`, which names the holder's pid.

Why ``flock`` and not a pid file: the kernel drops the lock when its holder dies,
SIGKILL and power loss included, so a stale lock never blocks a restart, and no
guess about whether a recorded pid is still ours (pids are reused) is needed. The
pid written in the file only names the holder in messages; the lock decides.
Why not ``fcntl``/POSIX record locks: they belong to the process and any close of
any descriptor of the file by that process drops them; ``flock`` belongs to the
open file description we keep. The lock file is never deleted (deleting it while
another process waits on it would let two hold "the" lock on different inodes).
A shared mount over NFS does not honour this; the folders are local here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from appliance.lazyclasses import lazy_dataclass

LOCK_FILE = "pacs-appliance.lock"

# How long a start or an offline command retries a taken lock before it gives up.
# ``status`` probes the lock with a shared flock held for microseconds: a daemon
# starting at that instant must not fail because of it. A real holder keeps it.
_RETRY_SECONDS = 0.5
_RETRY_EVERY = 0.02


class FolderInUse(Exception):
    """Another pacs-appliance process holds the lock of a data folder."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        self.folder = folder
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"another pacs-appliance ({who}) is using {folder}; stop it first")


@lazy_dataclass(frozen=True)
class Holder:
    """Who holds a folder's lock (``pid`` None when the file does not say)."""

    folder: Path
    pid: int | None


def data_folders(storage_directory: Path, index_directory: Path) -> list[Path]:
    """The folders to lock: the index folder, and the storage folder unless it
    is the same one (Orthanc's standard config names one folder for both)."""
    index, storage = Path(index_directory), Path(storage_directory)
    if _same_folder(index, storage):
        return [index]
    return [index, storage]


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet: compare the names they will have
        return a.resolve() == b.resolve()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class FolderLock:
    """Exclusive locks on data folders, held from :meth:`acquire` to :meth:`release`
    (or as a context manager); the lock files record the holder's pid."""

    def __init__(self, folders: Iterable[Path], *, create: bool = True) -> None:
        """``create``: make a missing folder (the daemon); else a missing folder is
        skipped (an offline command must not create a storage folder on an
        unmounted disk's mount point; no process can be using a missing folder)."""
        self.folders = [Path(f) for f in folders]
        self._create = create
        self._fds: list[int] = []

    def acquire(self) -> None:
        """Take every lock or none; raises FolderInUse (or OSError when a lock
        file cannot be made: a read-only or missing folder)."""
        opened: list[tuple[Path, int]] = []
        seen: set[tuple[int, int]] = set()
        try:
            for folder in self.folders:
                if self._create:
                    folder.mkdir(parents=True, exist_ok=True)
                elif not folder.is_dir():
                    continue
                fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) in seen:
                    # The same folder by another name (a symlink, a bind mount):
                    # a second flock of ours on it would conflict with the first.
                    os.close(fd)
                    continue
                seen.add((st.st_dev, st.st_ino))
                opened.append((folder, fd))
                self._lock(folder, fd)
            for _folder, fd in opened:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            for _folder, fd in opened:
                os.close(fd)  # drops the locks taken so far
            raise
        self._fds = [fd for _folder, fd in opened]

    @staticmethod
    def _lock(folder: Path, fd: int) -> None:
        deadline = time.monotonic() + _RETRY_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FolderInUse(folder, _read_pid(fd)) from None
            time.sleep(_RETRY_EVERY)

    def release(self) -> None:
        """Drop the locks (the files stay, emptied: nobody holds them)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def data_folders_locked(storage_directory: Path, index_directory: Path, *,
                        create_storage: bool = True) -> Iterator[FolderLock]:
    """The :class:`FolderLock` of these data folders, held for the ``with`` block.

    The index folder is made when missing; the storage folder only with
    ``create_storage`` (the daemon), else a missing one is not locked.
    """
    Path(index_directory).mkdir(parents=True, exist_ok=True)
    folders = data_folders(storage_directory, index_directory)
    with FolderLock(folders, create=create_storage) as lock:
        yield lock


def holder(folder: Path) -> Holder | None:
    """Who holds ``folder``'s lock, or None when nobody does, without taking it.

    Opens the lock file read-only (``status`` may run as a user who cannot
    write the folder) and tries a shared lock for an instant. Raises OSError
    when there is no lock file to ask (FileNotFoundError: never locked by this
    version) or it cannot be read: the caller falls back to other evidence.
    """
    fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Holder(Path(folder), _read_pid(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
