"""Store tests, plus what the index tests share with the QIDO ones: instance
records without files, and an index file of the previous schema (v2) written the
way that release wrote it, for migration tests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import apsw

from appliance.store.index import DB_NAME, MIGRATIONS, InstanceRecord

# DICOM JSON of the attributes these records carry in their metadata: one QIDO
# keeps on the study and series rows (TimezoneOffsetFromUTC), one on series
# rows only (BodyPartExamined), one it does not keep (ImageType).
TIMEZONE, BODY_PART, IMAGE_TYPE = "00080201", "00180015", "00080008"


def record(study: str, series: str, sop: str, *, modality: str = "US", patient: str = "PAT1",
           timezone: str | None = "+0100", body_part: str = "ABDOMEN",
           file_path: str | None = None, **overrides) -> InstanceRecord:
    """An InstanceRecord (no file behind it) with DICOM JSON metadata of its own."""
    metadata = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.6.1"]},
                "00080018": {"vr": "UI", "Value": [sop]},
                BODY_PART: {"vr": "CS", "Value": [body_part]},
                IMAGE_TYPE: {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}}
    if timezone is not None:
        metadata[TIMEZONE] = {"vr": "SH", "Value": [timezone]}
    fields = dict(
        patient_id=patient, patient_name="Doe^Jane", patient_birth_date=None, patient_sex="F",
        study_instance_uid=study, study_date="20240110", study_time="093000",
        accession_number="ACC1", study_description="Abdomen", referring_physician_name=None,
        study_id="1", series_instance_uid=series, modality=modality, series_number=1,
        series_description=None, sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", instance_number=1, number_of_frames=None,
        rows=4, columns=6, transfer_syntax_uid="1.2.840.10008.1.2.1",
        specific_character_set="ISO_IR 192", file_path=file_path or f"ab/{sop}.dcm",
        file_size=100, sha256="0" * 64, received_at=1_700_000_000.0, source="DICOM",
        calling_aet="TEST", peer="127.0.0.1:1", metadata=json.dumps(metadata))
    fields.update(overrides)
    return InstanceRecord(**fields)


_PARENTS = (
    ("patients", "patient_id", ("patient_name", "patient_birth_date", "patient_sex"), None),
    ("studies", "study_instance_uid", ("study_date", "study_time", "accession_number",
                                       "study_description", "referring_physician_name",
                                       "study_id"), "patient_pk"),
    ("series", "series_instance_uid", ("modality", "series_number", "series_description"),
     "study_pk"),
)


def create_v2_index(directory: Path, records: list[InstanceRecord]) -> Path:
    """An index file at schema v2 holding ``records``: v2's own schema SQL
    (the first two migrations) and plain INSERTs, as that release left it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DB_NAME
    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        with conn:
            for sql in MIGRATIONS[:2]:
                conn.execute(sql)
            conn.execute("PRAGMA user_version = 2")
            for rec in records:
                values = dataclasses.asdict(rec)
                parent = None
                for table, key, columns, parent_col in _PARENTS:
                    row = conn.execute(f"SELECT id FROM {table} WHERE {key} = ?",
                                       (values[key],)).fetchone()
                    if row is None:
                        cols = [key, *columns, *([parent_col] if parent_col else []),
                                "created_at", "updated_at"]
                        args = [values[key], *(values[c] for c in columns),
                                *([parent] if parent_col else []), rec.received_at,
                                rec.received_at]
                        conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) "
                                     f"VALUES ({', '.join('?' * len(cols))})", args)
                        row = (conn.last_insert_rowid(),)
                    parent = row[0]
                columns = [f.name for f in dataclasses.fields(rec)
                           if f.name not in {c for _, k, cs, _ in _PARENTS for c in (k, *cs)}]
                conn.execute(f"INSERT INTO instances (series_pk, {', '.join(columns)}) "
                             f"VALUES (?, {', '.join('?' * len(columns))})",
                             [parent, *(values[c] for c in columns)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path
