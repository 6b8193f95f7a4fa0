"""Modality Performed Procedure Step (PS3.4 F.7): the state machine, storage and the link
to the worklist item a procedure step performs.

A scanner creates a step with N-CREATE (state IN PROGRESS) when it starts an exam and ends it
with N-SET to COMPLETED or DISCONTINUED (PS3.4 F.1.2, Table F.1-4); a final step cannot
change any more. Each step is stored in the index (``mpps`` table, attributes as DICOM
JSON) and linked to the worklist item it names in its Scheduled Step Attributes Sequence (by
Study Instance UID, else Accession Number, else Requested Procedure ID). When a linked step
ends, the item stops being answered and its file moves to the worklist folder's ``archive``
sub-folder (``Mpps.ArchiveFinishedWorklists``).

Runs on pynetdicom's association threads; everything here is thread-safe (the index
serialises writes; the worklist folder's ``take_out`` is thread-safe).
"""

from __future__ import annotations

import enum
import json
import logging
import time

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance.dicom.status import MppsStatus
from appliance.dicomfile.dicomjson import dataset_to_json
from appliance.dicomfile.vr import is_valid_uid
from appliance.lazyclasses import lazy_dataclass
from appliance.store import Archive, MppsRecord
from appliance.worklist.source import WorklistFolder

log = logging.getLogger(__name__)


class State(str, enum.Enum):
    """Performed Procedure Step Status (0040,0252) values (PS3.4 Table F.1-3)."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"

    @property
    def final(self) -> bool:
        """COMPLETED and DISCONTINUED end the step (PS3.4 Table F.1-4)."""
        return self is not State.IN_PROGRESS


# PS3.4 F.7.2.2.4: the specific error of an N-SET on a step that is no longer IN PROGRESS.
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"
NO_LONGER_UPDATABLE_ERROR_ID = 0xA710

_STATUS = 0x00400252
_SCHEDULED_STEP_ATTRIBUTES = 0x00400270
_SPECIFIC_CHARACTER_SET = 0x00080005
# PS3.4 Table F.7.2-1: attributes the SCU must give a value in N-CREATE (type 1).
REQUIRED_ON_CREATE = (
    (0x00400252, "PerformedProcedureStepStatus"),
    (0x00400253, "PerformedProcedureStepID"),
    (0x00400241, "PerformedStationAETitle"),
    (0x00400244, "PerformedProcedureStepStartDate"),
    (0x00400245, "PerformedProcedureStepStartTime"),
    (0x00080060, "Modality"),
    (0x00400270, "ScheduledStepAttributesSequence"),
)
# PS3.4 Table F.7.2-1: "Not allowed" in N-SET (what identifies the step, the patient and
# the scheduled work it performs cannot change once created).
NOT_ALLOWED_IN_SET = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00400270: "ScheduledStepAttributesSequence",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x00081120: "ReferencedPatientSequence",
    0x00400253: "PerformedProcedureStepID",
    0x00400241: "PerformedStationAETitle",
    0x00400242: "PerformedStationName",
    0x00400243: "PerformedLocation",
    0x00400244: "PerformedProcedureStepStartDate",
    0x00400245: "PerformedProcedureStepStartTime",
    0x00080060: "Modality",
    0x00200010: "StudyID",
}


@lazy_dataclass(frozen=True)
class Outcome:
    """The answer to one N-CREATE or N-SET."""

    status: MppsStatus
    sop_instance_uid: str = ""
    comment: str = ""  # Error Comment (0000,0902), at most 64 characters
    error_id: int | None = None  # Error ID (0000,0903)
    tags: tuple[int, ...] = ()  # the attributes at fault (Attribute Identifier List)

    @property
    def ok(self) -> bool:
        return self.status == MppsStatus.SUCCESS


def _json_of(ds: Dataset) -> dict:
    # Text is decoded with the request's character set; JSON keeps it as Unicode, so steps
    # written in different character sets merge without conversion (PS3.4 F.7.2.2.3).
    return dataset_to_json(ds)


def _first(attrs: dict, key: str) -> str:
    value = attrs.get(key, {}).get("Value") or [""]
    return str(value[0]).strip() if value[0] is not None else ""


def _required(attrs: dict) -> Outcome | None:
    for tag, keyword in REQUIRED_ON_CREATE:
        element = attrs.get(f"{tag:08X}")
        if element is None:
            return Outcome(MppsStatus.MISSING_ATTRIBUTE, comment=f"{keyword} missing"[:64], tags=(tag,))
        if not element.get("Value"):
            return Outcome(MppsStatus.MISSING_ATTRIBUTE_VALUE, comment=f"{keyword} empty"[:64], tags=(tag,))
    return None


def _state(value: str, tag: int = _STATUS) -> State | Outcome:
    try:
        return State(value)
    except ValueError:
        return Outcome(MppsStatus.INVALID_ATTRIBUTE_VALUE,
                       comment=f"PerformedProcedureStepStatus {value[:20]!r} unknown", tags=(tag,))


def _scheduled_keys(attrs: dict) -> dict[str, str]:
    items = attrs.get(f"{_SCHEDULED_STEP_ATTRIBUTES:08X}", {}).get("Value") or [{}]
    item = items[0] or {}
    return {
        "study_instance_uid": _first(item, "0020000D"),
        "accession_number": _first(item, "00080050"),
        "requested_procedure_id": _first(item, "00401001"),
        "scheduled_procedure_step_id": _first(item, "00400009"),
    }


class MppsManager:
    """Creates and updates procedure steps; closes the worklist items they perform."""

    def __init__(self, archive: Archive, worklists: WorklistFolder | None, *,
                 archive_finished_worklists: bool) -> None:
        self.archive = archive
        self.worklists = worklists
        self.archive_finished_worklists = archive_finished_worklists

    def _link(self, keys: dict[str, str]) -> str | None:
        if self.worklists is None:
            return None
        item = self.worklists.current().linked(keys["study_instance_uid"], keys["accession_number"],
                                               keys["requested_procedure_id"])
        return item.name if item else None

    def create(self, sop_instance_uid: str | None, attributes: Dataset, *, calling_aet: str,
               peer: str) -> Outcome:
        """N-CREATE (PS3.4 F.7.2.1): a new step, IN PROGRESS; the SCP assigns the SOP
        Instance UID when the request has none (PS3.7 10.1.5.1.3)."""
        uid = (sop_instance_uid or "").strip(" \0") or generate_uid()
        if not is_valid_uid(uid):
            return Outcome(MppsStatus.INVALID_OBJECT_INSTANCE, comment="not a valid SOP Instance UID")
        try:
            attrs = _json_of(attributes)
        except Exception as e:  # noqa: BLE001 - pydicom's many decoding errors
            log.warning("%s: MPPS N-CREATE from %s: attribute list not decodable: %s", peer,
                        calling_aet, e)
            return Outcome(MppsStatus.PROCESSING_FAILURE, uid, "attribute list not decodable")
        problem = _required(attrs)
        if problem is None:
            state = _state(_first(attrs, f"{_STATUS:08X}"))
            if isinstance(state, Outcome):
                problem = state
            elif state is not State.IN_PROGRESS:  # PS3.4 F.7.2.1.3
                problem = Outcome(MppsStatus.INVALID_ATTRIBUTE_VALUE,
                                  comment="N-CREATE status must be IN PROGRESS", tags=(_STATUS,))
        if problem is not None:
            log.warning("%s: MPPS N-CREATE from %s refused: %s", peer, calling_aet, problem.comment)
            return Outcome(problem.status, uid, problem.comment, problem.error_id, problem.tags)
        keys = _scheduled_keys(attrs)
        item = self._link(keys)
        now = time.time()
        record = MppsRecord(sop_instance_uid=uid, status=State.IN_PROGRESS.value,
                            **{k: v or None for k, v in keys.items()}, worklist_item=item,
                            calling_aet=calling_aet, peer=peer, created_at=now, updated_at=now,
                            dataset=json.dumps(attrs, ensure_ascii=False))
        if not self.archive.mpps_insert(record):
            log.warning("%s: MPPS N-CREATE from %s refused: %s exists", peer, calling_aet, uid)
            return Outcome(MppsStatus.DUPLICATE_SOP_INSTANCE, uid, "SOP Instance exists")
        log.info("%s: MPPS %s from %s: IN PROGRESS, %s", peer, uid, calling_aet,
                 "linked to a worklist item" if item else "no worklist item found",
                 extra={"MPPS_UID": uid, "CALLING_AET": calling_aet})
        return Outcome(MppsStatus.SUCCESS, uid)

    def update(self, sop_instance_uid: str, modifications: Dataset, *, calling_aet: str,
               peer: str) -> Outcome:
        """N-SET (PS3.4 F.7.2.2): change a step that is still IN PROGRESS."""
        uid = (sop_instance_uid or "").strip(" \0")
        try:
            changes = _json_of(modifications)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: MPPS N-SET from %s: modification list not decodable: %s", peer,
                        calling_aet, e)
            return Outcome(MppsStatus.PROCESSING_FAILURE, uid, "modification list not decodable")
        refused = tuple(int(key, 16) for key in changes if int(key, 16) in NOT_ALLOWED_IN_SET)
        if refused:
            names = ", ".join(NOT_ALLOWED_IN_SET[t] for t in refused)
            log.warning("%s: MPPS N-SET from %s on %s refused: %s may not be set", peer,
                        calling_aet, uid, names)
            return Outcome(MppsStatus.INVALID_ATTRIBUTE_VALUE, uid,
                           f"not allowed in N-SET: {names}"[:64], tags=refused)
        new_state: State | None = None
        if f"{_STATUS:08X}" in changes:
            value = _first(changes, f"{_STATUS:08X}")
            if not value:
                return Outcome(MppsStatus.MISSING_ATTRIBUTE_VALUE, uid,
                               "PerformedProcedureStepStatus empty", tags=(_STATUS,))
            state = _state(value)
            if isinstance(state, Outcome):
                return Outcome(state.status, uid, state.comment, tags=state.tags)
            new_state = state
        # PS3.4 F.7.2.2.3: the Specific Character Set of an N-SET does not replace the
        # step's; the JSON form is Unicode anyway.
        changes.pop(f"{_SPECIFIC_CHARACTER_SET:08X}", None)
        for _attempt in range(5):  # optimistic: retry if another N-SET won the race
            current = self.archive.mpps_get(uid)
            if current is None:
                log.warning("%s: MPPS N-SET from %s: no such step %s", peer, calling_aet, uid)
                return Outcome(MppsStatus.NO_SUCH_SOP_INSTANCE, uid, "no such MPPS instance")
            if State(current.status).final:  # PS3.4 F.7.2.2.3
                log.warning("%s: MPPS N-SET from %s on %s refused: already %s", peer,
                            calling_aet, uid, current.status)
                return Outcome(MppsStatus.PROCESSING_FAILURE, uid, NO_LONGER_UPDATABLE,
                               NO_LONGER_UPDATABLE_ERROR_ID)
            attrs = json.loads(current.dataset)
            attrs.update(changes)  # a sequence is replaced whole, as the SCU sends it whole
            state = new_state or State(current.status)
            item = current.worklist_item
            if item is None and state.final:
                item = self._link(_scheduled_keys(attrs))  # the item may have come later
            if self.archive.mpps_update(current, status=state.value,
                           dataset=json.dumps(dict(sorted(attrs.items())), ensure_ascii=False),
                           worklist_item=item, now=max(time.time(), current.updated_at + 1e-6)):
                break
        else:
            return Outcome(MppsStatus.PROCESSING_FAILURE, uid, "concurrent updates; retry")
        if state.final:
            log.info("%s: MPPS %s from %s: %s", peer, uid, calling_aet, state.value,
                     extra={"MPPS_UID": uid, "CALLING_AET": calling_aet})
            self._close(item)
        return Outcome(MppsStatus.SUCCESS, uid)

    def _close(self, item: str | None) -> None:
        if item is None or self.worklists is None or not self.archive_finished_worklists:
            return
        archived = self.worklists.take_out(item, archive=True)
        log.debug("worklist item %s performed: %s", item,
                  f"archived as {archived}" if archived else "no longer answered")

