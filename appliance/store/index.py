"""The SQLite index (apsw): schema, migrations, group commit. All SQL lives here.

Writes go through one writer thread that owns the write connection. Callers
hand it a job and block until the transaction holding their job has
committed; jobs that arrive while a commit is in flight are committed
together in the next transaction (group commit), so N concurrent stores cost
about one WAL fsync rather than N. Each job runs inside its own SAVEPOINT, so
one failing job does not undo the others in its batch.

Reads use one connection per reading thread (WAL lets them run beside the
writer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

log = logging.getLogger(__name__)

DB_NAME = "pacs-appliance.sqlite"
# Largest number of jobs folded into one transaction: bounds the latency of
# the first job in a batch when many stores arrive at once.
_MAX_BATCH = 256

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

# MIGRATIONS[n] upgrades schema version n to n+1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)
SCHEMA_VERSION = len(MIGRATIONS)


class IndexError_(Exception):
    """The index could not do what was asked (I/O error, corrupt file, closed)."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class InsertOutcome:
    """What :meth:`Index.insert_instance` did."""

    inserted: bool              # False: the SOP instance was already there and kept
    replaced_file: str | None   # the old file to delete after an overwrite


@dataclass(frozen=True)
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


class _Job:
    __slots__ = ("fn", "dirs", "done", "result", "error")

    def __init__(self, fn: Callable[[apsw.Connection], Any], dirs: Iterable[Path]) -> None:
        self.fn = fn
        self.dirs = tuple(dirs)
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def _connect(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.setbusytimeout(30_000)
    conn.execute("PRAGMA foreign_keys = ON")
    # WAL: readers never block the writer. synchronous=FULL: a commit is
    # fsynced before it returns, which is what acknowledging a store needs
    # (NORMAL would only sync at checkpoints).
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class Index:
    """The SQLite index of the archive.

    ``sync_dirs`` is called by the writer thread with the directories a batch
    of jobs renamed files into, just before the batch commits, so a row is
    never durable before the file it names.
    """

    def __init__(self, directory: Path, sync_dirs: Callable[[set[Path]], None]) -> None:
        self.path = Path(directory) / DB_NAME
        self._sync_dirs = sync_dirs
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._idle: list[apsw.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = True
        self.commits = 0
        self.jobs = 0

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Open (creating or migrating) the database and start the writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        self._migrate(conn)
        self._closed = False
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="index-writer", daemon=True
        )
        self._writer.start()

    @staticmethod
    def _migrate(conn: apsw.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise IndexError_(
                f"index schema version {version} is newer than this program ({SCHEMA_VERSION})"
            )
        for v in range(version, SCHEMA_VERSION):
            with conn:
                conn.execute(MIGRATIONS[v])
                conn.execute(f"PRAGMA user_version = {v + 1}")
            log.info("index schema migrated to version %d", v + 1)

    def close(self) -> None:
        """Finish queued jobs, stop the writer, close every connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join()
        with self._readers_lock:
            for c in self._idle:
                c.close()
            self._idle.clear()

    def is_alive(self) -> bool:
        """True while the writer thread runs (a health check)."""
        return self._writer is not None and self._writer.is_alive()

    # -- the writer ------------------------------------------------------

    def _write_loop(self, conn: apsw.Connection) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                batch = [job]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._commit_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_batch(self, conn: apsw.Connection, batch: list[_Job]) -> None:
        try:
            dirs = {d for job in batch for d in job.dirs}
            if dirs:
                self._sync_dirs(dirs)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for job in batch:
                    conn.execute("SAVEPOINT job")
                    try:
                        job.result = job.fn(conn)
                    except Exception as e:  # noqa: BLE001 - reported to that job only
                        conn.execute("ROLLBACK TO job")
                        job.error = e
                    conn.execute("RELEASE job")
                conn.execute("COMMIT")
            except BaseException:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
                raise
            self.commits += 1
            self.jobs += len(batch)
        except Exception as e:  # noqa: BLE001 - every job of the batch failed
            log.error("index commit failed: %s", e)
            for job in batch:
                job.error = job.error or e
        finally:
            for job in batch:
                job.done.set()

    def run_write(self, fn: Callable[[apsw.Connection], Any], dirs: Iterable[Path] = ()) -> Any:
        """Run ``fn(conn)`` in the writer's next transaction; return once committed."""
        if self._closed:
            raise IndexError_("index is closed")
        job = _Job(fn, dirs)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    # -- reads -----------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[apsw.Connection]:
        """A read-only connection from the pool (associations come and go as
        threads, so per-thread connections would pile up)."""
        if self._closed:
            raise IndexError_("index is closed")
        with self._readers_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
            conn.setbusytimeout(30_000)
        try:
            yield conn
        finally:
            with self._readers_lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    def read(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Run one read-only query and return all rows."""
        with self._reader() as c:
            return list(c.execute(sql, args))

    # -- instances -------------------------------------------------------

    def insert_instance(self, rec: InstanceRecord, *, overwrite: bool, dirs: Iterable[Path]) -> InsertOutcome:
        """Insert one instance (and its patient/study/series) durably.

        A second copy of a SOPInstanceUID is kept out (``overwrite`` False)
        or replaces the row (``overwrite`` True, Orthanc's OverwriteInstances);
        either way there is never more than one row per SOPInstanceUID.
        """
        return self.run_write(lambda conn: _insert(conn, rec, overwrite), dirs)

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

    def counts(self) -> dict[str, int]:
        """Numbers of patients, studies, series, instances and stored bytes."""
        (row,) = self.read(
            """SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies),
                      (SELECT count(*) FROM series), (SELECT count(*) FROM instances),
                      (SELECT coalesce(sum(file_size), 0) FROM instances)"""
        )
        return dict(zip(("patients", "studies", "series", "instances", "bytes"), row))

    def all_files(self) -> list[tuple[str, str, int, str]]:
        """(sop_instance_uid, file_path, file_size, sha256) of every instance."""
        return self.read(
            "SELECT sop_instance_uid, file_path, file_size, sha256 FROM instances ORDER BY id"
        )


def _upsert_parent(conn: apsw.Connection, table: str, key_col: str, key: str,
                   values: dict[str, Any], now: float) -> int:
    """Insert a patient/study/series row if new; return its id.

    Existing rows keep their attributes (Orthanc keeps the first instance's
    main tags too) but their updated_at moves, which recycling and
    stable-study detection use.
    """
    row = conn.execute(f"SELECT id FROM {table} WHERE {key_col} = ?", (key,)).fetchone()
    if row:
        conn.execute(f"UPDATE {table} SET updated_at = ? WHERE id = ?", (now, row[0]))
        return row[0]
    cols = [key_col, *values, "created_at", "updated_at"]
    conn.execute(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        (key, *values.values(), now, now),
    )
    return conn.last_insert_rowid()


_PATIENT_COLS = ("patient_name", "patient_birth_date", "patient_sex")
_STUDY_COLS = ("study_date", "study_time", "accession_number", "study_description",
               "referring_physician_name", "study_id")
_SERIES_COLS = ("modality", "series_number", "series_description")
_INSTANCE_COLS = ("sop_instance_uid", "sop_class_uid", "instance_number", "number_of_frames",
                  "rows", "columns", "transfer_syntax_uid", "specific_character_set",
                  "file_path", "file_size", "sha256", "received_at", "source",
                  "calling_aet", "peer", "metadata")


def _insert(conn: apsw.Connection, rec: InstanceRecord, overwrite: bool) -> InsertOutcome:
    d = dataclasses.asdict(rec)
    old = conn.execute(
        "SELECT file_path FROM instances WHERE sop_instance_uid = ?", (rec.sop_instance_uid,)
    ).fetchone()
    replaced = None
    if old:
        if not overwrite:
            return InsertOutcome(inserted=False, replaced_file=None)
        replaced = _delete(conn, rec.sop_instance_uid)
    now = time.time()
    patient = _upsert_parent(conn, "patients", "patient_id", rec.patient_id,
                             {c: d[c] for c in _PATIENT_COLS}, now)
    study = _upsert_parent(conn, "studies", "study_instance_uid", rec.study_instance_uid,
                           {"patient_pk": patient, **{c: d[c] for c in _STUDY_COLS}}, now)
    series = _upsert_parent(conn, "series", "series_instance_uid", rec.series_instance_uid,
                            {"study_pk": study, **{c: d[c] for c in _SERIES_COLS}}, now)
    cols = ("series_pk", *_INSTANCE_COLS)
    conn.execute(
        f"INSERT INTO instances ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        (series, *(d[c] for c in _INSTANCE_COLS)),
    )
    return InsertOutcome(inserted=True, replaced_file=replaced)


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
    conn.execute("DELETE FROM studies WHERE id = ? AND NOT EXISTS "
                 "(SELECT 1 FROM series WHERE study_pk = ?)", (study_pk, study_pk))
    conn.execute("DELETE FROM patients WHERE id = ? AND NOT EXISTS "
                 "(SELECT 1 FROM studies WHERE patient_pk = ?)", (patient_pk, patient_pk))
    return path


# -- QIDO-RS queries (the DICOMweb issue) ----------------------------------


# -- MPPS (the worklist issue) ----------------------------------------------
