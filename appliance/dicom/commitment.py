"""Storage Commitment Push Model (PS3.4 J), both halves of our SCP role.

1. :class:`CommitmentScp.n_action`: the scanner's N-ACTION (Action Type 1,
   "Request Storage Commitment", PS3.4 J.3.2) is checked, persisted in the
   durable send queue (``archive.outbox.commitment``), and only then answered
   Success: a crash after the N-ACTION-RSP still yields the report.
2. :func:`send_report`: the N-EVENT-REPORT (PS3.4 J.3.3) the outbound engine
   sends once it has checked each referenced instance
   (``Archive.commitment_problem``: row, SOP class, size and SHA-256 of its
   file). As Orthanc does, and as GE scanners require, the report travels on a
   NEW association we request to the scanner as declared in DicomModalities,
   proposing the SOP class with SCP/SCU Role Selection (we take the SCP role,
   PS3.7 D.3.3.4) in Explicit and Implicit VR Little Endian.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel
from pynetdicom.status import code_to_category

from appliance.dicom.policy import AccessPolicy, Service
from appliance.dicom.requestor import pause_reactor, request_association
from appliance.dicom.sender import Destination
from appliance.dicom.status import CommitmentStatus, FailureReason
from appliance.dicomfile import syntax
from appliance.store import Archive

log = logging.getLogger(__name__)

# PS3.4 J.3.5: the well-known SOP Instance of the Storage Commitment Push Model.
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1     # Action Type ID, PS3.4 J.3.2.1
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type ID, PS3.4 J.3.3.1

_CHECKERS = min(4, os.cpu_count() or 1)
# Archive.commitment_problem -> Failure Reason (PS3.4 J.3.3.1.1.2).
_REASONS = {"missing": FailureReason.NO_SUCH_OBJECT_INSTANCE,
            "class": FailureReason.CLASS_INSTANCE_CONFLICT,
            "damaged": FailureReason.PROCESSING_FAILURE}


#: The one SOP class of the service (PS3.4 J.3), as the server declares it.
STORAGE_COMMITMENT_PUSH_MODEL = str(StorageCommitmentPushModel)


class CommitmentScp:
    """Answers N-ACTION requests for storage commitment."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def n_action(self, event, *, policy: AccessPolicy, host: str, peer: str,
                 calling: str) -> tuple[int, Dataset | None]:
        """N-ACTION (PS3.4 J.3.2): (status, no reply)."""
        req = event.request
        if str(req.RequestedSOPClassUID) != StorageCommitmentPushModel:
            log.warning("%s: N-ACTION from %s for SOP class %s refused: not supported", peer,
                        calling, req.RequestedSOPClassUID)
            return CommitmentStatus.NO_SUCH_ACTION_TYPE, None
        if req.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            log.warning("%s: storage commitment from %s: action type %s refused", peer, calling,
                        req.ActionTypeID)
            return CommitmentStatus.NO_SUCH_ACTION_TYPE, None
        modality = policy.modality_for(calling, host)
        if not policy.allows(Service.STORAGE_COMMITMENT, calling, host) or modality is None:
            # The report goes to the AE's DicomModalities entry: without one, nowhere.
            log.warning("%s: storage commitment from %s refused: %s", peer, calling,
                        "not declared in DicomModalities" if modality is None
                        else "AllowStorageCommitment is false")
            return CommitmentStatus.REFUSED_NOT_AUTHORIZED, None
        try:
            info = event.action_information
            transaction = str(info.TransactionUID)
            references = [[str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)]
                          for item in info.ReferencedSOPSequence]
        except Exception as e:  # noqa: BLE001 - a peer's malformed request, whatever pydicom raises
            log.warning("%s: storage commitment from %s: unusable request: %s: %s", peer, calling,
                        type(e).__name__, str(e)[:200])
            return CommitmentStatus.MISSING_ATTRIBUTE, None
        payload = json.dumps({"transaction_uid": transaction, "references": references,
                              "calling_aet": calling, "peer": peer})
        try:
            self.archive.outbox.commitment(modality.name, transaction, payload)
        except Exception as e:  # noqa: BLE001 - not persisted: the scanner must not delete
            log.error("%s: storage commitment from %s not recorded: %s", peer, calling, e)
            return CommitmentStatus.PROCESSING_FAILURE, None
        log.info("%s: storage commitment from %s: %d reference(s) accepted, report to %s",
                 peer, calling, len(references), modality.name)
        return CommitmentStatus.SUCCESS, None


def evaluate(archive: Archive, payload: str) -> tuple[str, list[tuple[str, str]],
                                                      list[tuple[str, str, int]]]:
    """(Transaction UID, committed (class, uid), failed (class, uid, reason)) of a
    persisted request, each reference checked against the archive now."""
    request = json.loads(payload)
    references = request["references"]
    committed, failed = [], []
    # Each check hashes a whole file: hashlib releases the GIL, so a few threads
    # use every core (200 references of 0.92 MB are 184 MB to read and hash).
    with ThreadPoolExecutor(max_workers=_CHECKERS) as pool:
        problems = list(pool.map(lambda ref: archive.commitment_problem(ref[1], ref[0]), references))
    for (sop_class, sop_uid), problem in zip(references, problems):
        if problem is None:
            committed.append((sop_class, sop_uid))
        else:
            failed.append((sop_class, sop_uid, int(_REASONS[problem])))
    return request["transaction_uid"], committed, failed


def _report(transaction_uid: str, committed, failed) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if committed:
        ds.ReferencedSOPSequence = [_reference(c, u) for c, u in committed]
    if failed:
        items = []
        for sop_class, sop_uid, reason in failed:
            item = _reference(sop_class, sop_uid)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def _reference(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def send_report(dest: Destination, transaction_uid: str, committed: list[tuple[str, str]],
                failed: list[tuple[str, str, int]]) -> str | None:
    """Send the N-EVENT-REPORT of one transaction on a new association; None once the
    scanner answered Success, else why not (the queue retries). Blocking."""
    ae = AE(ae_title=dest.calling_aet)
    ae.add_requested_context(StorageCommitmentPushModel, [syntax.EXPLICIT_LE, syntax.IMPLICIT_LE])
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout
    # PS3.4 J.3.3 / PS3.7 D.3.3.4: the association requester here is the SCP of the
    # SOP class; it proposes the SCP role only.
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    assoc, why = request_association(ae, dest.host, dest.port, dest.called_aet, ext_neg=[role])
    if why:
        return why
    try:
        if not assoc.accepted_contexts:
            return "storage commitment context not accepted"
        event_type = SOME_FAILED if failed else ALL_COMMITTED
        if not pause_reactor(assoc):   # else its reactor may take the response
            return "the scanner aborted or closed the association"
        rsp, _ = assoc.send_n_event_report(_report(transaction_uid, committed, failed), event_type,
                                           StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
    finally:
        if assoc.is_established:
            assoc.release()
    status = rsp.get("Status") if rsp is not None else None
    if status is None:
        return "no N-EVENT-REPORT response"
    if code_to_category(int(status)) == "Failure":
        return f"N-EVENT-REPORT answered 0x{int(status):04X}"
    return None
