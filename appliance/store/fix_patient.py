"""Fix the patient of a study (issue 16.3): new files, one swap.

Orthanc's study modification, with the patient attributes a clinic corrects
(a study sent under the wrong worklist entry, DCM 113038): every instance is
rewritten with the new PatientName, PatientID, PatientBirthDate, PatientSex
and AccessionNumber, and by default new Study, Series and SOP Instance UIDs
(Orthanc's default: the corrected study is a new object for every system that
has the old one; ``keep_uids`` keeps them, the new files then replace the old
instances).

Crash-safety: the new files' names are listed as doomed (schema
``doomed_files``) before any is placed; each new file goes through the
ingest's own checks (``Archive.sealed_and_checked``: fsynced, walked whole,
header read into its index record) and is renamed into place, still without
a row; then ONE transaction deletes the old rows (listing their files as
doomed), inserts the new ones and takes the new files off the list. A SIGKILL
before that commit leaves the old study alone visible (the new files are
unlinked at the next start), after it the new one alone (the old files are).

Only the header is rewritten: its bytes are patched (appliance.dicomfile.patch:
the replaced elements written anew, the others copied) or, for a header that
cannot be patched so, it is read with pydicom up to the Pixel Data, changed
and written again; the rest of the file (the pixels, and anything after them)
is copied as it is.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from threading import Lock

import pydicom
from pydicom import config as pydicom_config, valuerep
from pydicom.datadict import tag_for_keyword
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from appliance.dicomfile import patch
from appliance.lazyclasses import lazy_dataclass
from appliance.store.archive import Archive, Origin, StoreOutcome, StoreResult
from appliance.store.blobs import BlobStore, IncomingFile
from appliance.store.index import AuditEntry, InstanceRecord, StoredInstance, StudyChanged

log = logging.getLogger(__name__)

# What may be replaced, and the patient column each one is (None: a study attribute).
FIXABLE: dict[str, str | None] = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "AccessionNumber": None,
}
# Their VRs (PS3.6), for the checks of check_changes.
_VR = {"PatientName": "PN", "PatientID": "LO", "PatientBirthDate": "DA", "PatientSex": "CS",
       "AccessionNumber": "SH"}
_ORIGIN = Origin("Modification")
_WORKERS = 8       # rewrites at once: each waits for its fsync most of its time
_CHUNK = 1 << 20
_HEAD = 256 << 10  # enough for any header a scanner writes before its pixels


class ModifyError(Exception):
    """The study could not be fixed; nothing changed (``str(e)`` says why)."""


class ModifyConflict(ModifyError):
    """The study changed while it was being fixed (deleted, fixed by another
    request): nothing changed; look at it again."""


class ModifyNoSpace(ModifyError):
    """The new files do not fit (storage full): nothing changed."""


class InvalidChange(ValueError):
    """What was asked is not a valid change (the message says why, for the user)."""


def check_changes(changes: object) -> dict[str, str]:
    """``changes`` (keyword -> new value) if every key is one of
    :data:`FIXABLE` and every value a valid single value of its VR (PS3.5
    6.2; PatientSex M, F, O or empty, PS3.3 C.7.1.1), else InvalidChange.
    The HTTP endpoint and the command line both check with this."""
    if not isinstance(changes, dict) or not changes:
        raise InvalidChange(f"nothing to replace: give one or more of {', '.join(FIXABLE)}")
    for keyword, value in changes.items():
        if keyword not in FIXABLE:
            raise InvalidChange(f"{keyword!s:.64}: only {', '.join(FIXABLE)} can be replaced")
        if not isinstance(value, str):
            raise InvalidChange(f"{keyword}: expected a string")
        if "\\" in value or any(ord(c) < 32 and c != "\x1b" for c in value):
            raise InvalidChange(f"{keyword}: one value, without backslash or control characters")
        try:
            valuerep.validate_value(_VR[keyword], value, pydicom_config.RAISE)
        except ValueError as e:
            raise InvalidChange(f"{keyword}: {str(e).split(' Please see')[0]}") from None
        if keyword == "PatientSex" and value not in ("", "M", "F", "O"):
            raise InvalidChange("PatientSex: M, F, O or empty")
    if changes.get("PatientID") == "":
        raise InvalidChange("PatientID: the archive files studies by PatientID: give one")
    return changes


@lazy_dataclass(frozen=True)
class Modification:
    """What :func:`modify_study` did."""

    study_instance_uid: str     # the fixed study's (new unless UIDs were kept)
    instances: int
    seconds: float


def modify_study(archive: Archive, study_uid: str, changes: dict[str, str], *,
                 keep_uids: bool, user: str, reason: str = "") -> Modification | None:
    """Rewrite every instance of the study with ``changes`` (keywords of
    :data:`FIXABLE`) and swap the new files in; None when no such study is
    stored. Raises InvalidChange for changes :func:`check_changes` refuses,
    ModifyError (nothing changed) when an instance cannot be rewritten or
    the new study cannot be indexed."""
    started = time.monotonic()
    changes = check_changes(changes)
    rows = archive.instances_in(study_uid)
    if not rows:
        return None
    new_study = study_uid if keep_uids else generate_uid()
    series = {r.series_instance_uid: r.series_instance_uid if keep_uids else generate_uid()
              for r in rows}
    plan = [(row, {"StudyInstanceUID": new_study,
                   "SeriesInstanceUID": series[row.series_instance_uid],
                   "SOPInstanceUID": row.sop_instance_uid if keep_uids else generate_uid()},
             BlobStore.new_id()) for row in rows]
    rels = [BlobStore.relpath(file_id) for _, _, file_id in plan]
    received = archive.index.received_times([row.id for row in rows])
    archive.index.doom_files((rel, row.file_size) for rel, (row, _, _) in zip(rels, plan))
    placed: list[str] = []
    lock = Lock()

    def one(item: tuple[StoredInstance, dict[str, str], str]) -> tuple[InstanceRecord, Path]:
        row, uids, file_id = item
        incoming = archive.new_incoming()
        try:
            try:
                _rewrite(archive.file_of(row), incoming, changes, uids)
            except Exception as e:  # noqa: BLE001 - whatever pydicom raises for this file
                raise ModifyError(f"instance {row.sop_instance_uid} cannot be rewritten: "
                                  f"{type(e).__name__}: {e}") from None
            checked = archive.sealed_and_checked(incoming, _ORIGIN, row.sop_class_uid,
                                                 uids["SOPInstanceUID"], replacing=keep_uids)
            if isinstance(checked, StoreOutcome):
                full = checked.result is StoreResult.OUT_OF_RESOURCES
                raise (ModifyNoSpace if full else ModifyError)(
                    f"instance {row.sop_instance_uid} rewritten is refused: {checked.reason}")
            rel, directory = archive.blobs.adopt(incoming, file_id)
            with lock:
                placed.append(rel)
            # Received when the original was: the disk forecast's ingest rate
            # and recycling's age order do not take a fix for new images.
            return replace(checked[1], file_path=rel, received_at=received[row.id]), directory
        finally:
            incoming.discard()  # a no-op once renamed into place

    audit = AuditEntry(user, "modify", "Study",
                       {"StudyInstanceUID": study_uid, "NewStudyInstanceUID": new_study},
                       reason, len(rows))
    try:
        with ThreadPoolExecutor(_WORKERS, thread_name_prefix="fix-patient") as pool:
            done = list(pool.map(one, plan))
        records = [record for record, _ in done]
        patient = {FIXABLE[k]: getattr(records[0], FIXABLE[k]) for k in changes if FIXABLE[k]}
        patient.pop("patient_id", None)  # the row's key: the row is found by it
        removed, patients = archive.index.swap_instances(
            [row.id for row in rows], records, patient=patient, audit=audit,
            dirs={directory for _, directory in done})
    except BaseException as e:
        archive.blobs.remove_durably(placed)
        archive.index.forget_doomed(rels)
        if isinstance(e, ModifyError):
            raise
        if isinstance(e, StudyChanged):
            raise ModifyConflict(str(e)) from None
        if isinstance(e, Exception):
            raise ModifyError(f"the fixed study could not be indexed: {e}") from e
        raise
    archive.files_removed(removed, bytes_added=sum(r.file_size for r in records),
                          patients_added=patients + removed.patients)
    seconds = time.monotonic() - started
    # Which attributes changed, never their values (patient data stays out of INFO).
    log.info("%s: audit: modify study %s -> %s: %s replaced in %d instance(s), %.2f s", user,
             study_uid, new_study, ", ".join(sorted(changes)), len(rows), seconds)
    return Modification(new_study, len(rows), seconds)


def _rewrite(src: Path, out: IncomingFile, changes: dict[str, str], uids: dict[str, str]) -> None:
    """Write into ``out`` the file ``src`` with ``changes`` and ``uids`` applied:
    its header patched in its bytes (appliance.dicomfile.patch) or, when that
    cannot, rewritten by pydicom; the rest (the pixel data) copied as it is
    (a deflated data set is rewritten whole)."""
    with open(src, "rb") as f:
        patched = patch.patch(f.read(_HEAD), {tag_for_keyword(k): v for k, v in
                                              {**changes, **uids}.items()},
                              uids["SOPInstanceUID"])
        if patched is not None:  # the usual case: the bytes patched, no pydicom
            start, rest_at = patched
            out.write(start)
            f.seek(rest_at)
            while chunk := f.read(_CHUNK):
                out.write(chunk)
            return
        f.seek(0)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        rest_at: int | None = f.tell()
        if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            f.seek(0)
            ds, rest_at = pydicom.dcmread(f), None
        _apply(ds, changes, uids)
        head = BytesIO()
        ds.save_as(head, enforce_file_format=True)
        out.write(head.getbuffer())
        if rest_at is not None:
            f.seek(rest_at)
            while chunk := f.read(_CHUNK):
                out.write(chunk)


def _apply(ds: pydicom.Dataset, changes: dict[str, str], uids: dict[str, str]) -> None:
    if any(not v.isascii() for v in changes.values()) and \
            ds.get("SpecificCharacterSet", "") != "ISO_IR 192":
        # PS3.5 6.1.2.3: one character set for the whole data set: every
        # text value is decoded from the old one, and all are written in UTF-8.
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in {**changes, **uids}.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
    # Group lengths (retired, PS3.5 7.2) would be wrong after the change.
    for tag in [t for t in ds.keys() if t.element == 0]:
        del ds[tag]
