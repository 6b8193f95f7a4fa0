"""Disk use over the last 30 days: one sample an hour, for the web UI's plot.

Nothing else records past disk use (the forecast is worked out from the index's
receive times), so the daemon keeps one small JSON file next to its status file:
``<IndexDirectory>/pacs-appliance.disk-history.json``, ``{"samples": [...]}``,
oldest first, at most ``KEEP_DAYS`` days. A sample is taken at start when the last
one is older than ``EVERY`` seconds, then every ``EVERY`` seconds; each write
replaces the file atomically (``appliance.durable.write_json``), so a crash leaves
the previous version, never half a file. A file that cannot be read is started
afresh (logged once at WARNING): losing the plot's past is not worth refusing to run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.durable import write_json
from appliance.ops.disk import DiskState

log = logging.getLogger(__name__)

HISTORY_FILE = "pacs-appliance.disk-history.json"
EVERY = 3600.0
KEEP_DAYS = 30


def sample_of(state: DiskState, now: float) -> dict:
    """One sample: each filesystem's used and total bytes, and its roles."""
    return {"time": now,
            "filesystems": [{"path": str(fs.path), "roles": [r.value for r in fs.roles],
                             "used": fs.used, "total": fs.total}
                            for fs in state.filesystems]}


class DiskHistory:
    """The samples, in memory and in the file (see the module docstring)."""

    def __init__(self, index_directory: Path, state: Callable[[], DiskState | None]) -> None:
        """``state``: the disk monitor's latest measurement (None before the first)."""
        self.path = Path(index_directory) / HISTORY_FILE
        self._state = state
        self._lock = threading.Lock()
        self._samples: list[dict] = self._load()

    def _load(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
            samples = data["samples"]
            if not isinstance(samples, list):
                raise ValueError("samples is not a list")
            return [s for s in samples if isinstance(s, dict) and isinstance(s.get("time"), (int, float))]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: unreadable (%s): the disk history starts afresh", self.path, e)
            return []

    def samples(self) -> list[dict]:
        """The samples kept, oldest first (a copy)."""
        with self._lock:
            return list(self._samples)

    def record(self, now: float | None = None) -> bool:
        """Take a sample if the last one is ``EVERY`` seconds old or more (blocking:
        run in a thread); True if one was taken."""
        now = time.time() if now is None else now
        state = self._state()
        if state is None:
            return False
        with self._lock:
            if self._samples and now - self._samples[-1]["time"] < EVERY:
                return False
            cutoff = now - KEEP_DAYS * 86400
            self._samples = [s for s in self._samples if s["time"] >= cutoff]
            self._samples.append(sample_of(state, now))
            write_json(self.path, {"samples": self._samples})
        return True

    async def run(self) -> None:
        """Record now if due, then check every few minutes until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.record)
            except OSError as e:
                log.warning("%s: disk history not written: %s", self.path, e)
            await asyncio.sleep(min(EVERY, 300.0))
