"""The index's pool of read connections: a burst of reads does not stay open."""

from __future__ import annotations

import contextlib
import os

import apsw

from appliance.store.index import Index
from appliance.store.index.engine import MAX_IDLE_READERS


def _open_on(path) -> int:
    """SQLite connections of this process open on ``path`` (not file descriptors:
    SQLite defers closing those while another connection holds a lock on the file)."""
    target = os.path.realpath(path)
    return sum(1 for c in apsw.connections()
               if c.filename and os.path.realpath(c.filename) == target)


def test_a_burst_of_reads_leaves_a_bounded_pool(tmp_path):
    index = Index(tmp_path, lambda dirs: None)
    index.open()
    try:
        writer_only = _open_on(index.path)
        burst = MAX_IDLE_READERS + 6
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(index._reader()) for _ in range(burst)]
            assert all(list(c.execute("SELECT count(*) FROM sqlite_master")) for c in held)
            assert _open_on(index.path) == writer_only + burst
        # The burst is over: only the pool's cap stays open, and it still serves.
        assert _open_on(index.path) == writer_only + MAX_IDLE_READERS
        assert index.read("SELECT 1") == [(1,)]
        assert _open_on(index.path) == writer_only + MAX_IDLE_READERS
    finally:
        index.close()
    assert _open_on(index.path) == 0
