"""Small file helpers shared by backups, restore and reindex."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def match_owner(path: Path, like: Path) -> None:
    """Give ``path`` (recursively) the owner of ``like``, when running as root.

    The CLI usually runs as root (sudo) while the daemon runs as its own user: a
    backup or index made by root must stay readable, rotatable and writable by
    the daemon.
    """
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(like)
    except OSError:
        return
    paths = [path]
    if path.is_dir():
        paths += [Path(d) / n for d, dirs, files in os.walk(path) for n in dirs + files]
    for p in paths:
        try:
            os.chown(p, st.st_uid, st.st_gid, follow_symlinks=False)
        except OSError:
            pass
