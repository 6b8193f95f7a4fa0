"""``pacs-appliance import-orthanc [--dry-run] [--config PATH]``.

Adopts the Orthanc archive in the configured data folders (appliance.ops.adopt)
from the command line, with a progress bar on stderr and a summary on stdout:

- no daemon running: the command takes the data folders' lock and runs the
  pass itself (a daemon started meanwhile waits for nothing: it is refused as
  a second serve would be, and adopts at its own start anyway);
- a daemon running: it signals it (SIGUSR1) to run a pass, and follows that
  pass through the status file the daemon writes every few seconds. Signalling
  needs the daemon's user or root (``sudo``), as stopping it would; no HTTP
  credentials are involved.

``--dry-run`` changes nothing anywhere: it reads Orthanc's index and ours
(read only) and says what would be adopted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from appliance.config import Config
from appliance.ops.adoption_view import RUNNING, adopted_count, adoption_text
from appliance.ops.disk import human_bytes
from appliance.ops.files import match_owner, read_json
from appliance.ops.lock import FolderInUse, data_folders_locked
from appliance.ops.runtime import STATUS_EVERY, STATUS_FILE, running_daemon

COMMAND = "import-orthanc"
EXIT_OK, EXIT_FAILED, EXIT_IN_USE, EXIT_UNREADABLE = 0, 1, 2, 4
_BAR = 30


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``import-orthanc`` to the CLI's sub-parsers."""
    p = sub.add_parser(COMMAND, help="adopt the Orthanc archive in the data folders, in place "
                                     "(the daemon may be running)")
    p.add_argument("--config", metavar="PATH", help="the daemon's config file (Orthanc's orthanc.json)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be adopted")


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``import-orthanc``; returns the exit code."""
    try:
        if args.dry_run:
            return _dry_run(config)
        daemon = running_daemon(config.index_directory)
        if daemon is not None and isinstance(daemon.get("pid"), int) and "http_port" in daemon:
            return _through_daemon(config, daemon["pid"])
        return _offline(config)
    except KeyboardInterrupt:
        return _fail("interrupted")


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"pacs-appliance: {COMMAND}: {message}", file=sys.stderr)
    return code


def _dry_run(config: Config) -> int:
    from appliance.ops.adopt import NotOrthancIndex, plan

    try:
        p = plan(config.storage_directory, config.index_directory)
    except NotOrthancIndex as e:
        return _fail(str(e))
    if p is None:
        return _fail(f"no Orthanc index in {config.index_directory}")
    print(f"Orthanc index {p.orthanc_index}: {p.attachments} instance(s), {p.settled} adopted already")
    print(f"would adopt {p.pending} instance(s) of {p.studies} studies: "
          f"{human_bytes(p.bytes_linked)} linked or referenced in place (no space taken), "
          f"{human_bytes(p.bytes_decompressed)} decompressed (that much more on disk)")
    for uuid in p.missing[:20]:
        print(f"  missing file, would be listed as unreadable: attachment {uuid}")
    if len(p.missing) > 20:
        print(f"  ... and {len(p.missing) - 20} more missing")
    print("dry run: nothing changed")
    return EXIT_OK


class _Bar:
    """A progress bar on a terminal; elsewhere a line every few seconds."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last = 0.0

    def show(self, a: dict, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (0.2 if self._tty else 5.0):
            return
        self._last = now
        total, done = a.get("total") or 0, a.get("done") or 0
        filled = _BAR * done // total if total else _BAR
        eta = a.get("eta_seconds")
        line = (f"[{'#' * filled}{'.' * (_BAR - filled)}] {done}/{total}"
                + (f" {a['rate']:.0f}/s" if a.get("rate") else "")
                + (f" ETA {eta:.0f} s" if eta is not None else ""))
        if self._tty:
            print(f"\r{line}\x1b[K", end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _summary(a: dict) -> int:
    n, b = a["instances"], a["bytes"]
    adopted = adopted_count(n)
    seconds = (a.get("finished") or time.time()) - (a.get("started") or time.time())
    print(f"import-orthanc: {adopted} instance(s) of {a['studies']} studies adopted in {seconds:.1f} s "
          f"from {a.get('orthanc_index')}")
    print(f"  bytes linked: {human_bytes(b['linked'])} ({n['linked']} files, no space taken)")
    print(f"  bytes referenced: {human_bytes(b['referenced'])} ({n['referenced']} files read in "
          "Orthanc's folder, no space taken)")
    print(f"  bytes copied: {human_bytes(b['copied'])} ({n['copied']} files)")
    print(f"  bytes decompressed: {human_bytes(b['decompressed'])} ({n['decompressed']} files)")
    print(f"  already in the archive: {n['duplicate']}")
    print(f"  unreadable files: {n['unreadable']}")
    for u in a.get("unreadable") or []:
        where = f" (Orthanc instance {u['instance']})" if u.get("instance") else ""
        print(f"    attachment {u['uuid']}{where}: {u['reason']}")
    if a["state"] == "failed":
        return _fail(f"adoption failed: {a.get('error')}")
    if a["state"] == "stopped":
        return _fail("the daemon stopped during the adoption; it goes on at its next start")
    return EXIT_UNREADABLE if n["unreadable"] else EXIT_OK


def _offline(config: Config) -> int:
    from appliance.ops.adopt import OrthancAdopter
    from appliance.store import Archive, orthanc_index_file

    if orthanc_index_file(config.index_directory) is None:
        return _fail(f"no Orthanc index in {config.index_directory}")
    bar = _Bar()
    try:
        with data_folders_locked(config.storage_directory, config.index_directory, create_storage=False):
            archive = Archive(config.storage_directory, config.index_directory,
                              overwrite_instances=config.overwrite_instances)
            archive.open()
            try:
                adopter = OrthancAdopter(archive, config.storage_directory, config.index_directory,
                                         on_progress=lambda p: bar.show(p.snapshot()))
                adopter.run_pass()
            finally:
                archive.close()
    except FolderInUse as e:
        return _fail(str(e), EXIT_IN_USE)
    hand_over(Path(config.storage_directory), Path(config.index_directory))
    a = adopter.snapshot()
    bar.show(a, final=True)
    return _summary(a)


def hand_over(storage: Path, index: Path) -> None:
    """Run as root (sudo), give what an offline adoption created to the owner of the
    data folders, so the daemon's own user can go on with it: our index, our
    fan-out folders and incoming folder, and the files of our own (decompressed
    files: one link). Hard links are Orthanc's inodes, and references Orthanc's
    files where they are: both left alone."""
    if os.geteuid() != 0:
        return
    for p in index.glob("pacs-appliance.*"):
        match_owner(p, index)
    for d in [storage / ".incoming", *storage.glob("[0-9a-f][0-9a-f]")]:
        if d.is_dir():
            match_owner_shallow(d, storage)
            for f in d.glob("*.dcm"):
                if f.stat().st_nlink == 1:
                    match_owner(f, storage)


def match_owner_shallow(path: Path, like: Path) -> None:
    """Give the folder ``path`` itself (not its files) the owner of ``like``."""
    st = like.stat()
    try:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    except OSError:
        pass


def _through_daemon(config: Config, pid: int) -> int:
    status = Path(config.index_directory) / STATUS_FILE
    asked = time.time()
    try:
        os.kill(pid, signal.SIGUSR1)
    except PermissionError:
        return _fail(f"the daemon (pid {pid}) runs as another user: run this as that user or root")
    except ProcessLookupError:
        return _fail(f"the daemon (pid {pid}) stopped meanwhile; run the command again")
    print(f"import-orthanc: asked the running daemon (pid {pid}) to adopt; following its progress",
          file=sys.stderr)
    bar = _Bar()
    while True:
        time.sleep(min(1.0, STATUS_EVERY / 5))
        snap = read_json(status) or {}
        a = snap.get("adoption")
        if snap.get("pid") != pid and running_daemon(config.index_directory) is None:
            return _fail("the daemon stopped; the adoption goes on at its next start")
        if not a or (a.get("started") or 0) < asked - 1:
            continue  # the pass asked for has not shown up in the status yet
        if a["state"] == "none":
            return _fail(f"no Orthanc index in {config.index_directory}")
        bar.show(a, final=a["state"] not in RUNNING)
        if a["state"] not in RUNNING:
            text = adoption_text(a)
            if text:
                print(f"  {text}", file=sys.stderr)
            return _summary(a)
