"""Small durable-file helpers shared by backups, restore and reindex."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from appliance.store.blobs import fsync_dir

_CHUNK = 1 << 20


def fsync_file(path: Path) -> None:
    """fsync one file's data and metadata."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: dict) -> None:
    """Write JSON to a temp name, fsync, rename over ``path`` (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def copy_durably(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temp name in the same folder, fsynced before
    the rename (the caller fsyncs the folder once for a batch of copies)."""
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
