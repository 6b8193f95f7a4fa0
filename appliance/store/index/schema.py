"""The index's schema: tables, migrations, and the summaries kept on rows.

MIGRATIONS[n] upgrades schema version n to n+1 (PRAGMA user_version).
"""

from __future__ import annotations

DB_NAME = "pacs-appliance.sqlite"

_SCHEMA_V1 = """
CREATE TABLE patients (
    id                  INTEGER PRIMARY KEY,
    -- Orthanc identifies a patient by PatientID alone; '' when absent.
    patient_id          TEXT NOT NULL UNIQUE,
    patient_name        TEXT,
    patient_birth_date  TEXT,
    patient_sex         TEXT,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL
);
CREATE TABLE studies (
    id                       INTEGER PRIMARY KEY,
    patient_pk               INTEGER NOT NULL REFERENCES patients(id),
    study_instance_uid       TEXT NOT NULL UNIQUE,
    study_date               TEXT,
    study_time               TEXT,
    accession_number         TEXT,
    study_description        TEXT,
    referring_physician_name TEXT,
    study_id                 TEXT,
    created_at               REAL NOT NULL,
    updated_at               REAL NOT NULL
);
CREATE INDEX studies_patient ON studies(patient_pk);
CREATE INDEX studies_date ON studies(study_date);
CREATE INDEX studies_accession ON studies(accession_number);
CREATE TABLE series (
    id                   INTEGER PRIMARY KEY,
    study_pk             INTEGER NOT NULL REFERENCES studies(id),
    series_instance_uid  TEXT NOT NULL UNIQUE,
    modality             TEXT,
    series_number        INTEGER,
    series_description   TEXT,
    created_at           REAL NOT NULL,
    updated_at           REAL NOT NULL
);
CREATE INDEX series_study ON series(study_pk);
CREATE TABLE instances (
    id                      INTEGER PRIMARY KEY,
    series_pk               INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid        TEXT NOT NULL UNIQUE,
    sop_class_uid           TEXT NOT NULL,
    instance_number         INTEGER,
    number_of_frames        INTEGER,
    rows                    INTEGER,
    columns                 INTEGER,
    transfer_syntax_uid     TEXT NOT NULL,
    specific_character_set  TEXT,
    file_path               TEXT NOT NULL UNIQUE,
    file_size               INTEGER NOT NULL,
    sha256                  TEXT NOT NULL,
    received_at             REAL NOT NULL,
    source                  TEXT NOT NULL,
    calling_aet             TEXT,
    peer                    TEXT,
    -- DICOM JSON (PS3.18 F) without bulk data, written at ingest so that
    -- WADO-RS metadata needs no file reads.
    metadata                TEXT NOT NULL
);
CREATE INDEX instances_series ON instances(series_pk);
CREATE INDEX instances_received ON instances(received_at);
"""

# v2: indexes for QIDO-RS matching, and Modality Performed Procedure Steps.
_SCHEMA_V2 = """
CREATE INDEX patients_name ON patients(patient_name COLLATE NOCASE);
CREATE INDEX studies_patient_date ON studies(study_date, study_time);
CREATE INDEX series_modality ON series(modality);
CREATE TABLE mpps (
    id                           INTEGER PRIMARY KEY,
    sop_instance_uid             TEXT NOT NULL UNIQUE,
    -- PS3.4 F.7.2.1: IN PROGRESS, then COMPLETED or DISCONTINUED (final)
    status                       TEXT NOT NULL,
    study_instance_uid           TEXT,
    accession_number             TEXT,
    requested_procedure_id       TEXT,
    scheduled_procedure_step_id  TEXT,
    worklist_item                TEXT,   -- the .wl file it was linked to, if any
    calling_aet                  TEXT,
    peer                         TEXT,
    created_at                   REAL NOT NULL,
    updated_at                   REAL NOT NULL,
    dataset                      TEXT NOT NULL   -- DICOM JSON of the step's attributes
);
CREATE INDEX mpps_study ON mpps(study_instance_uid);
CREATE INDEX mpps_accession ON mpps(accession_number);
"""

# What a study row keeps of its series (PS3.4 C.3.4 NumberOfStudyRelatedSeries,
# NumberOfStudyRelatedInstances, ModalitiesInStudy), worked out from the series
# rows: SET clause of an UPDATE on studies. group_concat order is unspecified:
# readers sort the modalities.
_STUDY_SUMMARY = """
    number_of_series = (SELECT count(*) FROM series WHERE study_pk = studies.id),
    number_of_instances = (SELECT coalesce(sum(number_of_instances), 0) FROM series
                           WHERE study_pk = studies.id),
    modalities = (SELECT group_concat(DISTINCT modality) FROM series WHERE study_pk = studies.id)"""

# Attributes QIDO-RS returns at the study or series level by default or for
# includefield=all that are not columns (PS3.18 10.6.3.3, PS3.4 C.6.1.1.2-4),
# kept on the study/series row as DICOM JSON taken from its representative
# instance (its first stored, _REPRESENTATIVE_OF): reading them from that
# instance's whole metadata cost a JSON parse of every instance of a page.
# Other attributes still come from the representative's metadata. Changing
# these lists needs a migration that recomputes the attributes columns.
QIDO_KEPT: dict[str, tuple[int, ...]] = {
    "study": (
        0x00080201,  # TimezoneOffsetFromUTC
        0x00100021,  # IssuerOfPatientID
        0x00101000,  # OtherPatientIDs
        0x00101010,  # PatientAge
        0x00101020,  # PatientSize
        0x00101030,  # PatientWeight
        0x00104000,  # PatientComments
        0x00081060,  # NameOfPhysiciansReadingStudy
        0x00081080,  # AdmittingDiagnosesDescription
    ),
    "series": (
        0x00080201,  # TimezoneOffsetFromUTC
        0x00400244,  # PerformedProcedureStepStartDate
        0x00400245,  # PerformedProcedureStepStartTime
        0x00400275,  # RequestAttributesSequence
        0x00080021,  # SeriesDate
        0x00080031,  # SeriesTime
        0x00180015,  # BodyPartExamined
        0x00200060,  # Laterality
        0x00181030,  # ProtocolName
        0x00081050,  # PerformingPhysicianName
        0x00081070,  # OperatorsName
        0x00081010,  # StationName
        0x00080080,  # InstitutionName
        0x00080070,  # Manufacturer
        0x00081090,  # ManufacturerModelName
    ),
}
# The representative instance of a study or series row (alias st / se, or the
# table name in an UPDATE of that table): the first stored. New rows always
# get a larger id than every existing one, so only a delete can change it.
_REPRESENTATIVE_OF = {
    "study": "(SELECT min(ri.id) FROM series rse JOIN instances ri ON ri.series_pk = rse.id "
             "WHERE rse.study_pk = {row}.id)",
    "series": "(SELECT min(ri.id) FROM instances ri WHERE ri.series_pk = {row}.id)",
}


def _kept_attributes(level: str, table: str) -> str:
    """SET clause of an UPDATE on ``table`` (studies or series): its QIDO_KEPT
    attributes, as a JSON object, from its representative instance's metadata."""
    keys = ", ".join(f"'{tag:08X}'" for tag in QIDO_KEPT[level])
    representative = _REPRESENTATIVE_OF[level].format(row=table)
    return (f"attributes = (SELECT json_group_object(je.key, json(je.value)) "
            f"FROM instances ai, json_each(ai.metadata) je "
            f"WHERE ai.id = {representative} AND je.key IN ({keys}))")


# v3: what QIDO-RS returns of a study or series that is not an attribute of
# its row (counts, modalities, attributes from its first instance), kept on the
# row by the writer at insert and delete, so a page of search results costs no
# per-row subqueries over the series and instances. Existing rows are filled
# in here.
_SCHEMA_V3 = f"""
ALTER TABLE series ADD COLUMN number_of_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE series ADD COLUMN attributes TEXT;
ALTER TABLE studies ADD COLUMN number_of_series INTEGER NOT NULL DEFAULT 0;
ALTER TABLE studies ADD COLUMN number_of_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE studies ADD COLUMN modalities TEXT;
ALTER TABLE studies ADD COLUMN attributes TEXT;
UPDATE series SET number_of_instances =
    (SELECT count(*) FROM instances WHERE series_pk = series.id),
    {_kept_attributes("series", "series")};
UPDATE studies SET {_STUDY_SUMMARY}, {_kept_attributes("study", "studies")};
"""

# Deletes and patient fixes (issue 16): the stored files whose removal is
# owed, and the audit trail of who deleted or changed what.
#
# doomed_files: a file listed here must go. A delete lists the files of the
# rows it removes in the same transaction; a fix-patient lists its new files
# before placing them and takes them off in the transaction that swaps them
# in. Files are unlinked after the commit, then the rows removed; at start
# whatever is still listed (a crash in between) is unlinked, so a crash at
# any moment leaves no orphan file and no row without its file.
_SCHEMA_DELETE = """
CREATE TABLE doomed_files (
    file_path  TEXT PRIMARY KEY,
    file_size  INTEGER NOT NULL,
    since      REAL NOT NULL
);
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY,
    time       REAL NOT NULL,
    user       TEXT NOT NULL,     -- the HTTP user, "cli", "recycling"
    action     TEXT NOT NULL,     -- delete | modify
    level      TEXT NOT NULL,     -- Patient | Study | Series | Instance
    uids       TEXT NOT NULL,     -- JSON object: the UIDs named (and the new ones)
    reason     TEXT NOT NULL,
    instances  INTEGER NOT NULL
);
CREATE INDEX audit_time ON audit(time);
"""

# The outbound queue (issue 13): what is to be sent where, kept in the index so
# that an enqueue commits with the instance row that triggers it and survives
# any crash. send_tasks are the requests (send on demand, a storage commitment
# report); send_items one instance (or one report) to one destination each,
# task_id NULL when a forwarding rule made it. stable_waiting/stable_due are the
# persisted StableStudy debounce: instances waiting for their study to be
# quiet, and when it will be.
_SCHEMA_QUEUE = """
CREATE TABLE send_tasks (
    id            INTEGER PRIMARY KEY,
    destination   TEXT NOT NULL,
    kind          TEXT NOT NULL,      -- 'store' | 'commitment'
    origin        TEXT NOT NULL,      -- 'request' | 'commitment'
    created_at    REAL NOT NULL,
    payload       TEXT                -- commitment: the N-ACTION request as JSON
);
CREATE TABLE send_items (
    id                  INTEGER PRIMARY KEY,
    task_id             INTEGER REFERENCES send_tasks(id),
    destination         TEXT NOT NULL,
    kind                TEXT NOT NULL,      -- 'store' | 'commitment'
    origin              TEXT NOT NULL,      -- 'Instance' | 'StableStudy' | 'request' | 'commitment'
    study_instance_uid  TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,      -- commitment: the Transaction UID
    state               TEXT NOT NULL,      -- 'pending' | 'sent' | 'dropped' | 'cancelled'
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     REAL NOT NULL,
    last_error          TEXT,
    bytes               INTEGER NOT NULL DEFAULT 0,
    created_at          REAL NOT NULL,
    done_at             REAL
);
CREATE INDEX send_items_due ON send_items(state, destination, next_attempt_at);
CREATE INDEX send_items_task ON send_items(task_id);
CREATE TABLE stable_waiting (
    destination         TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,
    PRIMARY KEY (destination, study_instance_uid, sop_instance_uid)
) WITHOUT ROWID;
CREATE TABLE stable_due (
    destination         TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    due_at              REAL NOT NULL,
    PRIMARY KEY (destination, study_instance_uid)
) WITHOUT ROWID;
CREATE INDEX stable_due_at ON stable_due(due_at);
"""


# Adoption of an Orthanc archive in place (appliance/store/adoption.py): one
# row per Orthanc DICOM attachment seen, keyed by Orthanc's attachment uuid,
# written in the same transaction as the instance row it produced, so a crash
# leaves both or neither and a restart goes on where it stopped. ``outcome``:
# linked (a hard link to Orthanc's file), referenced (no link possible: the
# instance row names ``orthanc:<uuid>``), copied (earlier versions' fallback),
# decompressed (Orthanc's zlib attachment written out once), duplicate (the
# instance was already here), unreadable (retried at every pass). ``verified``:
# 0 while the MD5 Orthanc recorded is still to be compared (after the pass).
_SCHEMA_ADOPTION = """
CREATE TABLE orthanc_adopted (
    uuid              TEXT PRIMARY KEY,
    orthanc_instance  TEXT,
    sop_instance_uid  TEXT,
    outcome           TEXT NOT NULL,
    bytes             INTEGER NOT NULL,
    reason            TEXT,
    adopted_at        REAL NOT NULL,
    verified          INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;
CREATE INDEX orthanc_adopted_unverified ON orthanc_adopted(verified) WHERE verified = 0;
"""

# The outbound queue's order per study (issue 13): finding the failing items that
# hold back the later items of their study (queue._HELD_BY) must not scan the
# queue; only failing items are indexed, so the index stays small.
_SCHEMA_QUEUE_ORDER = """
CREATE INDEX send_items_failing ON send_items(destination, study_instance_uid, id)
    WHERE state = 'pending' AND attempts > 0;
"""

# MIGRATIONS[n] upgrades schema version n to n+1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_DELETE, _SCHEMA_QUEUE,
                                _SCHEMA_ADOPTION, _SCHEMA_QUEUE_ORDER)
SCHEMA_VERSION = len(MIGRATIONS)
