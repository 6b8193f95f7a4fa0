"""Adopting an Orthanc archive in place, as a task with progress.

``serve`` runs a pass in the background at every start (and again on SIGUSR1,
which ``pacs-appliance import-orthanc`` sends a running daemon); the command
runs one itself when no daemon is running. A pass reads Orthanc's index
(appliance.store: read only), leaves out the attachments the index already
marks as settled, and adopts the rest in batches (appliance.store.adoption
says how: hard links, else references, byte-exact, resumable). Progress (done/total, rate, ETA)
goes to the log every few seconds and into the status snapshot (``adoption``),
which ``pacs-appliance status``, ``/metrics`` and the status page show.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.ops.adoption_view import MISSING, adopted_count
from appliance.lazyclasses import lazy_dataclass
from appliance.ops.disk import human_bytes
from appliance.store import (
    Archive, Attachment, NotOrthancIndex, OrthancAdoption, Way, open_orthanc_index,
    orthanc_attachment_path, orthanc_index_file, settled_readonly,
)

log = logging.getLogger(__name__)

LOG_EVERY = 5.0
_BATCH = 512
# Attachments per transaction; the environment can lower it (tests: a slow
# pass to interrupt) without a configuration key.
BATCH_ENV = "PACS_APPLIANCE_ADOPT_BATCH"
# Unreadable attachments listed in the status (all are in the index).
_LISTED = 20


@dataclass
class Progress:
    """One pass of an adoption, as it goes."""

    state: str = "idle"            # idle | reading | adopting | verifying | done | stopped | failed | none
    orthanc_index: str | None = None
    total: int = 0                 # attachments this pass has to adopt
    done: int = 0
    started: float | None = None
    adopted: float | None = None   # when every instance was visible (before the MD5 checks)
    finished: float | None = None
    verified: int = 0              # files compared with Orthanc's MD5 after the pass
    ways: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    studies: Counter = field(default_factory=Counter)   # Study Instance UID -> instances adopted
    unreadable: list[dict] = field(default_factory=list)
    gone: int = 0                  # references this pass forgot: Orthanc deleted them
    missing: int = 0               # references kept without a file (Orthanc still lists them)
    error: str | None = None
    passes: int = 0

    def rate(self, now: float | None = None) -> float | None:
        """Attachments per second so far in this pass."""
        if self.started is None or self.done == 0:
            return None
        elapsed = (self.adopted or self.finished or now or time.time()) - self.started
        return self.done / elapsed if elapsed > 0 else None

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the current rate (None when unknown or done)."""
        rate = self.rate(now)
        if rate is None or self.state != "adopting":
            return None
        return (self.total - self.done) / rate

    def snapshot(self) -> dict:
        """The JSON-able form for the status file, /metrics and the status page."""
        now = time.time()
        rate = self.rate(now)
        return {
            "state": self.state, "orthanc_index": self.orthanc_index,
            "total": self.total, "done": self.done,
            "percent": round(100.0 * self.done / self.total, 1) if self.total else 100.0,
            "rate": round(rate, 1) if rate else None,
            "eta_seconds": round(self.eta(now), 1) if self.eta(now) is not None else None,
            "started": self.started, "adopted": self.adopted, "finished": self.finished,
            "verified": self.verified,
            "instances": {w.value: self.ways.get(w.value, 0) for w in Way},
            "bytes": {w.value: self.bytes.get(w.value, 0) for w in Way},
            "studies": sum(1 for n in self.studies.values() if n > 0),
            "unreadable": list(self.unreadable), "gone": self.gone, "missing": self.missing,
            "error": self.error, "passes": self.passes,
        }


class OrthancAdopter:
    """Passes over the Orthanc archive in the data folders of ``archive``."""

    def __init__(self, archive: Archive, storage_directory: Path, index_directory: Path, *,
                 on_progress: Callable[[Progress], None] | None = None,
                 log_every: float = LOG_EVERY) -> None:
        self._archive = archive
        self._storage = Path(storage_directory)
        self._index_dir = Path(index_directory)
        self.on_progress = on_progress
        self.report_every = 0.0      # seconds between two on_progress calls during a pass
        self._reported = 0.0
        self._log_every = log_every
        self._batch = max(1, int(os.environ.get(BATCH_ENV) or _BATCH))
        self._stop = threading.Event()
        self._requested = asyncio.Event()
        self._lock = threading.Lock()
        self.progress = Progress()

    def present(self) -> bool:
        """True when the data folders hold an Orthanc index."""
        return orthanc_index_file(self._index_dir) is not None

    def snapshot(self) -> dict:
        """The progress as the status shows it."""
        with self._lock:
            return self.progress.snapshot()

    def stop(self) -> None:
        """Make a running pass stop after its batch (the daemon stops)."""
        self._stop.set()
        self._requested.set()

    def request(self) -> None:
        """Ask for another pass (SIGUSR1: ``import-orthanc`` beside a running daemon)."""
        log.info("another pass over Orthanc's archive was asked for")
        self._requested.set()

    async def run_forever(self) -> None:
        """A pass now, then one per :meth:`request`, until :meth:`stop`."""
        while not self._stop.is_set():
            self._requested.clear()
            await asyncio.to_thread(self.run_pass)
            await self._requested.wait()

    def run_pass(self) -> Progress:
        """Adopt what is not adopted yet (blocking); the pass's progress."""
        path = orthanc_index_file(self._index_dir)
        with self._lock:
            passes = self.progress.passes + 1
            self.progress = Progress(state="reading" if path else "none",
                                     orthanc_index=str(path) if path else None,
                                     started=time.time(), passes=passes)
        if path is None:
            with self._lock:
                self.progress.finished = time.time()
            self._report(last=True)
            return self.progress
        try:
            self._adopt(path)
        except Exception as e:  # noqa: BLE001 - the daemon goes on serving
            log.exception("adopting Orthanc's archive %s failed", path)
            with self._lock:
                self.progress.state, self.progress.error = "failed", str(e)[:500]
        with self._lock:
            self.progress.finished = time.time()
        self._report(last=True)
        return self.progress

    def _adopt(self, path: Path) -> None:
        with open_orthanc_index(path, self._index_dir) as index:
            every = list(index.attachments())
        listed = {a.uuid for a in every}
        adoption = OrthancAdoption(self._archive, self._storage, listed)
        try:
            settled = adoption.settled()
            pending = [a for a in every if a.uuid not in settled]
            self._vanished(*adoption.vanished(listed))
            with self._lock:
                self.progress.total, self.progress.state = len(pending), "adopting"
            if pending:
                log.info("adopting Orthanc's archive %s: %d instance(s) to adopt, %d adopted before",
                         path, len(pending), len(settled))
            last_log = time.monotonic()
            batches = [pending[i:i + self._batch] for i in range(0, len(pending), self._batch)]
            # The next batch is read on the worker threads while one commits.
            prepared = adoption.prepare(batches[0]) if batches else None
            for k, batch in enumerate(batches):
                following = None
                if k + 1 < len(batches) and not self._stop.is_set():
                    following = adoption.prepare(batches[k + 1])
                self._account(batch, adoption.commit(prepared))
                prepared = following
                if time.monotonic() - last_log >= self._log_every:
                    last_log = time.monotonic()
                    self._log_progress()
                self._report()
                if prepared is None and k + 1 < len(batches):
                    self._stopped()
                    return
            with self._lock:
                self.progress.adopted = time.time()
            if not self._verify(adoption, {a.uuid: a.md5 for a in every}):
                self._stopped()
                return
            with self._lock:
                self.progress.state = "done"
            self._log_summary(adoption)
        finally:
            adoption.close()

    def _vanished(self, forgotten: list[str], kept: list[str]) -> None:
        """Say what became of references whose Orthanc file is gone."""
        if forgotten:
            log.warning("%d instance(s) adopted by reference were deleted by Orthanc since "
                        "(gone from its index and its folder): forgotten (attachments %s)",
                        len(forgotten), ", ".join(forgotten[:_LISTED]))
        if kept:
            log.warning("%d instance(s) adopted by reference have no file in Orthanc's folder "
                        "although its index lists them: kept, and not served until the file "
                        "is back (attachments %s)", len(kept), ", ".join(kept[:_LISTED]))
        with self._lock:
            p = self.progress
            p.gone, p.missing = len(forgotten), len(kept)
            for uuid in kept[:max(0, _LISTED - len(p.unreadable))]:
                p.unreadable.append({"uuid": uuid, "instance": None,
                                     "reason": MISSING})

    def _stopped(self) -> None:
        log.info("adoption stopped at %d of %d (goes on at the next start)",
                 self.progress.done, self.progress.total)
        with self._lock:
            self.progress.state = "stopped"

    def _verify(self, adoption: OrthancAdoption, md5_of: dict[str, str | None]) -> bool:
        """Compare the adopted files with Orthanc's MD5 (everything is visible
        already); False when stopped before the end."""
        todo = adoption.unverified()
        if not todo:
            return True
        with self._lock:
            self.progress.state = "verifying"
        t0 = time.monotonic()
        for start in range(0, len(todo), self._batch):
            if self._stop.is_set():
                return False
            batch = todo[start:start + self._batch]
            withdrawn = adoption.verify(batch, md5_of)
            with self._lock:
                p = self.progress
                p.verified += len(batch)
                for (uuid, _sop, _rel, size, study), why, way in withdrawn:
                    log.warning("Orthanc attachment %s withdrawn: %s", uuid, why)
                    p.ways[Way.UNREADABLE.value] = p.ways.get(Way.UNREADABLE.value, 0) + 1
                    p.bytes[Way.UNREADABLE.value] = p.bytes.get(Way.UNREADABLE.value, 0) + size
                    # This pass's counts, if this pass adopted it (an earlier one may have).
                    if p.ways.get(way.value):
                        p.ways[way.value] -= 1
                        p.bytes[way.value] = max(0, p.bytes.get(way.value, 0) - size)
                        if p.studies.get(study):
                            p.studies[study] -= 1
                    if len(p.unreadable) < _LISTED:
                        p.unreadable.append({"uuid": uuid, "instance": None, "reason": why})
            self._report()
        log.info("compared %d adopted file(s) with the MD5 in Orthanc's index in %.1f s",
                 len(todo), time.monotonic() - t0)
        return True

    def _account(self, batch: list[Attachment], results) -> None:
        with self._lock:
            p = self.progress
            for a, r in zip(batch, results):
                p.done += 1
                p.ways[r.way.value] = p.ways.get(r.way.value, 0) + 1
                p.bytes[r.way.value] = p.bytes.get(r.way.value, 0) + r.bytes
                if r.study and r.way is not Way.DUPLICATE:
                    p.studies[r.study] += 1
                if r.way is Way.UNREADABLE:
                    log.warning("Orthanc attachment %s (instance %s) not adopted: %s",
                                a.uuid, a.instance, r.reason)
                    if len(p.unreadable) < _LISTED:
                        p.unreadable.append({"uuid": a.uuid, "instance": a.instance,
                                             "reason": r.reason})

    def _log_progress(self) -> None:
        s = self.snapshot()
        log.info("adopting Orthanc's archive: %d/%d instances (%.0f%%), %s/s, ETA %s",
                 s["done"], s["total"], s["percent"], s["rate"] or "-",
                 f"{s['eta_seconds']:.0f} s" if s["eta_seconds"] is not None else "-")

    def _log_summary(self, adoption: OrthancAdoption) -> None:
        s = self.snapshot()
        n, b = s["instances"], s["bytes"]
        if not s["total"]:
            log.info("Orthanc's archive %s: everything adopted already", s["orthanc_index"])
            return
        log.info("adopted Orthanc's archive in %.1f s (%s/s): %d instance(s) of %d studies: "
                 "%d linked (%s, no space taken), %d referenced (%s, no space taken), "
                 "%d copied (%s), %d decompressed (%s more on disk), %d already here, "
                 "%d unreadable",
                 (s["adopted"] or s["finished"] or time.time()) - s["started"], s["rate"] or "-",
                 adopted_count(n), s["studies"],
                 n["linked"], human_bytes(b["linked"]), n["referenced"], human_bytes(b["referenced"]),
                 n["copied"], human_bytes(b["copied"]), n["decompressed"],
                 human_bytes(b["decompressed"]), n["duplicate"], n["unreadable"])
        if adoption.replaced:
            log.info("%d instance(s) Orthanc had replaced since their adoption (OverwriteInstances): "
                     "its newer copy replaced ours", adoption.replaced)
        if adoption.reference_reason:
            log.warning("Orthanc's files could not be linked (%s): %d adopted by reference to "
                        "Orthanc's folder, which must keep them", adoption.reference_reason,
                        n["referenced"])

    def _report(self, *, last: bool = False) -> None:
        """Tell ``on_progress`` (the CLI's bar, the daemon's status file): after
        every batch, or at most once a second with ``REPORT_EVERY``."""
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not last and now - self._reported < self.report_every:
            return
        self._reported = now
        try:
            self.on_progress(self.progress)
        except Exception:  # noqa: BLE001 - progress must not stop the adoption
            log.exception("adoption progress not reported")


@lazy_dataclass(frozen=True)
class Plan:
    """What an adoption would do (``import-orthanc --dry-run``)."""

    orthanc_index: Path
    attachments: int               # DICOM attachments in Orthanc's index
    settled: int                   # of them adopted already
    pending: int
    studies: int                   # Orthanc studies with something to adopt
    bytes_linked: int              # uncompressed attachments: linked or referenced, no space taken
    bytes_decompressed: int        # compressed ones: this much more on disk
    missing: list[str]             # attachment files not found


def plan(storage_directory: Path, index_directory: Path) -> Plan | None:
    """What a pass would adopt, read only (Orthanc's index, our index, a stat of
    each file); None when the folders hold no Orthanc index. Raises
    NotOrthancIndex for an index of another schema."""
    path = orthanc_index_file(Path(index_directory))
    if path is None:
        return None
    settled = settled_readonly(Path(index_directory))
    with open_orthanc_index(path, Path(index_directory)) as index:
        every = list(index.attachments())
    pending = [a for a in every if a.uuid not in settled]
    missing = [a.uuid for a in pending if not orthanc_attachment_path(storage_directory, a.uuid).is_file()]
    return Plan(path, len(every), len(every) - len(pending), len(pending),
                len({a.study for a in pending}),
                sum(a.uncompressed_size for a in pending if not a.compressed),
                sum(a.uncompressed_size for a in pending if a.compressed), missing)


__all__ = ["NotOrthancIndex", "OrthancAdopter", "Plan", "Progress", "plan"]
