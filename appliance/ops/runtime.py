"""The files a running daemon keeps in its index directory, and who is running."""

from __future__ import annotations

from pathlib import Path

import psutil

from appliance.ops.files import read_json

RUNTIME_FILE = "pacs-appliance.runtime.json"   # pid and bound ports, while running
STATUS_FILE = "pacs-appliance.status.json"     # the status snapshot, every STATUS_EVERY s
STATUS_EVERY = 5.0


def running_daemon(index_directory: Path) -> dict | None:
    """The runtime info of the daemon running on this index directory, or None.

    The runtime file alone is not proof (a killed daemon leaves it behind): its pid
    must be alive and be a pacs-appliance process (a reused pid is not).
    """
    info = read_json(Path(index_directory) / RUNTIME_FILE)
    if not info or not isinstance(info.get("pid"), int):
        return None
    try:
        cmdline = " ".join(psutil.Process(info["pid"]).cmdline())
    except (psutil.Error, OSError):
        return None
    return info if "appliance" in cmdline else None
