"""The index writer's group commit: stores on their way share one commit."""

from __future__ import annotations

import threading
import time

from appliance.store.index import engine as index_module
from appliance.store.index import Index


def _write_two(index: Index, gap: float) -> None:
    """Two writes from two threads, the second ``gap`` seconds after the first."""
    def write():
        index.run_write(lambda conn: conn.execute("SELECT 1").fetchall())
    first = threading.Thread(target=write)
    first.start()
    time.sleep(gap)
    write()
    first.join()


def test_a_store_on_its_way_joins_the_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "_GATHER", 1.0)  # no flakes on a busy machine
    index = Index(tmp_path, lambda dirs: None, coming=lambda: 2)
    index.open()
    try:
        before = index.commits
        _write_two(index, gap=0.001)
        assert index.commits - before == 1 and index.jobs == 2
    finally:
        index.close()


def test_nobody_on_the_way_nobody_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "_GATHER", 1.0)  # a wait would show
    index = Index(tmp_path, lambda dirs: None, coming=lambda: 1)
    index.open()
    try:
        before = index.commits
        started = time.monotonic()
        index.run_write(lambda conn: None)
        assert time.monotonic() - started < 0.5
        _write_two(index, gap=0.05)
        assert index.commits - before == 3
        assert time.monotonic() - started < 0.9
    finally:
        index.close()
