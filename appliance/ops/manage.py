"""``pacs-appliance delete`` and ``pacs-appliance modify`` (issue 16.2, 16.3).

Same semantics as ``DELETE {DicomWeb.Root}/studies/...`` and ``POST
/studies/{uid}/modify``, and exit codes 0 (done), 1 (no such study, series
or instance, or it failed: message on stderr), 2 (a malformed UID, an
invalid value, a configuration error). The audit trail records the user
"cli".

With the daemon running (the usual case) the command asks it over HTTP on
the loopback: the daemon is the only writer of its index and keeps the quota
totals. It authenticates with a secret the daemon writes at start into its
IndexDirectory (:data:`TOKEN_FILE`, mode 0600: readable by the daemon's user
and root, as the index itself), accepted from the loopback only. With no
daemon running, the command takes the data folders' lock (as ``reindex``
does) and works on the Archive itself.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

from appliance.config import Config

COMMANDS = ("delete", "modify")
TOKEN_FILE = "pacs-appliance.cli-token"
# Who the audit trail names for this command line, on either path.
CLI_USER = "cli"

OK, FAILED, INVALID = 0, 1, 2
# modify's options: (option, DICOM keyword, help)
_FIELDS = (("--patient-name", "PatientName", "new PatientName (DICOM PN: FAMILY^GIVEN)"),
           ("--patient-id", "PatientID", "new PatientID"),
           ("--birth-date", "PatientBirthDate", "new PatientBirthDate (YYYYMMDD)"),
           ("--sex", "PatientSex", "new PatientSex (M, F, O)"),
           ("--accession", "AccessionNumber", "new AccessionNumber"))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``delete`` and ``modify`` to the CLI's sub-parsers."""
    d = sub.add_parser("delete", help="delete a study, a series of it, or an instance of that")
    d.add_argument("study", metavar="STUDY", help="StudyInstanceUID")
    d.add_argument("series", metavar="SERIES", nargs="?", help="SeriesInstanceUID")
    d.add_argument("instance", metavar="INSTANCE", nargs="?", help="SOPInstanceUID")
    m = sub.add_parser("modify", help="fix the patient of a study (new UIDs unless --keep-uids)")
    m.add_argument("study", metavar="STUDY", help="StudyInstanceUID")
    for option, keyword, text in _FIELDS:
        m.add_argument(option, dest=keyword, metavar="VALUE", help=text)
    m.add_argument("--keep-uids", action="store_true",
                   help="keep the Study/Series/SOP Instance UIDs (the new files replace the old)")
    for p in (d, m):
        p.add_argument("--reason", default="", metavar="TEXT",
                       help="why, for the audit trail (e.g. \"DCM 113038\")")
        p.add_argument("--config", metavar="PATH", help="the daemon's config file")


def _fail(command: str, message: str, code: int = FAILED) -> int:
    print(f"pacs-appliance: {command}: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``delete`` or ``modify``; returns the exit code."""
    from appliance.dicomfile.vr import is_valid_uid
    from appliance.store import InvalidChange, check_changes

    uids = [u for u in (args.study, getattr(args, "series", None),
                        getattr(args, "instance", None)) if u is not None]
    for uid in uids:
        if not is_valid_uid(uid):
            return _fail(args.command, f"not a valid UID: {uid[:80]!r}", INVALID)
    if args.command == "modify":
        try:
            changes = check_changes({k: v for _, k, _ in _FIELDS
                                     if (v := getattr(args, k)) is not None})
        except InvalidChange as e:
            return _fail("modify", str(e), INVALID)
    from appliance.ops.runtime import running_daemon

    daemon = running_daemon(config.index_directory)
    try:
        if daemon is not None:
            if args.command == "delete":
                return _delete_online(config, daemon, uids, args.reason)
            return _modify_online(config, daemon, args.study, changes, args)
        if args.command == "delete":
            return _offline(config, "delete", lambda a: _delete(a, uids, args.reason))
        return _offline(config, "modify", lambda a: _modify(a, args.study, changes, args))
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted")


# -- the daemon runs: over HTTP ---------------------------------------------------


def write_token(index_directory: Path) -> str:
    """Make the command line's secret for this run of the daemon (mode 0600,
    created so: never readable by others, not even for a moment). Not fsynced:
    after a crash the next start writes a new one anyway."""
    token = secrets.token_urlsafe(32)
    path = Path(index_directory) / TOKEN_FILE
    temp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, token.encode("ascii"))
    finally:
        os.close(fd)
    os.replace(temp, path)  # whole or absent for a reader
    return token


def remove_token(index_directory: Path) -> None:
    """The daemon stops: its secret goes."""
    (Path(index_directory) / TOKEN_FILE).unlink(missing_ok=True)


def _request(config: Config, daemon: dict, method: str, path: str,
             body: dict | None = None) -> tuple[int, dict | None]:
    """(HTTP status, JSON body or None) of one request to the running daemon;
    OSError when it cannot be asked."""
    import urllib.error
    import urllib.request

    if not daemon.get("http_port"):
        raise OSError("the daemon is still starting; try again in a few seconds")
    try:
        token = (Path(config.index_directory) / TOKEN_FILE).read_text().strip()
    except PermissionError:
        raise OSError(f"cannot read {TOKEN_FILE} in {config.index_directory}: run this as root "
                      "or as the daemon's user") from None
    except FileNotFoundError:
        raise OSError("the running daemon has no command-line secret (an older version?): "
                      "use the HTTP API") from None
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon['http_port']}{path}", method=method,
        data=None if body is None else json.dumps(body).encode("utf-8"),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except urllib.error.URLError as e:
        raise OSError(f"the daemon does not answer on port {daemon['http_port']}: {e.reason}") from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def _answer(command: str, status: int, body: dict | None) -> int:
    message = (body or {}).get("Message", f"HTTP {status}")
    return _fail(command, message, INVALID if status == 400 else FAILED)


def _delete_online(config: Config, daemon: dict, uids: list[str], reason: str) -> int:
    from urllib.parse import quote

    if not config.dicom_web.enable:
        return _fail("delete", "DicomWeb.Enable is false: the running daemon has no DELETE")
    path = config.dicom_web.root.rstrip("/") + "/studies/" + "/".join(
        f"{part}/{uid}" for part, uid in zip(("", "series", "instances"), uids)).lstrip("/")
    try:
        status, body = _request(config, daemon, "DELETE", f"{path}?reason={quote(reason)}")
    except OSError as e:
        return _fail("delete", str(e))
    if status != 204:
        return _answer("delete", status, body)
    print(f"deleted {_level(uids)} {uids[-1]}")
    return OK


def _modify_online(config: Config, daemon: dict, study: str, changes: dict[str, str],
                   args: argparse.Namespace) -> int:
    try:
        status, body = _request(config, daemon, "POST", f"/studies/{study}/modify", {
            "Replace": changes, "Reason": args.reason, "KeepUIDs": args.keep_uids})
    except OSError as e:
        return _fail("modify", str(e))
    if status != 200 or body is None:
        return _answer("modify", status, body)
    print(f"modified study {study}: now {body['StudyInstanceUID']}, "
          f"{body['Instances']} instance(s)")
    return OK


def _level(uids: list[str]) -> str:
    return ("study", "series", "instance")[len(uids) - 1]


# -- no daemon: on the Archive itself -----------------------------------------------


def _offline(config: Config, command: str, work) -> int:
    from appliance.ops.lock import FolderInUse, data_folders_locked
    from appliance.store import Archive

    if not Path(config.index_directory, "pacs-appliance.sqlite").exists():
        return _fail(command, f"no archive in {config.index_directory}")
    try:
        with data_folders_locked(config.storage_directory, config.index_directory,
                                 create_storage=False):
            archive = Archive(config.storage_directory, config.index_directory,
                              overwrite_instances=config.overwrite_instances)
            archive.open()
            try:
                return work(archive)
            finally:
                archive.close()
    except FolderInUse as e:
        return _fail(command, f"{e} (try again)")
    except OSError as e:
        return _fail(command, f"{e.filename or ''}: {e.strerror or e}")


def _delete(archive, uids: list[str], reason: str) -> int:
    gone = archive.delete(*uids, user=CLI_USER, reason=reason)
    if gone is None:
        return _fail("delete", f"no such {_level(uids)}")
    print(f"deleted {_level(uids)} {uids[-1]}: {gone.instances} instance(s)")
    return OK


def _modify(archive, study: str, changes: dict[str, str], args: argparse.Namespace) -> int:
    from appliance.store import ModifyError

    try:
        done = archive.modify_study(study, changes, keep_uids=args.keep_uids, user=CLI_USER,
                                    reason=args.reason)
    except ModifyError as e:
        return _fail("modify", str(e))
    if done is None:
        return _fail("modify", "no such study")
    print(f"modified study {study}: now {done.study_instance_uid}, {done.instances} instance(s)")
    return OK

