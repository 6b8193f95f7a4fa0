"""Memory probe for the soak: where the daemon's anonymous memory is (not shipped).

``soak.py --probe`` puts this folder first on the daemon's PYTHONPATH, so Python imports
this file at start-up (``site`` imports any ``sitecustomize``); without
``PACS_MEMPROBE`` in the environment it does nothing. With it, a daemon thread appends one
JSON line to that file every ``PACS_MEMPROBE_EVERY`` seconds (default 15):

- ``anon_kb``: RssAnon of /proc/self/status (what the soak's slope is about);
- glibc's ``mallinfo2()``: ``arena`` (bytes the main and other arenas took from the
  system with brk/mmap), ``uord`` (in use by malloc's callers), ``ford`` (free inside the
  arenas: fragmentation or not yet trimmed), ``hblkhd`` (large blocks mmapped apart);
- SQLite's own count of what it has malloc'd (``sqlite_mem``), its page caches
  (``pagecache_overflow``: pages taken from the heap) and the number of open apsw
  connections (the index's reader pool, the worklist cache...);
- Python: ``sys.getallocatedblocks()`` (live objects' blocks), the gc's object count, the
  threads; with ``PACS_MEMPROBE_TRACE=1`` also tracemalloc's traced total, started after
  ``PACS_MEMPROBE_TRACE_AFTER`` s, and every tenth sample the 15 largest differences
  against the first snapshot (by file and line) in a ``top`` list.

It reads only process-wide counters (no apsw connection's own state: using a connection
from a second thread while the daemon uses it raises apsw's ThreadingViolation there).
"""

import os

if os.environ.get("PACS_MEMPROBE"):
    import ctypes
    import gc
    import json
    import sys
    import threading
    import time

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    def _mallinfo():
        try:
            fn = ctypes.CDLL(None).mallinfo2
        except (OSError, AttributeError):
            return lambda: {}
        fn.restype = _MallInfo2

        def read():
            m = fn()
            return {"arena": m.arena >> 10, "uord": m.uordblks >> 10,
                    "ford": m.fordblks >> 10, "hblkhd": m.hblkhd >> 10, "hblks": m.hblks}
        return read

    def _status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "Threads"):
                    out[key] = int(value.split()[0])
        return {"anon_kb": out.get("RssAnon"), "file_kb": out.get("RssFile"),
                "os_threads": out.get("Threads")}

    def _probe(path, every, trace, trace_after):
        import tracemalloc
        mallinfo = _mallinfo()
        t0 = time.monotonic()
        first = None
        n = 0
        while True:
            time.sleep(every)
            n += 1
            row = {"t": round(time.monotonic() - t0, 1), **_status(), **mallinfo()}
            apsw = sys.modules.get("apsw")
            if apsw is not None:
                row["sqlite_mem"] = apsw.memory_used() >> 10
                row["sqlite_mem_high"] = apsw.memory_high_water() >> 10
                row["pagecache_overflow"] = apsw.status(
                    apsw.SQLITE_STATUS_PAGECACHE_OVERFLOW)[0] >> 10
                row["connections"] = len(apsw.connections())
            row["py_blocks"] = sys.getallocatedblocks()
            row["gc_objects"] = len(gc.get_objects())
            row["py_threads"] = threading.active_count()
            if trace:
                if not tracemalloc.is_tracing() and row["t"] >= trace_after:
                    tracemalloc.start(8)
                if tracemalloc.is_tracing():
                    row["traced_kb"] = tracemalloc.get_traced_memory()[0] >> 10
                    if first is None:
                        first = tracemalloc.take_snapshot()
                    elif n % 10 == 0:
                        diff = tracemalloc.take_snapshot().compare_to(first, "lineno")
                        row["top"] = [str(d) for d in diff[:15]]
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    threading.Thread(target=_probe, name="memprobe", daemon=True, args=(
        os.environ["PACS_MEMPROBE"], float(os.environ.get("PACS_MEMPROBE_EVERY", "15")),
        os.environ.get("PACS_MEMPROBE_TRACE") == "1",
        float(os.environ.get("PACS_MEMPROBE_TRACE_AFTER", "60")))).start()
