"""Durable file writes: what every part that writes a file it must not lose uses.

A file is written under a temporary name in its final folder, fsynced, renamed
over its final name, and the folder fsynced, so a crash leaves either the old
file or the new one, never a part of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync one file's data and metadata."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(target: Path) -> Path:
    # Hidden, and without the target's suffix, so folder watchers (the
    # worklist's *.wl) never see a half-written file.
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def _replacing(target: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A new file under a temp name; on success fsynced and renamed over
    ``target``, on failure removed."""
    temp = _temp_name(target)
    try:
        with open(temp, "xb", opener=lambda path, flags: os.open(path, flags, mode)) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_atomic(target: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``target`` with ``data`` durably (temp, fsync, rename, fsync folder)."""
    with _replacing(target, mode) as f:
        f.write(data)
    fsync_dir(target.parent)


def write_json(path: Path, data: dict) -> None:
    """Write JSON durably over ``path`` (never a half-written file)."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8"))


def copy_durably(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temp name in the same folder, fsynced before
    the rename (the caller fsyncs the folder once for a batch of copies)."""
    with open(src, "rb") as fin, _replacing(dest) as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
