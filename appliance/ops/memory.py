"""Give freed heap memory back to the system now and then (glibc ``malloc_trim``).

The daemon's RSS rose during a soak while its Python heap stayed flat: what grew
were glibc's malloc arenas (tests/bench/README.md, "What grows during a soak").
An association's thread receives an object in 1 MiB blocks, a C-FIND builds
its answers, a backup or a rendered frame allocates tens of megabytes; freed,
that memory stays in the arena that served it, and glibc returns only the free
space at the top of the main heap to the system on its own. ``malloc_trim(0)``
(glibc >= 2.8) also gives back the free pages inside every arena, so RSS
follows what is in use rather than the highest it ever was.

It runs on a worker thread every ``PERIOD`` seconds (a few milliseconds each
time: it walks the arenas' free lists, each arena locked in turn). Elsewhere
than glibc (musl, macOS) there is no such call and the trimmer does nothing.

The cyclic garbage collector is held during the start (``hold_collection``) and
settled once the daemon is ready (``settle_after_start``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

log = logging.getLogger(__name__)

PERIOD = 30.0            # seconds between trims
SETTLE_AFTER = 2.0       # seconds after READY at which the start's garbage is collected
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def hold_collection() -> None:
    """Turn automatic cyclic garbage collection off for the start (``serve``, before
    its imports). Started with it on, the collector ran ~140 times before READY, 40-55 ms
    of CPU (10-14 % of the start) walking the ~60,000 objects the imports and the start
    create for the process's life, to free ~2,800 (issue 11 point 8)."""
    gc.disable()


def settle_after_start() -> None:
    """Shortly after READY (``SETTLE_AFTER``): collect the start's cyclic garbage once
    (~2,400 objects: the argument parser, attrs' class builders...; the collection walks
    all ~90,000 objects, 35-60 ms, so not on the way to READY), freeze what survives
    (the modules' objects, kept for the process's life: later full collections skip
    them), and turn automatic collection back on."""
    gc.collect()
    gc.freeze()
    gc.enable()


def _resident_bytes() -> int | None:
    """This process's resident set size (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _glibc_trim():
    """glibc's ``malloc_trim`` as a callable, or None when the C library has none."""
    import ctypes  # here: only the daemon's trimmer needs it, once

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryTrimmer:
    """Calls ``malloc_trim(0)`` every ``period`` seconds; counts what it gave back."""

    def __init__(self, period: float = PERIOD) -> None:
        self.period = period
        self.trims = 0
        self.released_bytes = 0
        self._trim = None

    def trim(self) -> int:
        """One trim now; the bytes of RSS it gave back (0 when there is nothing to call)."""
        if self._trim is None:
            self._trim = _glibc_trim() or (lambda pad: 0)
        before = _resident_bytes()
        self._trim(0)
        after = _resident_bytes()
        self.trims += 1
        released = max(0, before - after) if before is not None and after is not None else 0
        self.released_bytes += released
        if released >= 1 << 20:
            log.debug("malloc_trim gave back %.1f MB (RSS now %.1f MB)",
                      released / 1e6, (after or 0) / 1e6)
        return released

    async def run(self) -> None:
        """Trim every ``period`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.period)
            try:
                await asyncio.to_thread(self.trim)
            except Exception:  # noqa: BLE001 - memory housekeeping never stops the daemon
                log.exception("malloc_trim failed")
