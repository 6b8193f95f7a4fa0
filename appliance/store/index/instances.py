"""Instances and their patient, study and series rows: insert, delete, read.

A mixin of :class:`appliance.store.index.Index`: its methods run their SQL
through the engine's ``read`` and ``run_write``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apsw

from appliance.lazyclasses import lazy_dataclass
from appliance.store.index.queue import Forward, enqueue_forwards
from appliance.store.index.schema import _STUDY_SUMMARY, _kept_attributes

@lazy_dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one instance (and its parents)."""

    # patient
    patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    # study
    study_instance_uid: str
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_description: str | None
    referring_physician_name: str | None
    study_id: str | None
    # series
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    # instance
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    transfer_syntax_uid: str
    specific_character_set: str | None
    file_path: str
    file_size: int
    sha256: str
    received_at: float
    source: str
    calling_aet: str | None
    peer: str | None
    metadata: str


@lazy_dataclass(frozen=True)
class InsertOutcome:
    """What :meth:`Index.insert_instance` did."""

    inserted: bool              # False: the SOP instance was already there and kept
    replaced_file: str | None   # the old file to delete after an overwrite


@lazy_dataclass(frozen=True)
class StoredInstance:
    """One instance row as read back."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    file_path: str
    file_size: int
    sha256: str
    number_of_frames: int | None
    rows: int | None
    columns: int | None


_INSTANCE_SELECT = """
    SELECT i.id, i.sop_instance_uid, i.sop_class_uid, se.series_instance_uid,
           st.study_instance_uid, i.transfer_syntax_uid, i.file_path, i.file_size, i.sha256,
           i.number_of_frames, i.rows, i.columns
    FROM instances i JOIN series se ON se.id = i.series_pk
    JOIN studies st ON st.id = se.study_pk"""
# Study, series, instance order as a viewer expects it.
_INSTANCE_ORDER = """
    ORDER BY st.study_instance_uid, se.series_number IS NULL, se.series_number, se.id,
             i.instance_number IS NULL, i.instance_number, i.id"""


def _scope(study_uid: str, series_uid: str | None, sop_uid: str | None) -> tuple[str, tuple]:
    """WHERE clause selecting a study, a series in it, or an instance in that."""
    where, args = ["st.study_instance_uid = ?"], [study_uid]
    if series_uid is not None:
        where.append("se.series_instance_uid = ?")
        args.append(series_uid)
    if sop_uid is not None:
        where.append("i.sop_instance_uid = ?")
        args.append(sop_uid)
    return " WHERE " + " AND ".join(where), tuple(args)


class Instances:
    """The instance operations of the index."""

    def insert_instance(self, rec: InstanceRecord, *, overwrite: bool, dirs: Iterable[Path],
                        forwards: tuple[Forward, ...] = ()) -> InsertOutcome:
        """Insert one instance (and its patient/study/series) durably.

        A second copy of a SOPInstanceUID is kept out (``overwrite`` False)
        or replaces the row (``overwrite`` True, Orthanc's OverwriteInstances);
        either way there is never more than one row per SOPInstanceUID.
        ``forwards`` (what the forwarding rules decided) are queued in the same
        transaction as the row, so no acknowledged instance misses its enqueue.
        """
        if not forwards:
            return self.run_write(lambda conn: _insert(conn, rec, overwrite), dirs)

        def insert_and_queue(conn: apsw.Connection) -> InsertOutcome:
            done = _insert(conn, rec, overwrite)
            if done.inserted:
                enqueue_forwards(conn, rec.study_instance_uid, rec.sop_instance_uid, forwards,
                                 time.time())
            return done
        return self.run_write(insert_and_queue, dirs)

    def delete_instance(self, sop_instance_uid: str) -> str | None:
        """Delete an instance row (and parents left empty); return its file path."""
        return self.run_write(lambda conn: _delete(conn, sop_instance_uid))

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        """The instance with this SOPInstanceUID, or None."""
        rows = self.read(_INSTANCE_SELECT + " WHERE i.sop_instance_uid = ?", (sop_instance_uid,))
        return StoredInstance(*rows[0]) if rows else None

    def instances_in(self, study_uid: str, series_uid: str | None = None,
                     sop_uid: str | None = None) -> list[StoredInstance]:
        """The instances of a study (or of one series, or one instance), in order.

        An instance is only found under its own study and series: a WADO-RS
        URL naming the wrong parents finds nothing.
        """
        where, args = _scope(study_uid, series_uid, sop_uid)
        return [StoredInstance(*r) for r in self.read(_INSTANCE_SELECT + where + _INSTANCE_ORDER, args)]

    def metadata_in(self, study_uid: str, series_uid: str | None = None,
                    sop_uid: str | None = None) -> list[str]:
        """The ingest-time DICOM JSON texts of the same instances as instances_in."""
        where, args = _scope(study_uid, series_uid, sop_uid)
        sql = ("SELECT i.metadata FROM instances i JOIN series se ON se.id = i.series_pk "
               "JOIN studies st ON st.id = se.study_pk" + where + _INSTANCE_ORDER)
        return [r[0] for r in self.read(sql, args)]

    def instance_metadata(self, sop_instance_uid: str) -> str | None:
        """The ingest-time DICOM JSON of an instance, or None."""
        rows = self.read(
            "SELECT metadata FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        return rows[0][0] if rows else None

    def insert_many(self, records: Iterable[InstanceRecord], *,
                    overwrite: bool) -> list[InsertOutcome]:
        """Insert a batch of instances in one transaction (reindex: one commit for
        many files rather than one each)."""
        batch = list(records)
        return self.run_write(lambda conn: [_insert(conn, rec, overwrite) for rec in batch])

    def delete_instances_at(self, file_paths: Iterable[str]) -> int:
        """Delete the instances stored at these paths (and parents left empty); the count."""
        paths = list(file_paths)

        def delete(conn: apsw.Connection) -> int:
            done = 0
            for path in paths:
                row = conn.execute("SELECT sop_instance_uid FROM instances WHERE file_path = ?",
                                   (path,)).fetchone()
                if row and _delete(conn, row[0]) is not None:
                    done += 1
            return done

        return self.run_write(delete)

    def move_files(self, moved: dict[str, str]) -> None:
        """Point the instances stored at the keys of ``moved`` at the values."""
        pairs = [(new, old) for old, new in moved.items()]
        self.run_write(lambda conn: conn.executemany(
            "UPDATE instances SET file_path = ? WHERE file_path = ?", pairs))

    def studies_quiet_since(self, study_instance_uids: Iterable[str],
                            accession_numbers: Iterable[str],
                            before: float) -> tuple[set[str], set[str]]:
        """Which of these Study Instance UIDs and Accession Numbers belong to a received
        study that has had no new instance since ``before`` (Orthanc's "stable study")."""
        found_uids: set[str] = set()
        found_accessions: set[str] = set()
        for column, wanted, found in (("study_instance_uid", list(study_instance_uids), found_uids),
                                      ("accession_number", list(accession_numbers), found_accessions)):
            for start in range(0, len(wanted), 500):  # stay far below SQLite's variable limit
                chunk = wanted[start:start + 500]
                rows = self.read(
                    f"SELECT DISTINCT {column} FROM studies WHERE {column} IN "
                    f"({', '.join('?' * len(chunk))}) AND updated_at <= ?", (*chunk, before))
                found.update(r[0] for r in rows)
        return found_uids, found_accessions


def _upsert_parent(conn: apsw.Connection, table: str, key_col: str, key: str,
                   values: dict[str, Any], now: float) -> tuple[int, bool]:
    """Insert a patient/study/series row if new; return its id and whether it is new.

    Existing rows keep their attributes (Orthanc keeps the first instance's
    main tags too) but their updated_at moves, which recycling and
    stable-study detection use.
    """
    row = conn.execute(f"SELECT id FROM {table} WHERE {key_col} = ?", (key,)).fetchone()
    if row:
        conn.execute(f"UPDATE {table} SET updated_at = ? WHERE id = ?", (now, row[0]))
        return row[0], False
    cols = [key_col, *values, "created_at", "updated_at"]
    conn.execute(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        (key, *values.values(), now, now),
    )
    return conn.last_insert_rowid(), True


_PATIENT_COLS = ("patient_name", "patient_birth_date", "patient_sex")
_STUDY_COLS = ("study_date", "study_time", "accession_number", "study_description",
               "referring_physician_name", "study_id")
_SERIES_COLS = ("modality", "series_number", "series_description")
_INSTANCE_COLS = ("sop_instance_uid", "sop_class_uid", "instance_number", "number_of_frames",
                  "rows", "columns", "transfer_syntax_uid", "specific_character_set",
                  "file_path", "file_size", "sha256", "received_at", "source",
                  "calling_aet", "peer", "metadata")


def _insert(conn: apsw.Connection, rec: InstanceRecord, overwrite: bool) -> InsertOutcome:
    # The record's own fields, read only: every field is a scalar, so asdict's
    # recursive deep copy (37 us an insert, on the index writer thread) bought nothing.
    d = vars(rec)
    old = conn.execute(
        "SELECT file_path FROM instances WHERE sop_instance_uid = ?", (rec.sop_instance_uid,)
    ).fetchone()
    replaced = None
    if old:
        if not overwrite:
            return InsertOutcome(inserted=False, replaced_file=None)
        replaced = _delete(conn, rec.sop_instance_uid)
    now = time.time()
    patient, _ = _upsert_parent(conn, "patients", "patient_id", rec.patient_id,
                                {c: d[c] for c in _PATIENT_COLS}, now)
    study, _ = _upsert_parent(conn, "studies", "study_instance_uid", rec.study_instance_uid,
                              {"patient_pk": patient, **{c: d[c] for c in _STUDY_COLS}}, now)
    series, new_series = _upsert_parent(
        conn, "series", "series_instance_uid", rec.series_instance_uid,
        {"study_pk": study, **{c: d[c] for c in _SERIES_COLS}}, now)
    cols = ("series_pk", *_INSTANCE_COLS)
    conn.execute(
        f"INSERT INTO instances ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        (series, *(d[c] for c in _INSTANCE_COLS)),
    )
    # A new series (of a new study, maybe) has this instance as representative;
    # in an existing one the representative stays, the instance being newer.
    _keep_summaries(conn, series, study, +1, representative_may_change=new_series)
    return InsertOutcome(inserted=True, replaced_file=replaced)


def _keep_summaries(conn: apsw.Connection, series_pk: int, study_pk: int, delta: int, *,
                    representative_may_change: bool) -> None:
    """Keep the schema v3 summaries right after ``delta`` instances were added
    to (or removed from) a series: the series' own count, then its study's
    counts and modalities, recomputed from its series rows (a handful) so a
    new or emptied series is accounted for too; and, when the representative
    instance may have changed, the attributes kept from it (a JSON parse of
    its metadata, so not on every insert)."""
    kept_series = kept_study = ""
    if representative_may_change:
        kept_series = f", {_kept_attributes('series', 'series')}"
        kept_study = f", {_kept_attributes('study', 'studies')}"
    conn.execute(f"UPDATE series SET number_of_instances = number_of_instances + ?{kept_series} "
                 "WHERE id = ?", (delta, series_pk))
    conn.execute(f"UPDATE studies SET {_STUDY_SUMMARY}{kept_study} WHERE id = ?", (study_pk,))


def _delete(conn: apsw.Connection, sop_instance_uid: str) -> str | None:
    row = conn.execute(
        """SELECT i.id, i.file_path, i.series_pk, se.study_pk, st.patient_pk
           FROM instances i JOIN series se ON se.id = i.series_pk
           JOIN studies st ON st.id = se.study_pk WHERE i.sop_instance_uid = ?""",
        (sop_instance_uid,),
    ).fetchone()
    if row is None:
        return None
    iid, path, series_pk, study_pk, patient_pk = row
    conn.execute("DELETE FROM instances WHERE id = ?", (iid,))
    # Parents left without children go too.
    conn.execute("DELETE FROM series WHERE id = ? AND NOT EXISTS "
                 "(SELECT 1 FROM instances WHERE series_pk = ?)", (series_pk, series_pk))
    _keep_summaries(conn, series_pk, study_pk, -1, representative_may_change=True)
    conn.execute("DELETE FROM studies WHERE id = ? AND NOT EXISTS "
                 "(SELECT 1 FROM series WHERE study_pk = ?)", (study_pk, study_pk))
    conn.execute("DELETE FROM patients WHERE id = ? AND NOT EXISTS "
                 "(SELECT 1 FROM studies WHERE patient_pk = ?)", (patient_pk, patient_pk))
    return path
