"""The store: the only door to the index and the stored files (docs/DESIGN.md).

Everything outside this package goes through :class:`Archive` and the names
exported here; appliance.store.index and appliance.store.blobs are its
insides.
"""

from __future__ import annotations

from appliance.store.archive import (
    Admission, AdmissionTicket, Archive, Origin, Refusal, StoreOutcome, StoreResult,
)
from appliance.store.adoption import Adopted, OrthancAdoption, Way, settled_readonly
from appliance.store.blobs import IncomingFile
from appliance.store.orthanc import Attachment, NotOrthancIndex
from appliance.store.orthanc import attachment_path as orthanc_attachment_path
from appliance.store.orthanc import index_file as orthanc_index_file
from appliance.store.orthanc import opened as open_orthanc_index
from appliance.store.index import SCHEMA_VERSION, MppsRecord, PatientUsage, StoredInstance

__all__ = [
    "Adopted", "Attachment", "NotOrthancIndex", "OrthancAdoption", "Way", "open_orthanc_index",
    "orthanc_attachment_path", "orthanc_index_file", "settled_readonly",
    "SCHEMA_VERSION", "Admission", "AdmissionTicket", "Archive", "IncomingFile", "MppsRecord",
    "Origin", "PatientUsage", "Refusal", "StoreOutcome", "StoreResult", "StoredInstance",
]
