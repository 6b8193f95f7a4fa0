"""Online backups of the index: rotation, the storage mirror, verify and restore.

A backup is a folder ``<Backups.Directory>/backup-<UTC time>/`` holding

- ``index.sqlite``: a copy of the index taken with SQLite's online backup API
  (apsw ``Connection.backup``) a few hundred pages per step with a short pause
  between steps, so C-STORE and DICOMweb keep working meanwhile. The source
  connection holds one read transaction for the whole copy: in WAL mode that
  never blocks the writer, and every step copies the same snapshot (without
  it, SQLite restarts a backup whenever another connection writes, which
  under steady ingest would be never-ending);
- ``manifest.json``: time, counts, size and SHA-256 of ``index.sqlite``;
- ``config.json``: a copy of the configuration file in use.

It is written under a temp name (``.tmp-backup-...``), checked with
``PRAGMA integrity_check``, fsynced and renamed, so a folder named
``backup-...`` is always complete. Then older backups beyond ``Keep`` are
deleted and, when ``Backups.StorageMirror`` is set, every stored file the backup
lists that is not yet in the mirror is copied there: backup + mirror can restore
everything the backup knows. A file of an adopted Orthanc archive that the index
names by reference (appliance.store.adoption) is read in Orthanc's folder and
kept in the mirror under ``orthanc/``, never at a path of its own: Orthanc's
files are never written; a restore that finds only the mirror's copy brings it
back as a file of ours and points the row at it.

The backup files hold stored files' paths and hashes, not the images: ``verify``
(a restore drill) checks the backup itself, then that every instance it lists is
in the storage or the mirror with the right SHA-256; ``restore`` refuses while the
daemon runs, puts the replaced index aside, brings missing files back from the
mirror, drops rows whose files are gone for good and indexes files stored since
the backup, so the store is consistent afterwards.

One backup at a time per backup directory (an flock on ``.lock`` there), whether
started by the daemon's schedule or by ``pacs-appliance backup now``. The last
attempt and the last success are recorded in
``<IndexDirectory>/pacs-appliance.backup.json`` for the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import functools
import json
import logging
import math
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import apsw

from appliance import __version__
from appliance.config import BackupsConfig
from appliance.ops.disk import MB, disk_usage, human_bytes
from appliance.durable import copy_durably, fsync_dir, fsync_file, write_json
from appliance.lazyclasses import lazy_dataclass
from appliance.ops.files import match_owner, read_json
from appliance.ops.lock import data_folders_locked
from appliance.store.offline import (
    DB_NAME, SCHEMA_VERSION, Snapshot, file_sha256, mirror_relpath, reconcile_index,
    replace_index, restored_relpath, stored_path,
)

log = logging.getLogger(__name__)

PREFIX = "backup-"
TMP_PREFIX = ".tmp-"
INDEX_FILE = "index.sqlite"
MANIFEST = "manifest.json"
CONFIG_COPY = "config.json"
LOCK_FILE = ".lock"
STATE_FILE = "pacs-appliance.backup.json"
MANIFEST_FORMAT = 1
_NAME = re.compile(r"backup-\d{8}T\d{6}Z(-\d+)?\Z")
# A first scheduled backup of a new installation (or one long overdue) waits this
# long after start-up, out of the way of the start and of a scanner's first burst.
CATCH_UP_DELAY = 300.0
REPLAN_EVERY = 60.0


class BackupError(Exception):
    """A backup, verify or restore could not be done; ``str(e)`` says why in one line."""


class BackupBusy(BackupError):
    """Another backup is running on the same backup directory."""


class BackupDamaged(BackupError):
    """The backup given is damaged (or not a backup)."""


class Trigger(enum.Enum):
    """Who asked for a backup."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"


@dataclass(frozen=True)
class Pace:
    """How gently the index is copied: pages per step, and the pause between steps."""

    pages_per_step: int = 512
    pause: float = 0.01


@lazy_dataclass(frozen=True)
class BackupInfo:
    """A backup folder and its manifest (None when unreadable)."""

    name: str
    path: Path
    manifest: dict | None

    @property
    def created(self) -> float | None:
        """Unix time of the snapshot."""
        value = (self.manifest or {}).get("created_unix")
        return float(value) if isinstance(value, (int, float)) else None


@lazy_dataclass(frozen=True)
class BackupResult:
    """What :func:`backup_now` did."""

    backup: BackupInfo
    seconds: float
    size: int
    counts: dict[str, int]
    rotated: list[str]
    mirror: dict | None


@dataclass(frozen=True)
class BackupSettings:
    """What backups read of the configuration (the callers pass
    ``config.view(BackupSettings)``); each field is Config's of the same name."""

    source: str | None  # the configuration file, copied into each backup
    storage_directory: Path
    index_directory: Path
    backups: BackupsConfig


# -- the backup directory ------------------------------------------------------


def backup_directory(config: BackupSettings) -> Path:
    """Backups.Directory (its default is <IndexDirectory>/backups)."""
    return config.backups.directory or Path(config.index_directory) / "backups"


def _usable_directory(config: BackupSettings) -> Path:
    """The backup directory, checked; created only when it is the default one."""
    directory = backup_directory(config)
    if not directory.exists():
        if not config.backups.directory_is_default:
            raise BackupError(f"backup directory {directory} does not exist "
                              "(is the backup disk mounted?)")
        try:
            directory.mkdir(parents=True)
            match_owner(directory, directory.parent)
        except OSError as e:
            raise BackupError(f"cannot create backup directory {directory}: {e.strerror}") from None
    if not directory.is_dir():
        raise BackupError(f"backup directory {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BackupError(f"backup directory {directory} is not writable")
    return directory


class _Lock:
    """An exclusive flock on ``<directory>/.lock``; says who holds it when busy."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._file = None

    def __enter__(self) -> "_Lock":
        try:
            f = open(self.path, "a+", encoding="utf-8")
        except OSError as e:
            raise BackupError(f"backup directory {self.path.parent} is not writable: "
                              f"{e.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise BackupBusy("another backup is running" + (f" ({holder})" if holder else "")
                             + "; try again when it has finished") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


# -- listing -------------------------------------------------------------------


def list_backups(directory: Path) -> list[BackupInfo]:
    """The complete backups in ``directory``, oldest first."""
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and _NAME.match(e.name))
    except FileNotFoundError:
        return []
    return [BackupInfo(n, directory / n, read_json(directory / n / MANIFEST)) for n in names]


def find_backup(config: BackupSettings, which: str | None) -> BackupInfo:
    """The backup named ``which`` (a name in the backup directory, or a path to a
    backup folder), or the newest one when ``which`` is None."""
    directory = backup_directory(config)
    if which is None:
        backups = list_backups(directory)
        if not backups:
            raise BackupError(f"no backup in {directory}")
        return backups[-1]
    path = Path(which)
    if not path.is_absolute() and len(path.parts) == 1 and (directory / which).exists():
        path = directory / which
    if not path.is_dir():
        raise BackupError(f"no backup {which!r} (looked in {directory})")
    if not (path / INDEX_FILE).exists() and not (path / MANIFEST).exists():
        raise BackupDamaged(f"{path} is not a backup (no {INDEX_FILE}, no {MANIFEST})")
    return BackupInfo(path.name, path, read_json(path / MANIFEST))


# -- taking a backup -----------------------------------------------------------


def backup_now(config: BackupSettings, *, trigger: Trigger = Trigger.MANUAL,
               cancel: threading.Event | None = None, pace: Pace = Pace()) -> BackupResult:
    """Take one backup now (blocking); see the module docstring.

    Raises BackupBusy when another backup runs, BackupError when this one fails
    (nothing is left behind then, and the failure is recorded for the status).
    """
    started = time.time()
    try:
        directory = _usable_directory(config)
        with _Lock(directory), _background_priority():
            result = _backup_locked(config, directory, trigger, cancel, pace, started)
    except BackupBusy:
        raise
    except BackupError as e:
        _record(config, trigger, started, ok=False, message=str(e))
        log.error("backup (%s) failed: %s", trigger.value, e)
        raise
    mirror_error = result.mirror.get("error") if result.mirror else None
    if mirror_error:
        message = (f"index backed up as {result.backup.name}, but the storage mirror failed: "
                   f"{mirror_error}")
        _record(config, trigger, started, ok=False, message=message, name=result.backup.name)
        log.error("backup (%s): %s", trigger.value, message)
        raise BackupError(message)
    _record(config, trigger, started, ok=True, message=summary(result), name=result.backup.name)
    log.info("backup (%s) %s: %s", trigger.value, result.backup.name, summary(result))
    return result


@contextlib.contextmanager
def _background_priority():
    """Run the calling thread at nice +10 and the lowest best-effort I/O priority
    while it backs up, so the copy, the hashing and the integrity check yield the
    CPU and the disk to ingest (Linux applies both to one thread). Restoring them
    may need privileges: the daemon runs each backup in a thread of its own."""
    import psutil  # here, not at start: the daemon needs it only while it backs up

    tid = threading.get_native_id()
    saved_nice = saved_io = None
    try:
        saved_nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, saved_nice + 10))
    except OSError:
        saved_nice = None
    try:
        thread = psutil.Process(tid)
        saved_io = thread.ionice()
        thread.ionice(psutil.IOPRIO_CLASS_BE, value=7)
    except (psutil.Error, OSError, AttributeError):
        saved_io = None
    try:
        yield
    finally:
        try:
            if saved_nice is not None:
                os.setpriority(os.PRIO_PROCESS, tid, saved_nice)
            if saved_io is not None:
                psutil.Process(tid).ionice(saved_io.ioclass, value=saved_io.value)
        except (psutil.Error, OSError):
            pass


def summary(result: BackupResult) -> str:
    """One line about a finished backup."""
    text = (f"{result.counts['instances']} instances, index {human_bytes(result.size)}, "
            f"{result.seconds:.1f} s")
    if result.mirror and not result.mirror.get("error"):
        text += f", mirror: {result.mirror['copied']} files copied"
    if result.rotated:
        text += f", {len(result.rotated)} old backup(s) removed"
    return text


def _new_name(directory: Path, when: float) -> str:
    base = PREFIX + datetime.fromtimestamp(when, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name, n = base, 1
    while (directory / name).exists() or (directory / (TMP_PREFIX + name)).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _backup_locked(config: BackupSettings, directory: Path, trigger: Trigger,
                   cancel: threading.Event | None, pace: Pace, started: float) -> BackupResult:
    for leftover in directory.glob(TMP_PREFIX + "*"):
        # Only a crashed backup leaves these (we hold the lock).
        shutil.rmtree(leftover, ignore_errors=True)
    source = Path(config.index_directory) / DB_NAME
    if not source.exists():
        raise BackupError(f"no index at {source}: nothing to back up")
    name = _new_name(directory, started)
    tmp = directory / (TMP_PREFIX + name)
    final = directory / name
    t0 = time.monotonic()
    try:
        tmp.mkdir()
        counts, version = _copy_index(source, tmp / INDEX_FILE, cancel, pace)
        _check_integrity(tmp / INDEX_FILE, cancel)
        sha256, size = file_sha256(tmp / INDEX_FILE)
        config_copy = None
        if config.source and Path(config.source).is_file():
            shutil.copyfile(config.source, tmp / CONFIG_COPY)
            config_copy = CONFIG_COPY
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "created": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "created_unix": started,
            "trigger": trigger.value,
            "host": socket.gethostname(),
            "version": __version__,
            "schema_version": version,
            "counts": counts,
            "index_file": INDEX_FILE,
            "size": size,
            "sha256": sha256,
            "config_file": config_copy,
            "storage_directory": str(config.storage_directory),
            "storage_mirror": str(config.backups.storage_mirror) if config.backups.storage_mirror else None,
            "seconds": round(time.monotonic() - t0, 3),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
        match_owner(tmp, directory)
        os.rename(tmp, final)
        fsync_dir(directory)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (apsw.FullError, OSError)) and _is_full(e):
            raise BackupError(f"backup disk full ({directory}: {human_bytes(_free(directory))} "
                              f"free): backup abandoned, nothing kept") from None
        if isinstance(e, apsw.Error):
            raise BackupError(f"index copy failed: {e}") from None
        if isinstance(e, OSError):
            raise BackupError(f"cannot write the backup in {directory}: {e.strerror or e}") from None
        raise
    seconds = time.monotonic() - t0
    rotated = _rotate(directory, config.backups.keep)
    mirror = None
    if config.backups.storage_mirror is not None:
        try:
            mirror = mirror_storage(Path(config.storage_directory), config.backups.storage_mirror,
                                    final / INDEX_FILE, cancel)
        except BackupError as e:
            mirror = {"error": str(e)}
    return BackupResult(BackupInfo(name, final, manifest), seconds, size, counts, rotated, mirror)


def _is_full(e: BaseException) -> bool:
    return isinstance(e, apsw.FullError) or getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def _free(directory: Path) -> int:
    try:
        return disk_usage(directory).free
    except OSError:
        return 0


def _copy_index(source: Path, dest: Path, cancel: threading.Event | None,
                pace: Pace) -> tuple[dict[str, int], int]:
    """Copy the live index to ``dest`` in steps; (counts, schema version) of the copy."""
    # Read-write flags although we only read: a read-only connection would leave
    # the -wal/-shm files it had to create behind when the daemon is not running.
    src = apsw.Connection(str(source))
    src.setbusytimeout(10_000)
    try:
        src.execute("BEGIN")
        # The first read starts the transaction: this snapshot is what every step copies.
        counts = Snapshot(src).counts()
        version = Snapshot(src).schema_version()
        page_size = src.execute("PRAGMA page_size").fetchone()[0]
        pages = src.execute("PRAGMA page_count").fetchone()[0]
        need, free = page_size * pages, _free(dest.parent)
        if free < need * 1.05 + MB:
            raise BackupError(f"not enough space for the backup in {dest.parent.parent}: "
                              f"{human_bytes(free)} free, the index needs {human_bytes(need)}")
        dst = apsw.Connection(str(dest))
        try:
            with dst.backup("main", src, "main") as step:
                while not step.step(pace.pages_per_step):
                    if cancel is not None and cancel.is_set():
                        raise BackupError("cancelled (the daemon is stopping)")
                    time.sleep(pace.pause)
            # The copy carries the WAL flag of its source: a backup is one self-contained file.
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
        src.execute("COMMIT")
    finally:
        src.close()
    return counts, version


def _check_integrity(path: Path, cancel: threading.Event | None) -> None:
    conn = apsw.Connection(str(path))
    try:
        if cancel is not None:
            conn.set_progress_handler(cancel.is_set, 10_000)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        except apsw.InterruptError:
            raise BackupError("cancelled (the daemon is stopping)") from None
    finally:
        conn.close()
    if rows != ["ok"]:
        raise BackupError(f"the copy failed PRAGMA integrity_check: {rows[0]}")


def _rotate(directory: Path, keep: int) -> list[str]:
    """Delete the oldest complete backups beyond ``keep``; their names."""
    backups = list_backups(directory)
    removed = []
    for old in backups[:-keep] if len(backups) > keep else []:
        try:
            shutil.rmtree(old.path)
            removed.append(old.name)
            log.info("backup %s removed (Backups.Keep is %d)", old.name, keep)
        except OSError as e:
            log.warning("old backup %s not removed: %s", old.name, e.strerror)
    return removed


def mirror_storage(storage: Path, mirror: Path, backup_index: Path,
                   cancel: threading.Event | None = None) -> dict:
    """Copy to ``mirror`` every file the backup lists that the mirror lacks.

    Files already there with the right size are not read again (stored files
    never change: a new version of an instance is a new file). Files deleted
    from the storage since the backup are counted as gone.
    """
    if not mirror.is_dir():
        raise BackupError(f"storage mirror {mirror} does not exist (is the disk mounted?)")
    copied = present = gone = 0
    copied_bytes = 0
    touched: set[Path] = set()
    conn = _open_backup(backup_index)
    try:
        for _sop, rel, size, _sha in Snapshot(conn).files():
            source, kept = stored_path(storage, rel), mirror_relpath(rel)
            if source is None or kept is None:
                continue
            # Always under the mirror: a referenced file of Orthanc's goes to
            # orthanc/ there (joining its absolute path would name the original).
            dest = mirror / kept
            try:
                if dest.stat().st_size == size:
                    present += 1
                    continue
            except FileNotFoundError:
                pass
            if cancel is not None and cancel.is_set():
                raise BackupError("cancelled (the daemon is stopping)")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                copy_durably(source, dest)
            except FileNotFoundError:
                gone += 1
                continue
            except OSError as e:
                if _is_full(e):
                    raise BackupError(f"storage mirror {mirror} is full") from None
                raise BackupError(f"cannot copy to the storage mirror {mirror}: "
                                  f"{e.strerror or e}") from None
            copied += 1
            copied_bytes += size
            touched.add(dest.parent)
    finally:
        conn.close()
    for d in touched:
        fsync_dir(d)
    if touched:
        fsync_dir(mirror)
    return {"copied": copied, "copied_bytes": copied_bytes, "present": present, "gone": gone}


# -- the state file (last attempt, last success) ---------------------------------


def state_path(config: BackupSettings) -> Path:
    """Where the last backup attempt and success are recorded."""
    return Path(config.index_directory) / STATE_FILE


def read_state(config: BackupSettings) -> dict:
    """{"last_attempt": {...}, "last_success": {...}} (either may be missing)."""
    return read_json(state_path(config)) or {}


def _record(config: BackupSettings, trigger: Trigger, started: float, *, ok: bool, message: str,
            name: str | None = None) -> None:
    state = read_state(config)
    entry = {"time": started, "finished": time.time(), "ok": ok, "trigger": trigger.value,
             "message": message, "name": name}
    state["last_attempt"] = entry
    if ok:
        state["last_success"] = entry
    try:
        write_json(state_path(config), state)
        match_owner(state_path(config), Path(config.index_directory))
    except OSError as e:
        log.warning("backup state not recorded in %s: %s", state_path(config), e.strerror)


# -- verify and restore ----------------------------------------------------------


def _open_backup(path: Path) -> apsw.Connection:
    # immutable: a backup never changes, so no locks, no -journal, no -wal beside it.
    return apsw.Connection(f"file:{path}?immutable=1",
                           flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)


@lazy_dataclass
class VerifyReport:
    """What :func:`verify_backup` found."""

    backup: BackupInfo
    problems: list[str] = field(default_factory=list)   # about the backup itself
    index_ok: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    in_storage: int = 0
    in_mirror_only: list[str] = field(default_factory=list)    # good copy only in the mirror
    missing: list[str] = field(default_factory=list)           # nowhere
    damaged: list[str] = field(default_factory=list)           # present, wrong SHA-256

    @property
    def ok(self) -> bool:
        """True if the backup can restore everything it lists."""
        return self.index_ok and not self.missing and not self.damaged


def _good_copy(path: Path, size: int, sha256: str) -> bool | None:
    """True: right size and hash; False: present but different; None: absent."""
    try:
        if path.stat().st_size != size:
            return False
        return file_sha256(path)[0] == sha256
    except FileNotFoundError:
        return None


def verify_backup(config: BackupSettings, backup: BackupInfo,
                  progress: Callable[[int], None] | None = None) -> VerifyReport:
    """The restore drill: is ``backup`` intact, and is every instance it lists in the
    storage (or the mirror) with the right SHA-256? Reads every file."""
    report = VerifyReport(backup)
    manifest = backup.manifest
    index_file = backup.path / INDEX_FILE
    if manifest is None:
        report.problems.append(f"{MANIFEST} missing or unreadable")
    if not index_file.is_file():
        report.problems.append(f"{INDEX_FILE} missing")
        return report
    sha256, size = file_sha256(index_file)
    if manifest is not None and (manifest.get("sha256") != sha256 or manifest.get("size") != size):
        report.problems.append(f"{INDEX_FILE} differs from its manifest (SHA-256 or size): damaged")
    try:
        conn = _open_backup(index_file)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if rows != ["ok"]:
                report.problems.append(f"PRAGMA integrity_check: {rows[0]}")
            version = Snapshot(conn).schema_version()
            if version > SCHEMA_VERSION:
                report.problems.append(f"index schema version {version} is newer than this "
                                       f"program's ({SCHEMA_VERSION})")
            report.counts = Snapshot(conn).counts()
            if manifest is not None and manifest.get("counts") not in (None, report.counts):
                report.problems.append("the counts differ from the manifest")
            if report.problems:
                return report
            report.index_ok = True
            _check_files(config, conn, report, progress)
        finally:
            conn.close()
    except apsw.Error as e:
        report.problems.append(f"{INDEX_FILE} unreadable: {e}")
        report.index_ok = False
    return report


def _check_files(config: BackupSettings, conn: apsw.Connection, report: VerifyReport,
                 progress: Callable[[int], None] | None) -> None:
    storage = Path(config.storage_directory)
    mirror = config.backups.storage_mirror
    for n, (_sop, rel, size, sha256) in enumerate(Snapshot(conn).files(), 1):
        source, kept = stored_path(storage, rel), mirror_relpath(rel)
        if source is None or kept is None:
            report.damaged.append(rel)
            continue
        here = _good_copy(source, size, sha256)
        if here:
            report.in_storage += 1
            continue
        there = _good_copy(mirror / kept, size, sha256) if mirror is not None else None
        if there:
            report.in_mirror_only.append(rel)
        elif here is None and there is None:
            report.missing.append(rel)
        else:
            report.damaged.append(rel)  # the copies left have the wrong content
        if progress is not None and n % 1000 == 0:
            progress(n)


@lazy_dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore_backup` did."""

    backup: BackupInfo
    replaced: Path | None       # the previous index, kept aside
    from_mirror: int            # files copied back from the mirror
    dropped: int                # rows whose files are gone (deleted since the backup)
    reindexed: int              # files stored since the backup, indexed again
    unreadable: list[tuple[str, str]]
    counts: dict[str, int]


def restore_backup(config: BackupSettings, backup: BackupInfo) -> RestoreReport:
    """Make ``backup`` the index again; see the module docstring.

    Raises appliance.ops.lock.FolderInUse (a daemon uses the data folders),
    BackupDamaged (nothing changed), BackupBusy, BackupError. Holds the data
    folders' lock meanwhile, so that no daemon starts on the index being replaced.
    """
    directory = backup_directory(config)
    with contextlib.ExitStack() as stack:
        stack.enter_context(data_folders_locked(config.storage_directory, config.index_directory,
                                                create_storage=False))
        if directory.is_dir() and os.access(directory, os.W_OK):
            stack.enter_context(_Lock(directory))  # no backup of this index meanwhile
        return _restore_locked(config, backup)


def _restore_locked(config: BackupSettings, backup: BackupInfo) -> RestoreReport:
    report = verify_backup(config, backup)
    if not report.index_ok:
        raise BackupDamaged(f"backup {backup.name} is damaged: {report.problems[0]}; "
                            "nothing was changed")
    if report.counts.get("instances") and not report.in_storage and not report.in_mirror_only:
        # Restoring would drop every row: far more likely an unmounted disk than a loss.
        raise BackupError(f"none of the {report.counts['instances']} files the backup lists is in "
                          f"{config.storage_directory} or the mirror (not mounted?); nothing was changed")
    storage = Path(config.storage_directory)
    index_dir = Path(config.index_directory)
    index_dir.mkdir(parents=True, exist_ok=True)
    # Files whose only good copy is in the mirror come back first: harmless if we
    # stop here (the current index does not list them, or lists the same file).
    touched = set()
    moved = {}
    for rel in report.in_mirror_only:
        # A referenced file Orthanc no longer has comes back as a file of ours.
        back = restored_relpath(rel)
        dest = storage / back
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_durably(config.backups.storage_mirror / mirror_relpath(rel), dest)
        touched.add(dest.parent)
        if back != rel:
            moved[rel] = back
    for d in touched:
        fsync_dir(d)
    staging = index_dir / f".restore-{os.getpid()}.sqlite"
    try:
        shutil.copyfile(backup.path / INDEX_FILE, staging)
        fsync_file(staging)
        match_owner(staging, index_dir)
        aside = replace_index(index_dir, staging, "restore")
    finally:
        staging.unlink(missing_ok=True)
    dropped, newer = reconcile_index(index_dir, storage, report.missing + report.damaged, moved)
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        if (index_dir / name).exists():
            match_owner(index_dir / name, index_dir)
    log.info("restored backup %s: %d files from the mirror, %d rows dropped, %d newer files "
             "indexed, old index kept in %s", backup.name, len(report.in_mirror_only), dropped,
             newer.indexed, aside)
    return RestoreReport(backup, aside, len(report.in_mirror_only), dropped, newer.indexed,
                         newer.unreadable, newer.counts)


# -- the schedule ----------------------------------------------------------------


def next_backup_time(*, now: float, last: float | None, started: float, interval_hours: float,
                     at: tuple[int, int] | None) -> float | None:
    """When the next scheduled backup is due (unix time), or None without a schedule.

    Without ``at``: ``interval_hours`` after the last backup. With ``at`` (local
    time of day): the first of ``at``, ``at + interval``, ``at + 2 x interval``...
    (restarting at ``at`` every day), skipping a slot that comes less than an hour
    (or a quarter of the interval) after the last backup. A backup that is overdue (none yet, or the last one older than
    the interval: the machine was off at the scheduled time) runs
    CATCH_UP_DELAY after start-up rather than waiting for the next slot.
    """
    if interval_hours <= 0:
        return None
    interval = interval_hours * 3600
    if last is None or now - last >= interval:
        # Overdue since before this start (the machine was off): after the
        # catch-up delay. Due while running: now (it used to be pushed back to
        # start + delay, a late backup after a restart shortly before it).
        overdue_at_start = last is None or last + interval < started
        return max(now, started + min(CATCH_UP_DELAY, interval)) if overdue_at_start else now
    if at is None:
        return last + interval
    earliest = max(now, last + min(interval / 4, 3600))
    # Naive local times: .timestamp() applies the local rules, DST changes included.
    today = datetime.fromtimestamp(now).replace(hour=at[0], minute=at[1], second=0, microsecond=0)
    for day in range(-1, 3):
        anchor = (today + timedelta(days=day)).timestamp()
        day_end = (today + timedelta(days=day + 1)).timestamp()
        slot = anchor + max(0, math.ceil((earliest - anchor) / interval)) * interval
        if slot < day_end:
            return slot
    return last + interval


class BackupScheduler:
    """Runs the scheduled backups in the daemon (one at a time, in a thread)."""

    def __init__(self, config: BackupSettings, *, pace: Pace = Pace()) -> None:
        self._config = config
        self._pace = pace
        self._cancel = threading.Event()
        self.started = time.time()
        self.running_since: float | None = None
        self.next_at: float | None = None

    def _last_success(self) -> float | None:
        success = read_state(self._config).get("last_success") or {}
        if isinstance(success.get("time"), (int, float)):
            return float(success["time"])
        backups = list_backups(backup_directory(self._config))
        return backups[-1].created if backups else None

    def plan(self) -> float | None:
        """Compute (and remember) when the next backup is due."""
        b = self._config.backups
        self.next_at = next_backup_time(now=time.time(), last=self._last_success(),
                                        started=self.started, interval_hours=b.interval_hours,
                                        at=b.at)
        return self.next_at

    async def run(self) -> None:
        """Back up on schedule until cancelled; a cancelled backup stops at its next step."""
        while True:
            due = await asyncio.to_thread(self.plan)
            if due is None:
                return
            wait = due - time.time()
            if wait > 0:
                # Planned again every minute: a `backup now` meanwhile moves the next one.
                await asyncio.sleep(min(wait, REPLAN_EVERY))
                continue
            self.running_since = time.time()
            # A thread of its own (not the shared pool): its lowered priority dies with it.
            pool = ThreadPoolExecutor(1, thread_name_prefix="backup")
            try:
                await asyncio.get_running_loop().run_in_executor(
                    pool, functools.partial(backup_now, self._config, trigger=Trigger.SCHEDULED,
                                            cancel=self._cancel, pace=self._pace))
            except asyncio.CancelledError:
                self._cancel.set()
                raise
            except BackupBusy as e:
                log.info("scheduled backup skipped: %s", e)
            except BackupError:
                pass  # logged and recorded by backup_now
            except Exception:  # noqa: BLE001 - the schedule goes on
                log.exception("scheduled backup failed")
            finally:
                pool.shutdown(wait=False)
                self.running_since = None
            # A failed backup is retried after a while rather than at once.
            if read_state(self._config).get("last_attempt", {}).get("ok") is False:
                retry = min(3600.0, self._config.backups.interval_hours * 3600 / 4)
                # The retry is the next backup: the status must not show the missed
                # slot, now in the past, while it waits.
                self.next_at = time.time() + retry
                await asyncio.sleep(retry)

    def snapshot(self) -> dict:
        """What the status shows about backups."""
        state = read_state(self._config)
        return {"directory": str(backup_directory(self._config)),
                "running_since": self.running_since, "next": self.next_at,
                "last_attempt": state.get("last_attempt"),
                "last_success": state.get("last_success")}
