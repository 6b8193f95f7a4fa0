"""``pacs-appliance import PATH...``: files, folders (recursively) and DICOMDIR media
into the archive, through the one ingest path (``Archive.store_instance``).

Two ways in, chosen by who holds the data folders (appliance.ops.lock):

- the daemon runs: each file is sent to its Orthanc-compatible ``POST /instances``
  over the loopback (appliance.web.instances), several at a time so that their
  index commits are shared. The CLI reads the files itself: the daemon's unit
  hides /home, /root and /tmp from it (ProtectHome, PrivateTmp), and a USB
  stick mounted for a user may not be readable by the daemon's user anyway.
- the daemon is stopped: the command takes the folders' lock (so a daemon
  started meanwhile waits for it to finish rather than share the index) and
  stores each file with ``Archive.ingest_file``, with the same admission
  (free space, quotas) as the daemon.

Either way the object meets the same checks, the OverwriteInstances rule and the
quotas as one received by C-STORE. A file that is not DICOM Part-10 (no ``DICM``
at byte 128, PS3.10 7.1) is skipped without being sent; what the archive refuses
is skipped with its reason; a duplicate is counted as such.

A DICOMDIR (PS3.10 8, PS3.3 F) names the files of its media set: given a DICOMDIR
(or a folder holding one), every file it references is imported; a referenced
file that is missing is reported. File IDs are matched case-insensitively, as
CD-ROM file systems (ISO 9660) may show them in either case.
"""

from __future__ import annotations

import base64
import getpass
import http.client
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import Config
from appliance.ops.disk import human_bytes

# Files in flight at once: enough for the index writer to group commits and for
# reading, sending and fsyncing to overlap on two cores; more only queues.
WORKERS = 4
DICOMDIR = "DICOMDIR"
_PREAMBLE = 128
_HASHED = "pbkdf2_sha256$"  # appliance.passwords' prefix: not a password we can send
# Progress redrawn at most this often (seconds).
_PROGRESS_EVERY = 0.2


class ImportFailed(Exception):
    """The import cannot start or go on (message for the user)."""


# -- what to import ---------------------------------------------------------------


@dataclass
class Found:
    """The files named by the command line, and what could not be used."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    dicomdirs: int = 0


def collect(paths: Iterable[str | Path]) -> Found:
    """Every file to import under ``paths`` (files, folders walked recursively,
    DICOMDIRs read), each once, in a stable order."""
    found = Found()
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.files.append(path)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for sub in _walk(path):
                if sub.name.upper() == DICOMDIR:
                    _read_dicomdir(sub, found, add)
                else:
                    add(sub)
        elif path.is_file():
            if path.name.upper() == DICOMDIR:
                _read_dicomdir(path, found, add)
            else:
                add(path)
        else:
            found.problems.append((str(path), "no such file or folder"))
    return found


def _walk(folder: Path) -> Iterator[Path]:
    """Regular files under ``folder``, sorted, symlinked folders not followed (a
    loop on a stick must not make the import endless)."""
    for top, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(top) / name
            if path.is_file():
                yield path


def _read_dicomdir(path: Path, found: Found, add: Callable[[Path], None]) -> None:
    """Add the files a DICOMDIR references (PS3.3 F.3.2.2 Referenced File ID)."""
    import pydicom  # only for media: keeps the command's start light

    try:
        ds = pydicom.dcmread(path, force=True)
        records = ds.get("DirectoryRecordSequence") or []
    except Exception as e:  # noqa: BLE001 - a damaged DICOMDIR is reported, the walk goes on
        found.problems.append((str(path), f"unreadable DICOMDIR: {e}"))
        return
    found.dicomdirs += 1
    root = path.parent
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue  # PATIENT/STUDY/SERIES records reference no file
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        target = _resolve(root, [str(p).strip() for p in parts])
        if target is None:
            found.problems.append((str(root.joinpath(*parts)), "listed in the DICOMDIR but missing"))
        else:
            add(target)


def _resolve(root: Path, parts: list[str]) -> Path | None:
    """``root/parts...`` matching each component without regard to case."""
    current = root
    for part in parts:
        exact = current / part
        if exact.exists():
            current = exact
            continue
        try:
            match = next((c for c in current.iterdir() if c.name.upper() == part.upper()), None)
        except OSError:
            return None
        if match is None:
            return None
        current = match
    return current if current.is_file() else None


def is_part10(path: Path) -> bool:
    """True when the file starts like a DICOM Part-10 file (PS3.10 7.1); OSError
    when it cannot be read."""
    with open(path, "rb") as f:
        head = f.read(_PREAMBLE + 4)
    return head[_PREAMBLE:] == b"DICM"


# -- where to: the running daemon, or the archive directly -------------------------


@dataclass(frozen=True)
class Stored:
    """What became of one file: a StoreResult label and the reason when refused."""

    label: str
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.label == "Success"

    @property
    def duplicate(self) -> bool:
        return self.label == "AlreadyStored"


class DaemonSink:
    """Sends files to the running daemon's ``POST /instances``; one keep-alive
    connection per worker thread."""

    def __init__(self, host: str, port: int, authorization: str | None) -> None:
        self.host, self.port = host, port
        self._headers = {"Content-Type": "application/dicom"}
        if authorization:
            self._headers["Authorization"] = authorization
        self._local = threading.local()
        self.where = f"the running daemon (HTTP port {port})"

    def begin(self, total: int) -> None:
        """Name this run to the daemon (``X-Pacs-Import``), which then shows its
        progress in ``status`` and on the System page."""
        self._headers["X-Pacs-Import"] = f"{secrets.token_hex(8)} {total}"

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=600,
                                              blocksize=1 << 20)
            self._local.conn = conn
        return conn

    def store(self, path: Path, size: int) -> Stored:
        """Send one file; ImportFailed when the daemon cannot be reached or refuses us."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                with open(path, "rb") as f:
                    conn.request("POST", "/instances", body=f,
                                 headers={**self._headers, "Content-Length": str(size)})
                    response = conn.getresponse()
                    payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException) as e:
                # A keep-alive connection the server closed meanwhile: once more on a new one.
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise ImportFailed(f"the daemon on port {self.port} stopped answering: {e}") from e
        try:
            body = json.loads(payload)
        except ValueError:
            body = {}
        if response.status == 401:
            raise ImportFailed("the daemon refused the credentials (401): give --user and "
                               "PACS_APPLIANCE_PASSWORD")
        if response.status == 403:
            raise ImportFailed(f"the daemon refused the import (403): {body.get('Message', '')}")
        if response.status == 404:
            raise ImportFailed("the daemon has no POST /instances: is it an older version?")
        if response.status == 200:
            return Stored(body.get("Status", "Success"))
        return Stored(body.get("Status", f"HTTP {response.status}"),
                      body.get("Message", payload[:200].decode("utf-8", "replace")))

    def close(self) -> None:
        """Nothing to finish (connections close with their threads)."""


class _NoProgressShown:
    def begin(self, total: int) -> None:
        """The daemon is not running: this command's own progress bar is all there is."""


class ArchiveSink(_NoProgressShown):
    """Stores files with ``Archive.ingest_file``, the data folders locked."""

    def __init__(self, config: Config) -> None:
        from appliance.ops.lock import data_folders_locked
        from appliance.ops.space import install_admission
        from appliance.store import Archive

        self._locked = data_folders_locked(config.storage_directory, config.index_directory)
        self._locked.__enter__()  # FolderInUse: a daemon started meanwhile
        try:
            self.archive = Archive(config.storage_directory, config.index_directory,
                                   overwrite_instances=config.overwrite_instances)
            self.archive.open()
            _, self._disk = install_admission(config, self.archive)
            self._disk.measure()
            self._measured = time.monotonic()
            self._measuring = threading.Lock()  # one measurement at a time, as in the daemon
            self._interval = config.disk_monitor.interval_seconds
        except BaseException:
            self._locked.__exit__(None, None, None)
            raise
        self.where = f"the archive in {config.storage_directory} (daemon stopped)"

    def store(self, path: Path, size: int) -> Stored:
        """Store one file (any worker thread)."""
        from appliance.store import Origin

        with self._measuring:
            if time.monotonic() - self._measured > self._interval:
                self._measured = time.monotonic()
                self._disk.measure()  # free space for MinimumFreeMB, as the daemon's monitor
        outcome = self.archive.ingest_file(path, Origin("import"))
        return Stored(outcome.result.label, outcome.reason)

    def close(self) -> None:
        """Finish the index writes, close the archive and drop the lock."""
        try:
            self.archive.close()
        finally:
            self._locked.__exit__(None, None, None)


def authorization(config: Config, user: str | None) -> str | None:
    """The Basic credentials for the daemon's HTTP port (None: authentication off).

    The password comes from PACS_APPLIANCE_PASSWORD, else from the config when it
    is stored there in plain text (whoever reads the config may import), else
    from the terminal.
    """
    if not config.authentication_enabled:
        return None
    users = dict(config.registered_users)
    name = user or os.environ.get("PACS_APPLIANCE_USER") or next(iter(users), None)
    if name is None:
        raise ImportFailed("AuthenticationEnabled is true but RegisteredUsers is empty")
    password = os.environ.get("PACS_APPLIANCE_PASSWORD")
    if password is None:
        stored = users.get(name)
        if stored is not None and not stored.startswith(_HASHED):
            password = stored
        elif sys.stdin.isatty():
            password = getpass.getpass(f"HTTP password of {name}: ")
        else:
            why = "is stored hashed" if stored is not None else "is not in the config"
            raise ImportFailed(f"the password of {name} {why}: set PACS_APPLIANCE_PASSWORD")
    token = base64.b64encode(f"{name}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _http_host(config: Config) -> str:
    """An address the daemon's HTTP port listens on, loopback when it does."""
    for address in config.http_bind_addresses or ():
        if address not in ("0.0.0.0", "::", ""):
            return address
    return "127.0.0.1"


# -- the run --------------------------------------------------------------------------


@dataclass
class Summary:
    """What an import did."""

    where: str = ""
    files: int = 0
    stored: int = 0
    duplicates: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)
    dicomdirs: int = 0

    def to_json(self) -> dict:
        """The summary as JSON-able data (``import --json``)."""
        return {"where": self.where, "files": self.files, "stored": self.stored,
                "duplicates": self.duplicates, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "dicomdirs": self.dicomdirs,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}

    def text(self, limit: int = 20) -> str:
        """The human summary; at most ``limit`` skipped files per reason are listed."""
        rate = self.files / self.seconds if self.seconds > 0 else 0.0
        lines = [f"import: {self.files} file(s), {human_bytes(self.bytes)} in {self.seconds:.1f} s "
                 f"({rate:.0f} files/s) into {self.where}",
                 f"  {self.stored} instance(s) stored, {self.duplicates} duplicate(s) "
                 f"(already stored), {len(self.skipped)} skipped"
                 + (f"; {self.dicomdirs} DICOMDIR(s) read" if self.dicomdirs else "")]
        by_reason: dict[str, list[str]] = {}
        for path, reason in self.skipped:
            by_reason.setdefault(reason, []).append(path)
        for reason, paths in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  skipped ({len(paths)}): {reason}")
            lines.extend(f"    {p}" for p in paths[:limit])
            if len(paths) > limit:
                lines.append(f"    ... and {len(paths) - limit} more")
        return "\n".join(lines)


class Progress:
    """A one-line progress bar on a terminal (nothing otherwise)."""

    def __init__(self, total: int, stream=None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, size: int, *, final: bool = False) -> None:
        """Redraw (at most every _PROGRESS_EVERY s, and at the end)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._drawn < _PROGRESS_EVERY:
            return
        self._drawn = now
        width = 30
        filled = width * done // self.total if self.total else width
        rate = done / (now - self._started) if now > self._started else 0.0
        left = (self.total - done) / rate if rate else 0.0
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} files, "
                          f"{human_bytes(size)}, {rate:.0f}/s, {left:.0f} s left ")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def run_import(paths: list[str], sink, *, workers: int = WORKERS,
               progress: Progress | None = None, found: Found | None = None) -> Summary:
    """Import every file under ``paths`` into ``sink``; the summary of what happened.

    ImportFailed from the sink (the daemon went away) stops the import: what was
    stored stays stored.
    """
    started = time.monotonic()
    found = found or collect(paths)
    summary = Summary(where=sink.where, files=len(found.files), dicomdirs=found.dicomdirs,
                      skipped=list(found.problems))
    progress = progress or Progress(len(found.files))
    sink.begin(len(found.files))
    lock = threading.Lock()
    done = 0
    labels: Counter[str] = Counter()

    def one(path: Path) -> None:
        nonlocal done
        try:
            size = path.stat().st_size
            result = sink.store(path, size) if is_part10(path) else \
                Stored("NotDicom", "not a DICOM Part-10 file (no DICM prefix at byte 128)")
        except OSError as e:
            size, result = 0, Stored("Unreadable", f"cannot read: {e.strerror}")
        with lock:
            done += 1
            summary.bytes += size
            labels[result.label] += 1
            if result.stored:
                summary.stored += 1
            elif result.duplicate:
                summary.duplicates += 1
            else:
                summary.skipped.append((str(path), result.reason or result.label))
            progress.update(done, summary.bytes)

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="import") as pool:
        futures = [pool.submit(one, path) for path in found.files]
        try:
            for future in futures:
                future.result()  # raises the first ImportFailed
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    progress.update(done, summary.bytes, final=True)
    summary.seconds = time.monotonic() - started
    return summary


def open_sink(config: Config, *, user: str | None = None, wait: float = 30.0):
    """The running daemon's ``POST /instances``, else the archive itself (locked).

    A daemon that is starting (locked, no HTTP port published yet) is waited for.
    """
    from appliance.ops.runtime import running_daemon

    deadline = time.monotonic() + wait
    while True:
        daemon = running_daemon(config.index_directory)
        if daemon is None:
            from appliance.ops.lock import FolderInUse

            try:
                return ArchiveSink(config)
            except FolderInUse:
                pass  # a daemon started just now: ask again
        elif daemon.get("http_port"):
            return DaemonSink(_http_host(config), int(daemon["http_port"]),
                              authorization(config, user))
        if time.monotonic() > deadline:
            raise ImportFailed(f"a pacs-appliance (pid {daemon and daemon.get('pid')}) holds "
                               f"{config.index_directory} but publishes no HTTP port")
        time.sleep(0.2)
