"""The store: the only door to the index and the stored files (docs/DESIGN.md).

Everything outside this package goes through :class:`Archive` and the names
exported here; appliance.store.index and appliance.store.blobs are its
insides.
"""

from __future__ import annotations

from appliance.store.archive import (
    Admission, AdmissionTicket, Archive, Deletion, Origin, Refusal, StoreOutcome, StoreResult,
)
from appliance.store.adoption import Adopted, OrthancAdoption, Way, settled_readonly
from appliance.store.blobs import IncomingFile
from appliance.store.fix_patient import (
    FIXABLE, InvalidChange, Modification, ModifyConflict, ModifyError, ModifyNoSpace,
    check_changes,
)
from appliance.store.orthanc import Attachment, NotOrthancIndex
from appliance.store.orthanc import attachment_path as orthanc_attachment_path
from appliance.store.orthanc import index_file as orthanc_index_file
from appliance.store.orthanc import opened as open_orthanc_index
from appliance.store.index import (
    SCHEMA_VERSION, AuditEntry, Forward, MppsRecord, PatientUsage, QueueItem, Settled,
    StoredInstance, UnknownResources,
)
from appliance.store.outbox import Outbox, open_outbox

__all__ = [
    "Adopted", "Attachment", "NotOrthancIndex", "OrthancAdoption", "Way", "open_orthanc_index",
    "orthanc_attachment_path", "orthanc_index_file", "settled_readonly",
    "FIXABLE", "SCHEMA_VERSION", "Admission", "AuditEntry", "Deletion", "Modification",
    "InvalidChange", "ModifyConflict", "ModifyError", "ModifyNoSpace", "check_changes", "AdmissionTicket", "Archive", "IncomingFile", "MppsRecord",
    "Origin", "PatientUsage", "Refusal", "StoreOutcome", "StoreResult", "StoredInstance",
    "Forward", "Outbox", "QueueItem", "Settled", "UnknownResources", "open_outbox",
]
