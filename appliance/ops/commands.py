"""``pacs-appliance backup {now,list,verify,restore}``, ``reindex`` and ``status``.

Each command reads the configuration given with ``--config`` (else the embedded
defaults), prints its result on stdout, and on failure one line on stderr; the
exit code says what happened (:class:`Exit`, documented in the README).
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path

from appliance.config import Config
from appliance.ops.adoption_view import adopted_count, adoption_text, import_texts
from appliance.ops.disk import human_bytes
from appliance.ops.files import read_json
from appliance.ops.lock import FolderInUse
from appliance.ops.metrics import outbound_line, queries_summary
from appliance.ops.runtime import STATUS_EVERY, STATUS_FILE, running_daemon

# The implementations (and pydicom behind them) are imported by the commands that
# use them, so that the CLI's other commands start quickly.

COMMANDS = ("backup", "reindex", "status", "import")


class Exit(enum.IntEnum):
    """Exit codes of these commands (0-2 as every other command)."""

    OK = 0
    FAILED = 1        # could not do it (message on stderr)
    CONFIG = 2        # configuration error (from the CLI itself)
    IN_USE = 2        # reindex/restore: a daemon uses the data folders (as a second serve)
    NOT_RUNNING = 3   # status: the daemon is not running (LSB's "program is not running")
    DAMAGED = 4       # verify/restore: the backup is damaged; reindex: unreadable files
    BUSY = 75         # another backup is running: try again later (sysexits' EX_TEMPFAIL)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``backup``, ``reindex`` and ``status`` to the CLI's sub-parsers."""
    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="PATH", help="the daemon's config file")
        return p

    b = sub.add_parser("backup", help="back up the index, list, verify or restore backups")
    cmds = b.add_subparsers(dest="backup_command", metavar="ACTION", required=True)
    with_config(cmds.add_parser("now", help="take a backup now (the daemon may be running)"))
    with_config(cmds.add_parser("list", help="list the backups"))
    verify = with_config(cmds.add_parser(
        "verify", help="restore drill: check a backup and every file it lists (default: the newest)"))
    verify.add_argument("backup", nargs="?", metavar="BACKUP", help="a backup name or folder")
    restore = with_config(cmds.add_parser(
        "restore", help="make a backup the index again (the daemon must be stopped)"))
    restore.add_argument("backup", metavar="BACKUP", help="a backup name or folder")
    with_config(sub.add_parser(
        "reindex", help="rebuild the index from the stored files (the daemon must be stopped)"))
    status = with_config(sub.add_parser("status", help="show the running daemon's status"))
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    imp = with_config(sub.add_parser(
        "import", help="import DICOM files, folders (recursively) and DICOMDIR media "
                       "(the daemon may be running)"))
    imp.add_argument("paths", nargs="+", metavar="PATH", help="a file, a folder or a DICOMDIR")
    imp.add_argument("--user", metavar="NAME",
                     help="HTTP user when the daemon runs with authentication (password: "
                          "PACS_APPLIANCE_PASSWORD, the config, or asked)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")


def _fail(what: str, message: str, code: Exit = Exit.FAILED) -> int:
    print(f"pacs-appliance: {what}: {message}", file=sys.stderr)
    return code


class _WarningsOnly(logging.Handler):
    """Library warnings on stderr, one line each; errors are reported by the
    command itself (once), INFO stays out of an interactive command's way."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            print(f"pacs-appliance: warning: {record.getMessage()}", file=sys.stderr)


def run(args: argparse.Namespace, config: Config) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_WarningsOnly())
    try:
        if args.command == "status":
            return _status(config, as_json=args.json)
        if args.command == "reindex":
            return _reindex(config)
        if args.command == "import":
            return _import(config, args)
        return {"now": _backup_now, "list": _list, "verify": _verify,
                "restore": _restore}[args.backup_command](config, args)
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted")


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# -- backup ----------------------------------------------------------------------


def _backup_now(config: Config, args: argparse.Namespace) -> int:
    from appliance.ops import backup as backups

    try:
        result = backups.backup_now(config.view(backups.BackupSettings), trigger=backups.Trigger.MANUAL)
    except backups.BackupBusy as e:
        return _fail("backup", str(e), Exit.BUSY)
    except backups.BackupError as e:
        return _fail("backup", str(e))
    print(f"backup {result.backup.path}: {backups.summary(result)}")
    return Exit.OK


def _list(config: Config, args: argparse.Namespace) -> int:
    from appliance.ops import backup as backups

    directory = backups.backup_directory(config.view(backups.BackupSettings))
    items = backups.list_backups(directory)
    if not items:
        print(f"no backups in {directory}")
        return Exit.OK
    print(f"{'BACKUP':<30} {'TAKEN':<19} {'INSTANCES':>9} {'INDEX':>9}  TRIGGER")
    for b in items:
        m = b.manifest or {}
        counts = m.get("counts") or {}
        print(f"{b.name:<30} {_when(b.created):<19} {counts.get('instances', '?'):>9} "
              f"{human_bytes(m.get('size')):>9}  {m.get('trigger', '?')}"
              + ("" if b.manifest else "  (manifest unreadable)"))
    print(f"{len(items)} backup(s) in {directory}")
    return Exit.OK


def _verify(config: Config, args: argparse.Namespace) -> int:
    from appliance.ops import backup as backups

    settings = config.view(backups.BackupSettings)
    try:
        info = backups.find_backup(settings, args.backup)
    except backups.BackupDamaged as e:
        return _fail("verify", str(e), Exit.DAMAGED)
    except backups.BackupError as e:
        return _fail("verify", str(e))
    report = backups.verify_backup(settings, info)
    print(_verify_text(report))
    if not report.index_ok:
        return _fail("verify", f"backup {info.name} is damaged: {report.problems[0]}", Exit.DAMAGED)
    if not report.ok:
        return _fail("verify", f"backup {info.name} cannot restore {len(report.missing)} missing and "
                               f"{len(report.damaged)} damaged file(s)", Exit.DAMAGED)
    print(f"verify: backup {info.name} is good")
    return Exit.OK


def _verify_text(report) -> str:
    lines = [f"backup {report.backup.path}"]
    for problem in report.problems:
        lines.append(f"  index: {problem}")
    if report.index_ok:
        c = report.counts
        lines.append(f"  index: OK (integrity_check ok; {c['patients']} patients, {c['studies']} "
                     f"studies, {c['series']} series, {c['instances']} instances)")
        lines.append(f"  files: {report.in_storage + len(report.in_mirror_only)} OK "
                     f"({report.in_storage} in the storage, {len(report.in_mirror_only)} only in the "
                     f"mirror), {len(report.missing)} missing, {len(report.damaged)} damaged")
        for label, paths in (("missing", report.missing), ("damaged", report.damaged)):
            for rel in paths[:10]:
                lines.append(f"    {label}: {rel}")
            if len(paths) > 10:
                lines.append(f"    ... and {len(paths) - 10} more {label}")
    return "\n".join(lines)


def _restore(config: Config, args: argparse.Namespace) -> int:
    from appliance.ops import backup as backups

    settings = config.view(backups.BackupSettings)
    try:
        info = backups.find_backup(settings, args.backup)
        result = backups.restore_backup(settings, info)
    except FolderInUse as e:
        return _fail("restore", str(e), Exit.IN_USE)
    except backups.BackupBusy as e:
        return _fail("restore", str(e), Exit.BUSY)
    except backups.BackupDamaged as e:
        return _fail("restore", str(e), Exit.DAMAGED)
    except backups.BackupError as e:
        return _fail("restore", str(e))
    c = result.counts
    print(f"restored backup {info.name}: {c['patients']} patients, {c['studies']} studies, "
          f"{c['instances']} instances")
    if result.replaced is not None:
        print(f"  the previous index is kept in {result.replaced}")
    print(f"  {result.from_mirror} file(s) copied back from the mirror, {result.dropped} row(s) "
          f"dropped (files deleted since the backup), {result.reindexed} file(s) stored since the "
          "backup indexed again")
    for rel, why in result.unreadable:
        print(f"  unreadable, not indexed: {rel}: {why}")
    return Exit.OK


# -- reindex ---------------------------------------------------------------------


def _reindex(config: Config) -> int:
    from appliance.ops.reindex import reindex

    try:
        report = reindex(config.storage_directory, config.index_directory)
    except FolderInUse as e:
        return _fail("reindex", str(e), Exit.IN_USE)
    except OSError as e:
        return _fail("reindex", f"{e.filename or ''}: {e.strerror or e}")
    c = report.counts
    print(f"reindex: {report.indexed} instances indexed from {config.storage_directory} in "
          f"{report.seconds:.1f} s ({c['patients']} patients, {c['studies']} studies, "
          f"{c['series']} series, {human_bytes(c['bytes'])})")
    if report.replaced is not None:
        print(f"  the previous index is kept in {report.replaced}")
    if report.adoption is not None:
        n = report.adoption["instances"]
        print(f"  Orthanc's archive: {adopted_count(n)} instance(s) adopted again "
              f"({n['referenced']} by reference to Orthanc's folder)"
              + ("" if report.marks_carried else "; the previous index could not be read, so "
                 "instances deleted since their adoption are back"))
    for rel in report.duplicates:
        print(f"  older copy of an instance, not indexed (left on disk): {rel}")
    for rel, why in report.unreadable:
        print(f"  unreadable, not indexed (left on disk): {rel}: {why}")
    if report.unreadable:
        return _fail("reindex", f"{len(report.unreadable)} file(s) could not be read (listed above)",
                     Exit.DAMAGED)
    return Exit.OK


# -- import ----------------------------------------------------------------------


def _import(config: Config, args: argparse.Namespace) -> int:
    from appliance.ops import importer

    try:
        sink = importer.open_sink(config, user=args.user)
    except importer.ImportFailed as e:
        return _fail("import", str(e))
    except FolderInUse as e:
        return _fail("import", str(e), Exit.IN_USE)
    except OSError as e:
        return _fail("import", f"{e.filename or ''}: {e.strerror or e}")
    try:
        summary = importer.run_import(args.paths, sink)
    except importer.ImportFailed as e:
        return _fail("import", str(e))
    finally:
        sink.close()
    print(json.dumps(summary.to_json(), indent=2) if args.json else summary.text())
    if summary.skipped:
        return _fail("import", f"{len(summary.skipped)} file(s) not imported (listed above)",
                     Exit.DAMAGED)
    return Exit.OK


# -- status ----------------------------------------------------------------------


def _status(config: Config, *, as_json: bool) -> int:
    daemon = running_daemon(config.index_directory)
    if daemon is None:
        return _fail("status", f"not running (no live daemon for {config.index_directory})",
                     Exit.NOT_RUNNING)
    snap = read_json(Path(config.index_directory) / STATUS_FILE)
    if snap is None or snap.get("pid") != daemon["pid"]:
        return _fail("status", f"running (pid {daemon['pid']}) but no status yet; try again in a "
                               "few seconds")
    if as_json:
        print(json.dumps(snap, indent=2))
        return Exit.OK
    print(status_text(snap))
    age = time.time() - snap["time"]
    if age > 4 * STATUS_EVERY:
        return _fail("status", f"the status is {age:.0f} s old: the daemon (pid {daemon['pid']}) "
                               "is not responding")
    return Exit.OK


def status_text(s: dict) -> str:
    """The human summary of a status snapshot."""
    c = s.get("counts") or {}
    lines = [
        f"pacs-appliance {s['version']} ({s['name']}): running, pid {s['pid']}, "
        f"up {_ago(s['uptime'])} (since {_when(s['started'])})",
        f"  DICOM: AE title {s['dicom_aet']}, port {s['ports']['dicom']}, "
        f"{s['associations']} association(s) open",
        f"  HTTP: port {s['ports']['http']} ({'all interfaces' if s['remote_access'] else 'localhost only'})"
        + ("" if s.get("http_authentication", True) else ", AUTHENTICATION OFF: anyone reaching it "
           "reads and changes every study"),
        f"  stored: {c.get('patients', '?')} patients, {c.get('studies', '?')} studies, "
        f"{c.get('series', '?')} series, {c.get('instances', '?')} instances, {human_bytes(c.get('bytes'))}",
    ]
    by_source = ", ".join(f"{src} {sum(n for label, n in by.items() if label in ('Success', 'AlreadyStored'))}"
                          for src, by in sorted((s.get("outcomes") or {}).items()))
    lines.append(f"  since start: {s['stored_since_start']} received"
                 + (f" ({by_source})" if by_source else "") + f", {s['failed_since_start']} failed")
    queries = queries_summary(s)
    if queries is not None:
        lines.append(f"  queries since start: {queries}")
    r = s.get("retrieves")
    if r is not None:
        lines.append(f"  retrieved: C-MOVE {r.get('move_instances', 0)} instances "
                     f"({human_bytes(r.get('move_bytes', 0))}), C-GET {r.get('get_instances', 0)} "
                     f"instances ({human_bytes(r.get('get_bytes', 0))}), "
                     f"{r.get('move_failed', 0) + r.get('get_failed', 0)} failed")
    disk = s.get("disk")
    if disk:
        for fs in disk["filesystems"]:
            flag = "" if fs["level"] == "OK" else f"  {fs['level']}"
            lines.append(f"  disk {'+'.join(fs['roles'])}: {fs['percent']:.0f}% used, "
                         f"{human_bytes(fs['free'])} free of {human_bytes(fs['total'])} ({fs['path']}){flag}")
        for m in disk["missing"]:
            lines.append(f"  disk {m['role']}: {m['path']} MISSING (not mounted?)")
        f = disk["forecast"]
        if f["bytes_per_day"] is None:
            lines.append("  growth: nothing received yet")
        else:
            left = f["days_left"]
            lines.append(f"  growth: {human_bytes(f['bytes_per_day'])}/day"
                         + (f", full in {left:.0f} days" if left is not None else ""))
    adoption = adoption_text(s.get("adoption"))
    if adoption:
        lines.append(f"  {adoption}")
    lines += [f"  {text}" for text in import_texts(s.get("imports"))]
    adm = s.get("admission") or {}
    if adm:
        quota = []
        if adm["maximum_storage_mb"]:
            quota.append(f"MaximumStorageSize {adm['maximum_storage_mb']} MB")
        if adm["maximum_patient_count"]:
            quota.append(f"MaximumPatientCount {adm['maximum_patient_count']}")
        if quota:
            lines.append(f"  quota: {', '.join(quota)} ({adm['mode']}); "
                         f"{adm['recycled_patients']} patient(s) recycled since start")
        lines.append("  new objects: " + ("accepted" if adm["accepting"] else f"REFUSED ({adm['refusing']})"))
    b = s.get("backups") or {}
    last, good = b.get("last_attempt"), b.get("last_success")
    if last is None:
        lines.append("  last backup: never")
    else:
        lines.append(f"  last backup: {_when(last['time'])} ({_ago(s['time'] - last['time'])} ago) "
                     f"{'OK' if last['ok'] else 'FAILED'}: {last['message']}")
        if not last["ok"] and good:
            lines.append(f"  last good backup: {_when(good['time'])} ({_ago(s['time'] - good['time'])} ago)")
    if b.get("running_since"):
        lines.append(f"  backup running since {_when(b['running_since'])}")
    lines.append("  next backup: " + (_when(b["next"]) if b.get("next") else "not scheduled"))
    for d in s.get("outbound") or []:
        lines.append(f"  send to {d['destination']}: " + outbound_line(d, s["time"]))
    err = s.get("last_error")
    lines.append("  last error: " + (f"{_when(err['time'])} {err['message']}" if err else "none"))
    return "\n".join(lines)
