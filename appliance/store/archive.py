"""The Archive: the one object every protocol adapter stores through.

``store_instance`` is the only ingest path (C-STORE, STOW-RS, ``POST /instances``,
``import`` through ``ingest_file``). It
follows Orthanc's order — file first, then index, undo the file if the index
fails — with the durability of the store contract (docs/DESIGN.md): the file is
fsynced and renamed into place, its directory fsynced, and the index row
committed, before the caller hears Success. A C-STORE's header is parsed
(and its index record built) on the receiving thread once the first 64 KiB
are in, while the pixel data still arrives. Every object, however its header
was read, is walked whole (appliance.dicomfile.structure) before it is placed:
one cut short or damaged anywhere, or an image without its pixels, is refused.
"""

from __future__ import annotations

import enum
import errno
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import apsw
from pydicom.dataset import Dataset

from appliance.dicomfile import dicomjson, fastheader, structure
from appliance.dicomfile.columns import INTEGER_COLUMNS, TEXT_COLUMNS, UID_KEYWORDS
from appliance.dicomfile.header import Header, InvalidObject, read_header, read_header_start
from appliance.dicomfile.vr import is_valid_uid
from appliance.lazyclasses import lazy_dataclass
from appliance.store.blobs import (BlobStore, IncomingFile, Sealing, file_sha256,
                                   referenced_uuid)
from appliance.query.model import Row, Search
from appliance.query.retrieve import Scope
from appliance.store.index import (
    AuditEntry, Forward, Index, InstanceRecord, MppsRecord, PatientUsage, Removed, StoredInstance,
)
from appliance.store.outbox import Outbox

log = logging.getLogger(__name__)


class StoreResult(enum.Enum):
    """The outcome of one store, with its C-STORE status and HTTP code.

    C-STORE statuses are PS3.4 B.2.3 (Storage) and PS3.7 C (general); STOW-RS
    uses the same numbers as FailureReason (PS3.18 10.5.3).
    """

    #                    (name,              dimse,  http)
    SUCCESS = ("Success", 0x0000, 200)
    # A duplicate kept out by OverwriteInstances=false: Orthanc answers
    # Success too, so that the modality does not retry for ever.
    ALREADY_STORED = ("AlreadyStored", 0x0000, 200)
    # Refused by policy (this AE may not store).
    REJECTED = ("Rejected", 0x0124, 403)
    # Storage full or quota reached (PS3.4 B.2.3: Refused, Out of Resources).
    OUT_OF_RESOURCES = ("OutOfResources", 0xA700, 507)
    # Dataset's SOP Class differs from the command's (PS3.4 B.2.3).
    SOP_CLASS_MISMATCH = ("SopClassMismatch", 0xA900, 409)
    # Dataset lacks what its SOP Class requires, e.g. an image without Pixel
    # Data (PS3.4 B.2.3: Data Set does not match SOP Class).
    DATASET_MISMATCH = ("DataSetMismatch", 0xA900, 409)
    # Not DICOM, truncated, missing or invalid UIDs (PS3.4 B.2.3: Cannot Understand).
    INVALID = ("Invalid", 0xC000, 400)
    # Dataset's SOP Instance UID differs from the command's.
    UID_MISMATCH = ("UidMismatch", 0xC001, 409)
    # Our own failure (I/O error, index error): PS3.7 C.4 Processing Failure.
    FAILURE = ("Failure", 0x0110, 500)

    def __init__(self, label: str, dimse: int, http: int) -> None:
        self.label = label
        self.dimse_status = dimse
        self.http_status = http

    @property
    def stored(self) -> bool:
        """True if the instance is in the archive after this store."""
        return self in (StoreResult.SUCCESS, StoreResult.ALREADY_STORED)


@dataclass(frozen=True)
class Origin:
    """Where an object came from (kept in the index, used in logs)."""

    source: str                 # "DICOM" | "DICOMweb" | "REST" | "import"
    peer: str | None = None     # "ip:port"
    calling_aet: str | None = None


@lazy_dataclass(frozen=True)
class StoreOutcome:
    """What :meth:`Archive.store_instance` did, for the adapter to report."""

    result: StoreResult
    reason: str = ""
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    size: int = 0


class AdmissionTicket:
    """An admitted object: ``refusal`` is None; :meth:`close` once it is stored or not."""

    refusal: str | None = None

    def close(self, stored: bool) -> None:
        """The store is over (``stored``: a new instance is in the archive)."""


class Refusal(AdmissionTicket):
    """A refused object: the reason goes to the sender (no patient data in it)."""

    def __init__(self, reason: str) -> None:
        self.refusal = reason


class Admission:
    """Decides whether a new object may be stored (free space, quotas).

    This one admits everything; the daemon installs appliance.ops.quota's. It
    is asked once per new object, after its header was read and before its
    file is moved into place, so a refused object leaves nothing behind.
    """

    _OPEN = AdmissionTicket()

    def admit(self, patient_id: str, size: int) -> AdmissionTicket:
        """A ticket for storing ``size`` bytes of this patient, or a :class:`Refusal`."""
        return self._OPEN

    def stored_changed(self, bytes_delta: int, patients_delta: int,
                       disk_delta: int | None = None) -> None:
        """Objects left the archive or changed (a delete, recycling, a patient
        fix): the totals the quotas count move by these amounts. ``disk_delta``
        is what the storage filesystem gained or lost (default ``bytes_delta``):
        forgetting an Orthanc file adopted by reference frees nothing on it."""


@lazy_dataclass(frozen=True)
class Deletion:
    """What :meth:`Archive.delete` removed."""

    instances: int
    bytes: int
    patients: int   # patients left without a study, removed too


class Archive:
    """Index + file store behind one thread-safe interface."""

    def __init__(self, storage_directory: Path, index_directory: Path, *,
                 overwrite_instances: bool = False, admission: Admission | None = None) -> None:
        # Incoming files live inside the storage directory so that moving one
        # into place is a rename on the same filesystem, never a copy.
        self.blobs = BlobStore(Path(storage_directory), Path(storage_directory) / ".incoming")
        self.index = Index(Path(index_directory), BlobStore.sync_dirs, lambda: self._placing)
        self.overwrite_instances = overwrite_instances
        self._stats_lock = threading.Lock()
        self._placing = 0  # stores past their receive, before their index write is done
        self.stored_count = 0
        self.failed_count = 0
        self.adopted_count = 0  # instances adopted from an Orthanc archive since start
        # Outcomes since start by (Origin.source, StoreResult) for the metrics.
        self.outcomes: Counter[tuple[str, StoreResult]] = Counter()
        self.admission = admission or Admission()
        self.outbox = Outbox(self.index)
        # Set by the daemon when Forwarding.Rules exist: what to queue for a new
        # instance (appliance.outbound.rules); None keeps the store path as it was.
        self.forwarding: Callable[[InstanceRecord], tuple[Forward, ...]] | None = None

    def open(self) -> None:
        """Sweep partial files left by a crash, open the index, remove the
        files a delete or a patient fix interrupted by a crash still owed."""
        swept = self.blobs.open()
        if swept:
            log.warning("removed %d partial file(s) left by an interrupted receive", swept)
        self.index.open()
        doomed = self.index.doomed_files()
        if doomed:
            # A row still naming its file (never, but a bug must not lose an
            # image): the file stays and leaves the list.
            kept = [path for path, named in doomed if named]
            removed = self.blobs.remove_durably([path for path, named in doomed if not named])
            self.index.forget_doomed(path for path, _ in doomed)
            log.warning("removed %d file(s) owed by a delete or patient fix interrupted by a "
                        "crash%s", removed, f" ({len(kept)} still indexed: kept)" if kept else "")

    def close(self) -> None:
        """Finish queued index writes and close the index."""
        self.index.close()
        self.blobs.close()

    def outcome_counts(self) -> dict[tuple[str, StoreResult], int]:
        """Store outcomes since start by (Origin.source, StoreResult), a consistent copy."""
        with self._stats_lock:
            return dict(self.outcomes)

    def new_incoming(self, *, early_header: bool = False) -> IncomingFile:
        """A file to receive one object into, to hand to :meth:`store_instance`.

        ``early_header``: parse its header on the receiving thread as soon as
        it is in (C-STORE: the pixel data is still on its way meanwhile, so
        the store after the last byte has less to do before answering).
        """
        f = self.blobs.new_incoming()
        if early_header:
            f.on_header = _parse_early
        return f

    def store_instance(self, incoming: IncomingFile, origin: Origin, *,
                       expected_sop_class: str | None = None,
                       expected_sop_instance: str | None = None) -> StoreOutcome:
        """Store the Part-10 file in ``incoming``; the archive takes ownership of it.

        ``expected_*`` are the UIDs the protocol announced (the C-STORE
        command's Affected SOP Class/Instance UID); the dataset must agree.
        Returns only once the instance is durable (or refused).
        """
        with self._stats_lock:
            self._placing += 1
        try:
            outcome = self._store(incoming, origin, expected_sop_class, expected_sop_instance)
        finally:
            with self._stats_lock:
                self._placing -= 1
            incoming.discard()  # a no-op once the file has been renamed into place
        with self._stats_lock:
            if outcome.result.stored:
                self.stored_count += 1
            else:
                self.failed_count += 1
            self.outcomes[(origin.source, outcome.result)] += 1
        return outcome

    def ingest_file(self, path: Path | str, origin: Origin) -> StoreOutcome:
        """Store a copy of the file at ``path`` through :meth:`store_instance`.

        The generic "store this file" entry (``pacs-appliance import`` with the
        daemon stopped; anyone with a file and no protocol around it): the
        bytes are copied into an incoming file, so the original is never
        moved or changed, and the object meets the same checks, duplicate
        rule, quotas and durability as one received over the network. A file
        that cannot be read is answered INVALID with the OS's reason.
        """
        incoming = self.new_incoming(early_header=True)
        try:
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(_COPY_CHUNK):
                    incoming.write(chunk)
            incoming.flush()
        except OSError as e:
            incoming.discard()
            if e.filename is None or incoming.error is not None:
                return _io_failure(e, incoming.size)  # ours (the storage), not the source's
            return StoreOutcome(StoreResult.INVALID, f"cannot read: {e.strerror}", size=incoming.size)
        return self.store_instance(incoming, origin)

    def note_adopted(self, n: int) -> None:
        """``n`` instances were adopted in place (appliance.store.adoption)."""
        with self._stats_lock:
            self.adopted_count += n

    # -- reads and searches ------------------------------------------------
    #
    # What the protocol adapters read goes through here, so none of them
    # knows the index or the file layout (docs/DESIGN.md, the store is the
    # only door).

    def is_alive(self) -> bool:
        """True while the index can write (a health check)."""
        return self.index.is_alive()

    def counts(self) -> dict[str, int]:
        """Numbers of patients, studies, series, instances and stored bytes."""
        return self.index.counts()

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        """The stored instance with this SOP Instance UID, or None."""
        return self.index.find_instance(sop_instance_uid)

    def instances_in(self, study_uid: str, series_uid: str | None = None,
                     sop_uid: str | None = None) -> list[StoredInstance]:
        """The instances of a study (or of one series in it, or one instance in
        that), in viewing order; none when a parent named does not hold them."""
        return self.index.instances_in(study_uid, series_uid, sop_uid)

    def instances_under(self, scope: Scope) -> list[StoredInstance]:
        """The stored instances a retrieve (C-MOVE, C-GET) names, in viewing order."""
        return self.index.instances_under(scope)

    def metadata_in(self, study_uid: str, series_uid: str | None = None,
                    sop_uid: str | None = None) -> list[str]:
        """The DICOM JSON texts of the same instances as :meth:`instances_in`."""
        return self.index.metadata_in(study_uid, series_uid, sop_uid)

    def instance_metadata(self, sop_instance_uid: str) -> str | None:
        """The DICOM JSON text of one instance, or None."""
        return self.index.instance_metadata(sop_instance_uid)

    def commitment_problem(self, sop_instance_uid: str, sop_class_uid: str) -> str | None:
        """Why this instance cannot be committed (storage commitment, PS3.4 J.3.2),
        or None when it is safely kept: its row exists (else "missing"), with this
        SOP class (else "class"), and its file has the recorded size and SHA-256
        (else "damaged"). Reads the whole file: run it on a worker thread."""
        found = self.index.find_instance(sop_instance_uid)
        if found is None:
            return "missing"
        if found.sop_class_uid != sop_class_uid:
            return "class"
        try:
            sha256, size = file_sha256(self.file_of(found))
        except OSError:
            return "damaged"
        return None if (sha256, size) == (found.sha256, found.file_size) else "damaged"

    def file_of(self, instance: StoredInstance) -> Path:
        """Where the stored file of ``instance`` is (read it, never write it)."""
        return self.blobs.path(instance.file_path)

    def search(self, search: Search) -> list[Row]:
        """One page of the resources matching ``search`` (appliance.query)."""
        return self.index.search(search)

    def count(self, search: Search) -> int:
        """How many resources match ``search``, limit and offset ignored."""
        return self.index.count(search)

    def studies_quiet_since(self, study_instance_uids, accession_numbers,
                            before: float) -> tuple[set[str], set[str]]:
        """Which of these Study Instance UIDs and Accession Numbers belong to a
        stored study without a new instance since ``before`` (a stable study)."""
        return self.index.studies_quiet_since(study_instance_uids, accession_numbers, before)

    # -- procedure steps (MPPS) ------------------------------------------------

    def mpps_insert(self, record: MppsRecord) -> bool:
        """Keep a new procedure step; False if its SOP Instance UID exists."""
        return self.index.mpps_insert(record)

    def mpps_get(self, sop_instance_uid: str) -> MppsRecord | None:
        """The procedure step with this SOP Instance UID, or None."""
        return self.index.mpps_get(sop_instance_uid)

    def mpps_update(self, previous: MppsRecord, **changes) -> bool:
        """Change a step only if it is still ``previous``; False if it moved on."""
        return self.index.mpps_update(previous, **changes)

    def mpps_states(self, study_uids: set[str], accession_numbers: set[str],
                    ) -> dict[tuple[str, str], str]:
        """The newest procedure step's status per ("study", uid) and ("accession", number)."""
        return self.index.mpps_states(study_uids, accession_numbers)

    # -- space: quotas, recycling, the disk forecast ---------------------------

    def patient_exists(self, patient_id: str) -> bool:
        """True if the archive holds this PatientID."""
        return self.index.patient_exists(patient_id)

    def least_recently_stored(self, *, spare, stored_before: float,
                              limit: int = 8) -> list[PatientUsage]:
        """The patients stored longest ago, oldest first (Orthanc's recycling order)."""
        return self.index.least_recently_stored(spare=spare, stored_before=stored_before,
                                                limit=limit)

    def delete_patient(self, patient_pk: int, *, user: str = "recycling") -> tuple[int, int]:
        """Delete a patient and everything stored of it (quota recycling), the
        same way as :meth:`delete`. Returns (files, bytes) deleted."""
        removed = self._delete(AuditEntry(user, "delete", "Patient", {"Patient": f"#{patient_pk}"}),
                               None, patient_pk=patient_pk)
        return len(removed.files), removed.bytes

    # -- deletes and patient fixes (issue 16) -----------------------------------

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None,
               *, user: str, reason: str = "") -> Deletion | None:
        """Delete a study, a series of it, or an instance of that; None when
        the archive holds no such thing (an instance is only found under its
        own study and series).

        Crash-safe: the rows go in one transaction that also lists their files
        as doomed and adds the audit entry; the files are unlinked after the
        commit, and whatever a crash left listed is unlinked at the next
        start. So a SIGKILL leaves the object whole or gone, and no orphan.
        """
        uids = {"StudyInstanceUID": study_uid}
        if series_uid is not None:
            uids["SeriesInstanceUID"] = series_uid
        if sop_uid is not None:
            uids["SOPInstanceUID"] = sop_uid
        level = "Instance" if sop_uid else "Series" if series_uid else "Study"
        removed = self._delete(AuditEntry(user, "delete", level, uids, reason),
                               study_uid, series_uid, sop_uid)
        if not removed.files:
            return None
        return Deletion(len(removed.files), removed.bytes, removed.patients)

    def _delete(self, entry: AuditEntry, *scope, patient_pk: int | None = None) -> Removed:
        removed = self.index.delete_scope(*scope, audit=entry, patient_pk=patient_pk)
        if removed.files:
            self.files_removed(removed)
            log.info("%s: audit: delete %s %s: %d instance(s), %d bytes", entry.user,
                     entry.level.lower(), _uid_text(entry.uids), len(removed.files), removed.bytes)
        return removed

    def files_removed(self, removed: Removed, *, bytes_added: int = 0,
                      patients_added: int = 0) -> None:
        """After the commit that doomed them: unlink the files, take them off
        the list, tell the quotas."""
        paths = [path for path, _ in removed.files]
        self.blobs.remove_durably(paths)
        self.index.forget_doomed(paths)
        kept = sum(size for path, size in removed.files if referenced_uuid(path) is not None)
        self.admission.stored_changed(bytes_added - removed.bytes, patients_added - removed.patients,
                                      bytes_added - removed.bytes + kept)

    def audit_trail(self, limit: int = 1000, offset: int = 0) -> list[AuditEntry]:
        """Who deleted or changed what, newest first."""
        return self.index.audit_entries(limit, offset)

    def modify_study(self, study_uid: str, changes: dict[str, str], *, keep_uids: bool,
                     user: str, reason: str = ""):
        """Fix the patient (PatientName, PatientID, PatientBirthDate,
        PatientSex, AccessionNumber, by keyword in ``changes``) of a study:
        see appliance.store.fix_patient. Returns its Modification, or None
        when no such study is stored."""
        from appliance.store.fix_patient import modify_study

        return modify_study(self, study_uid, changes, keep_uids=keep_uids, user=user,
                            reason=reason)

    def ingest_since(self, since: float) -> tuple[int, float | None]:
        """(bytes received after ``since``, time of the oldest instance)."""
        return self.index.ingest_since(since)

    def _store(self, incoming: IncomingFile, origin: Origin,
               expected_class: str | None, expected_instance: str | None) -> StoreOutcome:
        checked = self.sealed_and_checked(incoming, origin, expected_class, expected_instance)
        if isinstance(checked, StoreOutcome):
            return checked
        outcome, record = checked
        ticket = self.admission.admit(record.patient_id, incoming.size)
        if ticket.refusal is not None:
            return _with(outcome, StoreResult.OUT_OF_RESOURCES, ticket.refusal)
        placed = None
        try:
            placed = self._place(incoming, outcome, record)
            return placed
        finally:
            ticket.close(placed is not None and placed.result is StoreResult.SUCCESS)

    def sealed_and_checked(self, incoming: IncomingFile, origin: Origin,
                           expected_class: str | None, expected_instance: str | None, *,
                           replacing: bool = False,
                           ) -> StoreOutcome | tuple[StoreOutcome, InstanceRecord]:
        """The first half of every ingest: the file written out and fsynced,
        walked whole, its header read and checked; a refusal, or (success
        outcome, index record with its SHA-256). ``replacing``: the object is
        to replace a stored instance of the same UID (a patient fix keeping
        UIDs), so being stored already is no reason to refuse it."""
        if incoming.error is not None:  # the receive itself failed (disk full)
            return _io_failure(incoming.error, incoming.size)
        sealing = self.blobs.seal(incoming)  # beside the checks
        try:
            checked = self._check(incoming, sealing, origin, expected_class, expected_instance,
                                  replacing)
        finally:
            try:
                sha256, seal_error = sealing.wait(), None
            except OSError as e:
                sha256, seal_error = "", e
        if isinstance(checked, StoreOutcome):
            return checked
        outcome, record = checked
        if seal_error is not None:
            return _io_failure(seal_error, incoming.size, outcome)
        return outcome, replace(record, sha256=sha256)

    def _place(self, incoming: IncomingFile, outcome: StoreOutcome,
               record: InstanceRecord) -> StoreOutcome:
        """Move the file into place and commit its row (undoing the file on failure)."""
        try:
            rel, directory = self.blobs.adopt(incoming, BlobStore.new_id())
        except OSError as e:
            return _io_failure(e, incoming.size, outcome)
        forwards = self.forwarding(record) if self.forwarding is not None else ()
        try:
            done = self.index.insert_instance(
                replace(record, file_path=rel), overwrite=self.overwrite_instances, dirs={directory},
                forwards=forwards,
            )
        except Exception as e:  # noqa: BLE001 - compensate, then report
            self.blobs.remove(rel)
            if isinstance(e, apsw.FullError):
                return _with(outcome, StoreResult.OUT_OF_RESOURCES, "index disk full")
            log.error("index insert failed: %s", e)
            return _with(outcome, StoreResult.FAILURE, f"index error: {e}")
        if not done.inserted:
            self.blobs.remove(rel)
            return _with(outcome, StoreResult.ALREADY_STORED, "already stored")
        if done.replaced_file:
            self.blobs.remove(done.replaced_file)
        if forwards:
            self.outbox.on_queued([f.destination for f in forwards if f.stable_age is None])
        return outcome

    def _check(self, incoming: IncomingFile, sealing: Sealing, origin: Origin,
               expected_class: str | None, expected_instance: str | None, replacing: bool,
               ) -> StoreOutcome | tuple[StoreOutcome, InstanceRecord]:
        """Check the object is whole and parse its header: a refusal, or
        (success outcome, index record)."""
        try:
            # The header read on arrival (C-STORE), else read now: without
            # pydicom when fastheader can, with it otherwise. Only what
            # reads the file waits for the rest of it to be written.
            early = incoming.header if isinstance(incoming.header, _Early) else None
            if early is None:
                sealing.wait_written()
                head = _read_head(incoming)
                early = _fast_early(head)
            else:
                head = early.head
            # Whole, whichever reader builds the record: pydicom would take
            # an object cut inside its header for a short one.
            with _Rest(incoming, sealing) as rest:
                try:
                    structure.check(structure.Reader(head, incoming.size, rest.read_at))
                    unlike = None
                except structure.NotItsSopClass as e:
                    unlike = str(e)  # well framed: reported after the UIDs are checked
            if early is not None:
                uids = early.uids
            else:
                header = read_header(incoming.path)
                uids = header_uids(header)
        except (InvalidObject, structure.Malformed) as e:
            return StoreOutcome(StoreResult.INVALID, str(e), size=incoming.size)
        except OSError as e:
            return _io_failure(e, incoming.size)
        described = StoreOutcome(
            StoreResult.SUCCESS, "", uids["SOPClassUID"], uids["SOPInstanceUID"],
            uids["StudyInstanceUID"], uids["SeriesInstanceUID"], incoming.size,
        )
        if expected_class and expected_class != uids["SOPClassUID"]:
            return _with(described, StoreResult.SOP_CLASS_MISMATCH,
                         f"dataset SOP Class {uids['SOPClassUID']} but command {expected_class}")
        if expected_instance and expected_instance != uids["SOPInstanceUID"]:
            return _with(described, StoreResult.UID_MISMATCH,
                         f"dataset SOP Instance {uids['SOPInstanceUID']} but command {expected_instance}")
        if unlike is not None:
            return _with(described, StoreResult.DATASET_MISMATCH, unlike)
        if (not self.overwrite_instances and not replacing
                and self.index.find_instance(uids["SOPInstanceUID"])):
            # Cheap early answer; the insert below re-checks inside the transaction.
            return _with(described, StoreResult.ALREADY_STORED, "already stored")

        if early is not None:
            return described, with_receipt(early.record, incoming.size, origin)
        try:
            record = instance_record(header, uids, incoming.size, origin)
        except Exception as e:  # noqa: BLE001 - odd values must fail this object only
            return _with(described, StoreResult.INVALID, f"unusable header: {type(e).__name__}: {e}")
        return described, record


@lazy_dataclass(frozen=True)
class _Early:
    """A header read before the store itself, typically while its object
    was still arriving."""

    uids: dict[str, str]
    record: InstanceRecord      # without the receipt (size, time, origin)
    head: bytes                 # the object's first bytes, the header among them


_NOBODY = Origin("")
# ingest_file copies a file in pieces of this size (a few blocks of IncomingFile).
_COPY_CHUNK = 1 << 20
# A header longer than this is left to pydicom, which reads it from the file.
_FAST_HEADER_LIMIT = 256 << 10


def _parse_early(incoming: IncomingFile, start: bytes) -> _Early | None:
    """IncomingFile.on_header: the parse, checks and record of a header that is
    whole in ``start`` (the object's first bytes), or None (the finished file
    is parsed then, and any problem with it reported). Never raises: it runs
    in the middle of a receive."""
    try:
        early = _fast_early(start)
        if early is not None:
            return early
        incoming.flush(last=False)  # pydicom reads the file; more is coming
        started = read_header_start(incoming.path)
        if started is None:
            return None
        header, _ = started
        uids = header_uids(header)
        return _Early(uids, instance_record(header, uids, 0, _NOBODY), start)
    except Exception:  # noqa: BLE001 - see above
        return None


def _read_head(incoming: IncomingFile) -> bytes:
    """The first bytes of a received (and written) file, its header among them
    unless that is longer than _FAST_HEADER_LIMIT; raises OSError only."""
    with open(incoming.path, "rb") as f:
        return f.read(min(incoming.size, _FAST_HEADER_LIMIT))


class _Rest:
    """The part of a received file beyond the head in memory, for
    structure.Reader: the file is opened on the first read, once it is
    written (an object whose last element ends the head is never opened)."""

    def __init__(self, incoming: IncomingFile, sealing: Sealing) -> None:
        self._incoming = incoming
        self._sealing = sealing
        self._fd: int | None = None

    def read_at(self, pos: int, n: int) -> bytes:
        if self._fd is None:
            self._sealing.wait_written()
            self._fd = os.open(self._incoming.path, os.O_RDONLY)
        return os.pread(self._fd, n, pos)

    def __enter__(self) -> "_Rest":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)


def _fast_early(start: bytes) -> _Early | None:
    """The header that ``start`` begins with, read by fastheader, or None
    (pydicom decides then)."""
    plain = fastheader.read(start)
    if plain is None:
        return None
    metadata = json.dumps(plain.metadata, separators=(",", ":"), ensure_ascii=False)
    uids = plain.uids()
    record = _record(plain.text.get, plain.ints.get, uids, plain.transfer_syntax_uid, metadata)
    return _Early(uids, record, start)


def _uid_text(uids: dict[str, str]) -> str:
    """The UIDs of an audit entry for its log line."""
    return " ".join(f"{k}={v}" for k, v in uids.items())

def record_of_file(path: Path, head: bytes, size: int, origin: Origin, *,
                   received_at: float | None = None, sha256: str = "", file_path: str = "",
                   ) -> tuple[InstanceRecord, str | None]:
    """The index record of a Part-10 file already whole on disk (adoption of
    another archive's files), read and checked as ingest reads and checks a
    received object: walked whole (appliance.dicomfile.structure), header read
    by fastheader from ``head`` (its first bytes) or else by pydicom, UIDs
    checked, one record building.

    Returns (record, unlike): ``unlike`` is why the object does not match its
    SOP Class (an image without Pixel Data, well framed otherwise), which
    ingest refuses and an adopter may keep. Raises InvalidObject,
    structure.Malformed or OSError.
    """
    try:
        if len(head) >= size:  # the whole file is in memory already
            structure.check(structure.Reader(head, size))
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                structure.check(structure.Reader(head, size, lambda pos, n: os.pread(fd, n, pos)))
            finally:
                os.close(fd)
        unlike = None
    except structure.NotItsSopClass as e:
        unlike = str(e)
    early = _fast_early(head)
    if early is not None:
        record = early.record
    else:
        header = read_header(path)
        try:
            record = instance_record(header, header_uids(header), 0, origin)
        except InvalidObject:
            raise
        except Exception as e:  # noqa: BLE001 - an odd value fails this file only, as at ingest
            raise InvalidObject(f"unusable header: {type(e).__name__}: {e}") from None
    return with_receipt(record, size, origin, received_at, sha256=sha256,
                        file_path=file_path), unlike


def _with(outcome: StoreOutcome, result: StoreResult, reason: str) -> StoreOutcome:
    return StoreOutcome(result, reason, outcome.sop_class_uid, outcome.sop_instance_uid,
                        outcome.study_instance_uid, outcome.series_instance_uid, outcome.size)


def _io_failure(e: OSError, size: int, described: StoreOutcome | None = None) -> StoreOutcome:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        result, reason = StoreResult.OUT_OF_RESOURCES, "storage full"
    else:
        log.error("storage I/O error: %s", e)
        result, reason = StoreResult.FAILURE, f"storage I/O error: {e.strerror}"
    if described is None:
        return StoreOutcome(result, reason, size=size)
    return _with(described, result, reason)


def _text(ds: Dataset, keyword: str) -> str | None:
    """A string attribute, stripped; None when absent, empty or undecodable."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a bad value counts as absent
        return None
    if value is None:
        return None
    if not isinstance(value, str) and hasattr(value, "__iter__") and not hasattr(value, "family_name"):
        value = "\\".join(str(v) for v in value)  # multi-valued (e.g. ModalitiesInStudy)
    text = str(value).strip().strip("\x00")
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    """An IS/US attribute as int; None when absent or not a number."""
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:  # noqa: BLE001
        return None


def header_uids(header: Header) -> dict[str, str]:
    """The four UIDs every stored object needs, by keyword; InvalidObject if one is
    missing or invalid (ingest and reindex apply the same rule)."""
    uids = {}
    for kw in UID_KEYWORDS:
        value = _text(header.dataset, kw)
        if not value:
            raise InvalidObject(f"missing {kw}")
        if not is_valid_uid(value):
            raise InvalidObject(f"invalid {kw} {value[:70]!r}")
        uids[kw] = value
    return uids


def instance_record(header: Header, uids: dict[str, str], size: int, origin: Origin, *,
                    received_at: float | None = None, file_path: str = "",
                    sha256: str = "") -> InstanceRecord:
    """The index record of a parsed object: one function for ingest and reindex.

    Raises whatever an odd value makes the DICOM JSON conversion raise.
    """
    ds = header.dataset
    # The index columns first: reading them converts those elements in the
    # dataset once, and the DICOM JSON below reuses the converted values.
    text, number = (lambda kw: _text(ds, kw)), (lambda kw: _int(ds, kw))
    text_values = {c.keyword: text(c.keyword) for c in TEXT_COLUMNS if c.keyword not in uids}
    metadata = json.dumps(
        dicomjson.dataset_to_json(ds, pixel_data_vr=header.pixel_data_vr),
        separators=(",", ":"), ensure_ascii=False,
    )
    record = _record(text_values.get, number, uids, header.transfer_syntax_uid, metadata,
                     file_path=file_path, sha256=sha256)
    return with_receipt(record, size, origin, received_at)


def _record(text, number, uids: dict[str, str], transfer_syntax_uid: str, metadata: str, *,
            file_path: str = "", sha256: str = "") -> InstanceRecord:
    """The index record from its column values, however they were read:
    ``text(keyword)`` and ``number(keyword)`` give the string and integer
    columns (None when absent), ``metadata`` is the DICOM JSON text."""
    values = {c.field: uids[c.keyword] if c.keyword in uids else text(c.keyword) for c in TEXT_COLUMNS}
    values.update((c.field, number(c.keyword)) for c in INTEGER_COLUMNS)
    values["patient_id"] = values["patient_id"] or ""
    return InstanceRecord(
        **values,
        transfer_syntax_uid=transfer_syntax_uid,
        file_path=file_path,
        file_size=0,
        sha256=sha256,  # at ingest: filled in once the file is sealed
        received_at=0.0,
        source="",
        calling_aet=None,
        peer=None,
        metadata=metadata,
    )


def with_receipt(record: InstanceRecord, size: int, origin: Origin,
                 received_at: float | None = None, **known: Any) -> InstanceRecord:
    """``record`` with what the receipt, not the header, tells: size, time,
    origin, and any other field already ``known`` (one copy of the record)."""
    return replace(record, file_size=size,
                   received_at=time.time() if received_at is None else received_at,
                   source=origin.source, calling_aet=origin.calling_aet, peer=origin.peer,
                   **known)
