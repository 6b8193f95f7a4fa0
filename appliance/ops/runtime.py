"""The files a running daemon keeps in its index directory, and who is running."""

from __future__ import annotations

from pathlib import Path


from appliance.ops import lock
from appliance.ops.files import read_json

RUNTIME_FILE = "pacs-appliance.runtime.json"   # pid and bound ports, while running
STATUS_FILE = "pacs-appliance.status.json"     # the status snapshot, every STATUS_EVERY s
STATUS_EVERY = 5.0


def running_daemon(index_directory: Path) -> dict | None:
    """The runtime info of the daemon running on this index directory, or None.

    The folder's lock decides (appliance.ops.lock): held means running, whatever
    the runtime file says, and free means stopped even when a killed daemon left
    its runtime file behind. The info is the runtime file's when it names the
    lock's holder, else just ``{"pid": ...}`` (still starting, or an offline
    command such as ``reindex`` holds the folder).

    Only when the lock cannot be asked (no lock file: a daemon of an older
    version; or not readable by this user) does the runtime file speak: its pid
    must be alive and be a pacs-appliance process (a reused pid is not).
    """
    info = read_json(Path(index_directory) / RUNTIME_FILE)
    try:
        held = lock.holder(Path(index_directory))
    except OSError:
        return _runtime_file_alive(info)
    if held is None:
        return None
    if held.pid is not None and info and info.get("pid") == held.pid:
        return info
    if held.pid is None and info and isinstance(info.get("pid"), int):
        return info  # the lock file does not say (being written): the runtime file does
    return {"pid": held.pid}


def _runtime_file_alive(info: dict | None) -> dict | None:
    if not info or not isinstance(info.get("pid"), int):
        return None
    import psutil  # here, not at start: only the CLI's look at a running daemon needs it

    try:
        cmdline = " ".join(psutil.Process(info["pid"]).cmdline())
    except (psutil.Error, OSError):
        return None
    return info if "appliance" in cmdline else None
