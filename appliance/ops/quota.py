"""Admission of new objects: free disk space and Orthanc's quotas.

:class:`StoreAdmission` is the :class:`~appliance.store.archive.Admission` the daemon
installs in the Archive. For each new object it answers, cheaply, whether it may be
stored:

- below ``DiskMonitor.MinimumFreeMB`` free on the storage or index filesystem, no
  (C-STORE 0xA700, HTTP 507) until space returns. The disk monitor measures every
  few seconds; between two measurements the bytes stored since are subtracted from
  the last measurement, so a burst cannot run far past the limit.
- ``MaximumStorageSize`` (MB) / ``MaximumPatientCount`` reached (Orthanc's keys and
  rules: a new instance of a patient already stored never counts as a new patient):
  with ``MaximumStorageMode`` "Reject", no; with "Recycle" (Orthanc's default), the
  patients stored longest ago are deleted until the object fits. A patient with a
  store in progress, or with an instance received in the last ``StableAge`` seconds
  (its study may still be arriving), is never recycled; when nothing else is left
  the object is refused.

The totals (bytes, patients) are kept in memory: a store adds to them, a delete
(recycling, the Archive's delete) subtracts, and :meth:`StoreAdmission.totals_changed` resets them from the
index now and then (the status board's count), so the hot path runs no extra SQL
(except one indexed lookup per object when MaximumPatientCount is set).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter

from appliance.ops.disk import MB, DiskState, human_bytes
from appliance.store.archive import Admission, AdmissionTicket, Archive, Refusal

log = logging.getLogger(__name__)


class StorageMode(enum.Enum):
    """Orthanc's MaximumStorageMode."""

    RECYCLE = "Recycle"
    REJECT = "Reject"


class _Ticket(AdmissionTicket):
    __slots__ = ("_owner", "patient_id", "size", "new_patient")

    def __init__(self, owner: "StoreAdmission", patient_id: str, size: int, new_patient: bool) -> None:
        self._owner = owner
        self.patient_id = patient_id
        self.size = size
        self.new_patient = new_patient

    def close(self, stored: bool) -> None:
        self._owner._finished(self, stored)


class StoreAdmission(Admission):
    """Free space and quota checks for :meth:`Archive.store_instance`."""

    def __init__(self, archive: Archive, *, minimum_free_mb: int, maximum_storage_mb: int,
                 maximum_patient_count: int, mode: StorageMode, spare_recent_seconds: float) -> None:
        self._archive = archive
        self.minimum_free = minimum_free_mb * MB
        self.maximum_bytes = maximum_storage_mb * MB
        self.maximum_patients = maximum_patient_count
        self.mode = mode
        self._spare_recent = spare_recent_seconds
        self._lock = threading.Lock()          # the counters below
        self._quota_lock = threading.Lock()    # one quota decision (and recycling) at a time
        self._disk: DiskState | None = None
        self._stored_since_measure = 0
        self._refusing: str | None = None      # why objects are refused for space, if they are
        self._bytes: int | None = None         # stored bytes, None until first known
        self._patients = 0
        self._pending_bytes = 0
        self._pending_new: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self.refused = 0
        self.recycled_patients = 0
        self.recycled_bytes = 0

    @property
    def stored_bytes(self) -> int:
        """Bytes stored, as last counted plus stores since (0 until first counted)."""
        with self._lock:
            return self._bytes or 0

    @property
    def has_quota(self) -> bool:
        """True when MaximumStorageSize or MaximumPatientCount is set."""
        return bool(self.maximum_bytes or self.maximum_patients)

    # -- inputs ----------------------------------------------------------

    def disk_changed(self, state: DiskState) -> None:
        """A new disk measurement (from the monitor's thread)."""
        with self._lock:
            self._disk = state
            self._stored_since_measure = 0
            self._space_check()

    def totals_changed(self, counts: dict[str, int]) -> None:
        """Totals read from the index (``Index.counts()``) replace the running ones."""
        with self._lock:
            self._bytes = counts["bytes"]
            self._patients = counts["patients"]

    def stored_changed(self, bytes_delta: int, patients_delta: int,
                       disk_delta: int | None = None) -> None:
        """Objects were deleted or rewritten (Archive.delete, recycling, a patient
        fix): the running totals move by these amounts, and the free space
        measured last grows by the bytes freed on disk (``disk_delta``: an Orthanc
        file adopted by reference is only forgotten) until the next measurement."""
        with self._lock:
            if self._bytes is not None:
                self._bytes += bytes_delta
            self._patients += patients_delta
            self._stored_since_measure += bytes_delta if disk_delta is None else disk_delta
            self._space_check()

    # -- the hot path ----------------------------------------------------

    def admit(self, patient_id: str, size: int) -> AdmissionTicket:
        """A ticket for this object, or a :class:`Refusal` saying why not."""
        with self._lock:
            refusal = self._space_check()
        if refusal is not None:
            return self._refuse(refusal)
        if not self.has_quota:
            with self._lock:
                self._in_flight[patient_id] += 1
            return _Ticket(self, patient_id, size, False)
        with self._quota_lock:
            return self._admit_quota(patient_id, size)

    def _space_check(self) -> str | None:
        """Why objects are refused for lack of space (None: they are not); logs
        the transitions. Called with ``_lock`` held."""
        reason = None
        if self._disk is not None and self.minimum_free:
            free = self._disk.store_free - self._stored_since_measure
            if free < self.minimum_free:
                reason = (f"storage full: {free // MB} MB free, "
                          f"DiskMonitor.MinimumFreeMB is {self.minimum_free // MB}")
        if (reason is None) != (self._refusing is None):
            if reason is not None:
                log.error("%s: new objects are refused until space is freed", reason)
            else:
                log.info("free space is back above DiskMonitor.MinimumFreeMB (%d MB): "
                         "new objects are accepted again", self.minimum_free // MB)
        self._refusing = reason
        return reason

    def _refuse(self, reason: str) -> Refusal:
        with self._lock:
            self.refused += 1
        return Refusal(reason)

    def _totals(self) -> tuple[int, int]:
        if self._bytes is None:
            self.totals_changed(self._archive.counts())
        with self._lock:
            return self._bytes + self._pending_bytes, self._patients + len(self._pending_new)

    def _admit_quota(self, patient_id: str, size: int) -> AdmissionTicket:
        if self.maximum_bytes and size > self.maximum_bytes:
            return self._refuse(f"object of {human_bytes(size)} is larger than MaximumStorageSize")
        with self._lock:
            pending_new = self._pending_new[patient_id] > 0
        new_patient = bool(self.maximum_patients) and not pending_new and \
            not self._archive.patient_exists(patient_id)
        while True:
            stored, patients = self._totals()
            over = []
            if self.maximum_bytes and stored + size > self.maximum_bytes:
                over.append(f"MaximumStorageSize ({self.maximum_bytes // MB} MB)")
            if new_patient and patients + 1 > self.maximum_patients:
                over.append(f"MaximumPatientCount ({self.maximum_patients})")
            if not over:
                break
            if self.mode is StorageMode.REJECT:
                return self._refuse(f"{' and '.join(over)} reached")
            if not self._recycle_one(patient_id):
                return self._refuse(f"{' and '.join(over)} reached and no patient can be recycled")
        with self._lock:
            self._pending_bytes += size
            if new_patient:
                self._pending_new[patient_id] += 1
            self._in_flight[patient_id] += 1
        return _Ticket(self, patient_id, size, new_patient)

    def _recycle_one(self, patient_id: str) -> bool:
        """Delete the patient stored longest ago (never one being received); False if none."""
        with self._lock:
            spare = {patient_id, *self._in_flight}
        candidates = self._archive.least_recently_stored(
            spare=spare, stored_before=time.time() - self._spare_recent, limit=1)
        if not candidates:
            return False
        victim = candidates[0]
        # The Archive's own delete (audited, crash-safe); it calls
        # stored_changed, which takes the freed bytes off the totals.
        deleted, freed = self._archive.delete_patient(victim.pk)
        with self._lock:
            self.recycled_patients += 1
            self.recycled_bytes += freed
        # Internal id and counts only: no patient name or ID at INFO.
        log.info("recycled patient #%d (least recently stored, last at %s): %d studies, "
                 "%d instances, %s freed (%s, MaximumStorageMode Recycle)",
                 victim.pk, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(victim.updated_at)),
                 victim.studies, deleted, human_bytes(freed), self._limits())
        return True

    def _limits(self) -> str:
        limits = []
        if self.maximum_bytes:
            limits.append(f"MaximumStorageSize {self.maximum_bytes // MB} MB")
        if self.maximum_patients:
            limits.append(f"MaximumPatientCount {self.maximum_patients}")
        return ", ".join(limits)

    def _finished(self, ticket: _Ticket, stored: bool) -> None:
        with self._lock:
            self._in_flight[ticket.patient_id] -= 1
            if self._in_flight[ticket.patient_id] <= 0:
                del self._in_flight[ticket.patient_id]
            if self.has_quota:
                self._pending_bytes -= ticket.size
                if ticket.new_patient:
                    self._pending_new[ticket.patient_id] -= 1
                    if self._pending_new[ticket.patient_id] <= 0:
                        del self._pending_new[ticket.patient_id]
            if stored:
                self._stored_since_measure += ticket.size
                if self._bytes is not None:
                    self._bytes += ticket.size
                if ticket.new_patient:
                    self._patients += 1

    # -- status ----------------------------------------------------------

    def snapshot(self) -> dict:
        """What the status page and metrics show about admission."""
        with self._lock:
            return {
                "accepting": self._refusing is None,
                "refusing": self._refusing,
                "refused": self.refused,
                "minimum_free_mb": self.minimum_free // MB,
                "maximum_storage_mb": self.maximum_bytes // MB,
                "maximum_patient_count": self.maximum_patients,
                "mode": self.mode.value,
                "recycled_patients": self.recycled_patients,
                "recycled_bytes": self.recycled_bytes,
            }
