"""The running daemon's status: one snapshot for ``/metrics``, the status page and
``pacs-appliance status``.

The daemon writes the snapshot as JSON next to its runtime file
(``<IndexDirectory>/pacs-appliance.status.json``) every few seconds; the CLI reads
that file, so ``status`` needs neither HTTP credentials nor a free port, and works
for any user who may read the index directory. A file older than a few periods
while the pid is alive means the daemon's event loop is stuck, which ``status``
reports as such.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from appliance import __version__
from appliance.ops.backup import BackupScheduler
from appliance.ops.disk import DiskMonitor, DiskState
from appliance.durable import write_json
from appliance.ops.quota import StoreAdmission
from appliance.ops.runtime import STATUS_EVERY, STATUS_FILE
from appliance.store.archive import Archive

log = logging.getLogger(__name__)

# Counting rows (Index.counts) is a scan of the instances table; it is redone at
# most this often, and only when something was stored or deleted meanwhile.
COUNTS_MIN_EVERY = 5.0


class LastError(logging.Handler):
    """Remembers the last ERROR (or worse) log record, for the status."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: dict | None = None
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record's time, level, logger and message."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format must not break logging
            message = str(record.msg)
        # logging.Handler.handle holds self.lock around emit.
        self.count += 1
        self.last = {"time": record.created, "level": record.levelname,
                     "logger": record.name, "message": message[:500]}


class StatusBoard:
    """Collects the status of every part; see the module docstring."""

    def __init__(self, *, name: str, dicom_aet: str, remote_access: bool, index_directory: Path,
                 archive: Archive, admission: StoreAdmission,
                 disk: DiskMonitor, backups: BackupScheduler, associations: Callable[[], int], last_error: LastError,
                 worklist_size: Callable[[], int] | None = None,
                 queries: Callable[[], list[dict]] | None = None,
                 outbound: Callable[[], list[dict]] | None = None,
                 retrieves: Callable[[], dict[str, int]] | None = None,

                 adoption: Callable[[], dict] | None = None) -> None:
        self._name = name
        self._dicom_aet = dicom_aet
        self._remote_access = remote_access
        self._archive = archive
        self._admission = admission
        self._disk = disk
        self._backups = backups
        self._associations = associations
        self._last_error = last_error
        self._worklist_size = worklist_size
        # () -> whether HTTP authentication is on now (SIGHUP may change it); set by the
        # daemon. Off is shown loudly by the status page, the UI and ``status``.
        self.http_authentication: Callable[[], bool] | None = None
        # () -> the ``pacs-appliance import`` runs feeding the daemon (POST /instances);
        # set by the daemon once the web app exists.
        self.imports: Callable[[], list[dict]] | None = None
        self._queries = queries
        self._outbound = outbound  # the send queue per destination (appliance.outbound)
        self._retrieves = retrieves  # C-MOVE/C-GET totals (appliance.dicom.retrieve)
        self._adoption = adoption
        self.started = time.time()
        self.ports = {"dicom": 0, "http": 0}
        self.path = Path(index_directory) / STATUS_FILE
        self.counts: dict[str, int] = {}
        self._counted_at = 0.0
        self._counted_after: tuple[int, int] | None = None
        self._count_cost = 0.0

    def refresh_counts(self, force: bool = False) -> None:
        """Re-count the index when something changed (blocking: run in a thread).

        The pause between two counts grows with their cost (20x), so a huge
        index is not scanned back to back while images arrive.
        """
        now = time.monotonic()
        marker = (self._archive.stored_count + self._archive.failed_count,
                  self._admission.recycled_patients, self._archive.adopted_count)
        if not force and (marker == self._counted_after or
                          now - self._counted_at < max(COUNTS_MIN_EVERY, 20 * self._count_cost)):
            return
        t0 = time.monotonic()
        counts = self._archive.counts()
        self._count_cost = time.monotonic() - t0
        self.counts, self._counted_at, self._counted_after = counts, now, marker
        self._admission.totals_changed(counts)

    def snapshot(self) -> dict:
        """Everything ``status``, ``/metrics`` and the status page show (JSON-able)."""
        now = time.time()
        outcomes: dict[str, dict[str, int]] = {}
        for (source, result), n in self._archive.outcome_counts().items():
            outcomes.setdefault(source, {})[result.label] = n
        disk = self._disk.state
        snap = {
            "version": __version__,
            "pid": os.getpid(),
            "time": now,
            "started": self.started,
            "uptime": now - self.started,
            "name": self._name,
            "dicom_aet": self._dicom_aet,
            "ports": dict(self.ports),
            "remote_access": self._remote_access,
            "counts": dict(self.counts),
            "stored_since_start": self._archive.stored_count,
            "failed_since_start": self._archive.failed_count,
            "outcomes": outcomes,
            "associations": self._associations(),
            "admission": self._admission.snapshot(),
            "disk": _disk_json(disk),
            "backups": self._backups.snapshot(),
            "last_error": self._last_error.last,
            "errors_since_start": self._last_error.count,
        }
        if self.http_authentication is not None:
            snap["http_authentication"] = self.http_authentication()
        if self._worklist_size is not None:
            try:
                snap["worklist_items"] = self._worklist_size()
            except Exception:  # noqa: BLE001 - a status must not fail on one part
                pass
        if self._queries is not None:
            snap["queries"] = self._queries()  # Q/R C-FIND by model, level, outcome
        if self._outbound is not None:
            try:
                snap["outbound"] = self._outbound()
            except Exception:  # noqa: BLE001 - a status must not fail on one part
                pass
        if self._retrieves is not None:
            snap["retrieves"] = self._retrieves()
        if self._adoption is not None:
            snap["adoption"] = self._adoption()  # an Orthanc archive adopted in place
        if self.imports is not None:
            snap["imports"] = self.imports()
        return snap

    def write(self) -> None:
        """Write the snapshot file (blocking)."""
        write_json(self.path, self.snapshot())

    async def run(self) -> None:
        """Refresh and write the status every few seconds until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.refresh_counts)
                snap = self.snapshot()
                await asyncio.to_thread(write_json, self.path, snap)
            except Exception:  # noqa: BLE001 - keep reporting
                log.exception("status not written")
            await asyncio.sleep(STATUS_EVERY)

    def remove(self) -> None:
        """Remove the status file (the daemon stops)."""
        self.path.unlink(missing_ok=True)


def _disk_json(state: DiskState | None) -> dict | None:
    if state is None:
        return None
    f = state.forecast
    return {
        "measured_at": state.measured_at,
        "accepting": state.accepting,
        "store_free": state.store_free,
        "minimum_free": state.minimum_free,
        "filesystems": [
            {"path": str(fs.path), "roles": [r.value for r in fs.roles], "total": fs.total,
             "used": fs.used, "free": fs.free, "percent": fs.percent, "level": fs.level.name}
            for fs in state.filesystems
        ],
        "missing": [{"role": role.value, "path": str(path)} for role, path in state.missing],
        "forecast": {"bytes_per_day": f.bytes_per_day, "days_until_full": f.days_until_full,
                     "days_until_quota": f.days_until_quota, "days_left": f.days_left},
    }
