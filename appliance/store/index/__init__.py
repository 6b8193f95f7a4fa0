"""The SQLite index (apsw) of the archive, split by concern, one calling style.

- :mod:`.schema`: tables, migrations, summaries kept on rows;
- :mod:`.engine`: connections, the writer thread and its group commit;
- :mod:`.instances`: instances and their parents (insert, delete, read);
- :mod:`.search`: searches (appliance.query) compiled to SQL;
- :mod:`.retrieve`: the instances a C-MOVE or C-GET names;
- :mod:`.mpps`: Modality Performed Procedure Steps;
- :mod:`.removals`: deletes, the swap of a fixed study, doomed files, audit;
- :mod:`.queue`: the outbound queue and the StableStudy debounce;
- :mod:`.maintenance`: recycling, backups, reindex; :class:`Snapshot` for a
  database that is not the live one;
- :mod:`.adopted`: the progress of an Orthanc archive's adoption.

Every operation is a method of :class:`Index` (``index.find_instance(uid)``,
``index.search(search)``, ``index.mpps_get(uid)``). Only appliance.store
uses this package: the rest of the appliance goes through the Archive.
"""

from __future__ import annotations

from appliance.store.index.adopted import Adopted, AdoptionMark, Superseded
from appliance.store.index.engine import Engine, IndexError_
from appliance.store.index.instances import (
    InsertOutcome, Instances, InstanceRecord, StoredInstance,
)
from appliance.store.index.maintenance import COUNT_NAMES, Maintenance, PatientUsage, Snapshot
from appliance.store.index.mpps import Mpps, MppsRecord
from appliance.store.index.removals import AuditEntry, Removals, Removed, StudyChanged
from appliance.store.index.queue import Forward, Outbox, QueueItem, Settled, UnknownResources
from appliance.store.index.schema import DB_NAME, MIGRATIONS, QIDO_KEPT, SCHEMA_VERSION
from appliance.store.index.retrieve import Retrieves
from appliance.store.index.search import Searches

__all__ = [
    "AdoptionMark", "AuditEntry", "Removed", "StudyChanged", "Superseded", "COUNT_NAMES", "DB_NAME", "MIGRATIONS", "QIDO_KEPT", "SCHEMA_VERSION", "Index", "IndexError_",
    "InsertOutcome", "InstanceRecord", "MppsRecord", "PatientUsage", "Snapshot", "StoredInstance",
    "Forward", "QueueItem", "Settled", "UnknownResources",
]


class Index(Engine, Instances, Searches, Retrieves, Mpps, Maintenance, Removals, Outbox,
            Adopted):
    """The SQLite index of the archive: the engine and every operation on it.

    ``sync_dirs`` is called by the writer thread with the directories a batch
    of jobs renamed files into, just before the batch commits, so a row is
    never durable before the file it names.
    """
