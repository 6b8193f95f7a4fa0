"""A Linux inotify watch on one folder, read without blocking: the worklist's barrier.

Why not watchdog's Observer (used here before): its threads read the kernel's events and
hand them on asynchronously, so a C-FIND cannot know whether a file closed just before it
has been reported yet. The kernel queues an inotify event inside the system call that
changes the folder (the ``close`` of a written file, a ``rename``, an ``unlink``), so
whatever is in the queue when a C-FIND starts is everything that happened before it:
reading the queue to its end is the barrier that gives read-your-writes. One inotify
instance per watched folder, read by whoever holds the folder's update lock (the
background thread or a C-FIND's thread).

Linux only (the appliance's platform); :class:`Inotify` raises OSError elsewhere or when
the user's inotify limits are reached, and the folder then falls back to checking its
listing (appliance.worklist.source).
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import field
from pathlib import Path

from appliance.lazyclasses import lazy_dataclass

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000

_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
         | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)
_LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
_LISTING = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE  # change the folder itself
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_BUFFER = 256 * 1024


@lazy_dataclass
class Changes:
    """What a read of the queue found."""

    names: set[str] = field(default_factory=set)  # entries of the folder that changed
    listing: bool = False  # an entry was created, deleted or renamed (the folder's mtime moved)
    lost: bool = False  # the folder itself went away (deleted, renamed, unmounted)
    overflow: bool = False  # the kernel dropped events: look at everything

    def __bool__(self) -> bool:
        return bool(self.names or self.listing or self.lost or self.overflow)


class Inotify:
    """An inotify instance watching ``folder`` (not recursively); read with :meth:`read`."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            init1, add_watch = libc.inotify_init1, libc.inotify_add_watch
        except AttributeError:
            raise OSError("inotify is not available on this system") from None
        init1.argtypes, init1.restype = [ctypes.c_int], ctypes.c_int
        add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        add_watch.restype = ctypes.c_int
        fd = init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if add_watch(fd, os.fsencode(folder), _MASK) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {folder}: {os.strerror(err)}")
        self._fd = fd

    def fileno(self) -> int:
        """The descriptor to wait on (readable when events are queued)."""
        return self._fd

    def read(self) -> Changes:
        """Every event queued so far, without blocking."""
        changes = Changes()
        while True:
            try:
                data = os.read(self._fd, _BUFFER)
            except BlockingIOError:
                return changes
            except InterruptedError:
                continue
            pos = 0
            while pos + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size
                if mask & IN_Q_OVERFLOW:
                    changes.overflow = True
                if mask & _LOST:
                    changes.lost = True
                if mask & _LISTING:
                    changes.listing = True
                if length:
                    raw = data[pos:pos + length].split(b"\0", 1)[0]
                    if raw:
                        changes.names.add(os.fsdecode(raw))
                pos += length

    def close(self) -> None:
        """Stop watching (closing the instance removes its watch)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
