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
# Longest wait for a store on its way to join a group commit (seconds).
_GATHER = 0.004

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

# MIGRATIONS[n] upgrades schema version n to n+1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
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

    def __init__(self, directory: Path, sync_dirs: Callable[[set[Path]], None],
                 coming: Callable[[], int] = lambda: 0) -> None:
        self.path = Path(directory) / DB_NAME
        self._sync_dirs = sync_dirs
        # How many writes are on their way (stores past their receive): while
        # a batch is smaller, the writer waits a little for them to join it.
        self._coming = coming
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
        """Finish queued jobs, stop the writer, close every connection.

        The writer's connection closes last, after folding the WAL into the
        database file (:meth:`_checkpoint`): once stopped, the .sqlite file
        alone holds everything (a copy of it, a backup tool that skips -wal).
        """
        if self._closed:
            return
        self._closed = True
        # Readers first: a read-only connection closing last cannot checkpoint
        # and would leave the -wal file behind.
        with self._readers_lock:
            for c in self._idle:
                c.close()
            self._idle.clear()
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join()

    def is_alive(self) -> bool:
        """True while the writer thread runs (a health check)."""
        return self._writer is not None and self._writer.is_alive()

    # -- the writer ------------------------------------------------------

    def _write_loop(self, conn: apsw.Connection) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    self._checkpoint(conn)
                    return
                batch = [job]
                stop = False
                deadline = None
                while len(batch) < _MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        # Parallel stores: a commit (a folder fsync and a WAL
                        # fsync) shared by more of them is cheaper than the
                        # short wait for the next one to arrive.
                        if len(batch) >= self._coming():
                            break
                        if deadline is None:
                            deadline = time.monotonic() + _GATHER
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        try:
                            nxt = self._queue.get(timeout=remaining)
                        except queue.Empty:
                            break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._commit_batch(conn, batch)
                if stop:
                    self._checkpoint(conn)
                    return
        finally:
            conn.close()

    def _checkpoint(self, conn: apsw.Connection) -> None:
        """After the last write: copy the whole WAL into the database file and
        truncate the WAL to zero bytes (closing this last connection then
        deletes it). A reader still in a transaction makes it wait (busy
        timeout), then give up: the WAL stays and SQLite replays it at the
        next open, so nothing is lost either way."""
        try:
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.Error as e:
            log.warning("index WAL not checkpointed at close (%s): the next start replays it", e)

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


# -- QIDO-RS queries (the DICOMweb issue) ----------------------------------
#
# The web layer (appliance.web.qido) parses and validates a request into a
# QidoSearch; the functions here turn it into one SQL statement over the
# patients/studies/series/instances tables, so no file is ever read.
#
# Query levels: "study" (patient attributes belong to it, as in the Study
# Root model), "series", "instance". A condition on an attribute of a lower
# level than the query level (e.g. Modality in a study search), and any
# condition on an attribute that is not a column (matched in the per-instance
# DICOM JSON `metadata`), selects the resources having at least one
# series/instance that matches.

QIDO_LEVELS = ("study", "series", "instance")
_LEVEL_RANK = {level: rank for rank, level in enumerate(QIDO_LEVELS)}


@dataclass(frozen=True)
class QidoColumn:
    """An attribute kept as a column: its query level, VR and table column."""

    level: str
    vr: str
    table: str   # alias: p (patients), st (studies), se (series), i (instances)
    column: str


QIDO_COLUMNS: dict[int, QidoColumn] = {
    0x00100010: QidoColumn("study", "PN", "p", "patient_name"),
    0x00100020: QidoColumn("study", "LO", "p", "patient_id"),
    0x00100030: QidoColumn("study", "DA", "p", "patient_birth_date"),
    0x00100040: QidoColumn("study", "CS", "p", "patient_sex"),
    0x0020000D: QidoColumn("study", "UI", "st", "study_instance_uid"),
    0x00080020: QidoColumn("study", "DA", "st", "study_date"),
    0x00080030: QidoColumn("study", "TM", "st", "study_time"),
    0x00080050: QidoColumn("study", "SH", "st", "accession_number"),
    0x00081030: QidoColumn("study", "LO", "st", "study_description"),
    0x00080090: QidoColumn("study", "PN", "st", "referring_physician_name"),
    0x00200010: QidoColumn("study", "SH", "st", "study_id"),
    0x0020000E: QidoColumn("series", "UI", "se", "series_instance_uid"),
    0x00080060: QidoColumn("series", "CS", "se", "modality"),
    0x00200011: QidoColumn("series", "IS", "se", "series_number"),
    0x0008103E: QidoColumn("series", "LO", "se", "series_description"),
    0x00080018: QidoColumn("instance", "UI", "i", "sop_instance_uid"),
    0x00080016: QidoColumn("instance", "UI", "i", "sop_class_uid"),
    0x00200013: QidoColumn("instance", "IS", "i", "instance_number"),
    0x00280008: QidoColumn("instance", "IS", "i", "number_of_frames"),
    0x00280010: QidoColumn("instance", "US", "i", "rows"),
    0x00280011: QidoColumn("instance", "US", "i", "columns"),
}

# PS3.4 C.3.4 additional attributes, computed from the tables.
MODALITIES_IN_STUDY = 0x00080061
STUDY_RELATED_SERIES = 0x00201206
STUDY_RELATED_INSTANCES = 0x00201208
SERIES_RELATED_INSTANCES = 0x00201209
QIDO_COMPUTED: dict[int, tuple[str, str]] = {   # tag: (level, VR)
    MODALITIES_IN_STUDY: ("study", "CS"),
    STUDY_RELATED_SERIES: ("study", "IS"),
    STUDY_RELATED_INSTANCES: ("study", "IS"),
    SERIES_RELATED_INSTANCES: ("series", "IS"),
}
# Kept up to date on the rows since schema v3 (see _keep_summaries).
_COMPUTED_SQL = {
    # Comma-separated, in no particular order: the caller sorts.
    MODALITIES_IN_STUDY: "st.modalities",
    STUDY_RELATED_SERIES: "st.number_of_series",
    STUDY_RELATED_INSTANCES: "st.number_of_instances",
    SERIES_RELATED_INSTANCES: "se.number_of_instances",
}


@dataclass(frozen=True)
class QidoMatch:
    """One validated matching condition (PS3.4 C.2.2.2 matching kinds).

    ``kind``:
      * ``"text"``: ``values`` are alternatives (a backslash list), each a
        single value or a wildcard pattern with ``*`` and ``?`` (C.2.2.2.1/4);
        ``fold_case`` makes it case-insensitive, non-ASCII letters included;
      * ``"exact"``: ``values`` are a list of UIDs or integers (C.2.2.2.2);
      * ``"range"``: ``values`` is ``(low, high)``, either may be ``""``
        (C.2.2.2.5), for DA/TM/DT.
    A tag that is neither in QIDO_COLUMNS nor ModalitiesInStudy is matched
    on the values of that attribute in the instances' metadata JSON.
    """

    tag: int
    vr: str
    kind: str
    values: tuple
    fold_case: bool = False


@dataclass(frozen=True)
class QidoSearch:
    """A validated QIDO-RS search, ready to run."""

    level: str
    study_uid: str | None = None     # from the target resource path
    series_uid: str | None = None
    matches: tuple[QidoMatch, ...] = ()
    computed: tuple[int, ...] = ()   # QIDO_COMPUTED tags to return
    metadata_tags: tuple[int, ...] = ()  # returned from a representative instance
    whole_metadata: bool = False     # instance level: the full DICOM JSON too
    limit: int = 100
    offset: int = 0


@dataclass
class QidoRow:
    """One matching resource: raw column values and metadata JSON fragments."""

    values: dict[int, Any]            # QIDO_COLUMNS (up to the level) and computed tags
    metadata: dict[int, str | None]   # tag -> JSON text of that attribute, or None
    whole_metadata: str | None = None


# The table of the level, then its parents.
_TABLE = {"study": "studies st", "series": "series se", "instance": "instances i"}
_PARENTS = {
    "study": " JOIN patients p ON p.id = st.patient_pk",
    "series": " JOIN studies st ON st.id = se.study_pk JOIN patients p ON p.id = st.patient_pk",
    "instance": " JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk"
                " JOIN patients p ON p.id = st.patient_pk",
}
_FROM = {level: _TABLE[level] + _PARENTS[level] for level in QIDO_LEVELS}
_KEY = {"study": "st.id", "series": "se.id", "instance": "i.id"}
# One instance whose metadata stands for its study or series (the first stored).
_REPRESENTATIVE = {
    "study": _REPRESENTATIVE_OF["study"].format(row="st"),
    "series": _REPRESENTATIVE_OF["series"].format(row="se"),
    "instance": "i.id",
}
# Where the QIDO_KEPT attributes of a result row are.
_KEPT_COLUMN = {"study": "st.attributes", "series": "se.attributes"}
# Aliases of the tables inside _children_exist's subqueries.
_ALIASES = {"p": "p", "st": "st", "se": "xse", "i": "xi"}


def _order(search: QidoSearch) -> str:
    """Result order: stable across pages (PS3.18 8.3.4.4 paging needs that).

    Within one study or series, series and instance numbers, as a viewer
    lists them; across the archive, storage order, which the primary key
    gives without sorting.
    """
    if search.level == "series" and search.study_uid:
        return "se.series_number IS NULL, se.series_number, se.id"
    if search.level == "instance" and search.series_uid:
        return "i.instance_number IS NULL, i.instance_number, i.id"
    if search.level == "instance" and search.study_uid:
        return ("se.series_number IS NULL, se.series_number, se.id, "
                "i.instance_number IS NULL, i.instance_number, i.id")
    return _KEY[search.level]


def _like_pattern(value: str) -> tuple[str, bool]:
    """A LIKE pattern (escape ``\\``) for a DICOM value or wildcard pattern,
    case-insensitive for ASCII (SQLite's LIKE); a cased non-ASCII letter
    becomes ``_`` so LIKE is a superset, and the second result says that a
    GLOB check must then follow."""
    out, needs_glob = [], False
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        elif ord(ch) > 127 and ch.lower() != ch.upper():
            out.append("_")
            needs_glob = True
        else:
            out.append(ch)
    return "".join(out), needs_glob


def _glob_pattern(value: str, fold_case: bool) -> str:
    """A GLOB pattern for a DICOM value or wildcard pattern; with
    ``fold_case`` every cased letter becomes a ``[xX]`` class."""
    out = []
    for ch in value:
        if ch in "*?":
            out.append(ch)
        elif ch == "[":
            out.append("[[]")  # GLOB has no escape character; a class holds it
        elif fold_case and len(ch.lower()) == 1 and len(ch.upper()) == 1 \
                and ch.lower() != ch.upper():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(ch)
    return "".join(out)


def _text_condition(expr: str, value: str, fold_case: bool) -> tuple[str, list]:
    wildcard = "*" in value or "?" in value
    if not fold_case:
        if wildcard:
            return f"{expr} GLOB ?", [_glob_pattern(value, False)]
        return f"{expr} = ?", [value]
    # LIKE first: with a literal prefix it can use an index (patients_name is
    # NOCASE for that), then GLOB settles non-ASCII letters exactly.
    like, needs_glob = _like_pattern(value)
    if not needs_glob:
        return f"{expr} LIKE ? ESCAPE '\\'", [like]
    return (f"({expr} LIKE ? ESCAPE '\\' AND {expr} GLOB ?)",
            [like, _glob_pattern(value, True)])


def _value_condition(expr: str, match: QidoMatch) -> tuple[str, list]:
    """The condition of ``match`` on the SQL expression ``expr``."""
    if match.kind == "exact":
        return f"{expr} IN ({', '.join('?' * len(match.values))})", list(match.values)
    if match.kind == "range":
        low, high = match.values
        parts, args = [], []
        if low:
            parts.append(f"{expr} >= ?")
            args.append(low)
        if high:
            # A DA is always 8 characters: compare whole (an index can serve
            # it). TM/DT may be longer than the bound: compare the bound's
            # precision, so "-1015" includes 10:15:30 (PS3.4 C.2.2.2.5).
            parts.append(f"{expr} <= ?" if match.vr == "DA" else f"substr({expr}, 1, ?) <= ?")
            args.extend([high] if match.vr == "DA" else [len(high), high])
        return "(" + " AND ".join(parts) + ")", args
    parts, args = [], []
    for value in match.values:
        sql, a = _text_condition(expr, value, match.fold_case)
        parts.append(sql)
        args.extend(a)
    return "(" + " OR ".join(parts) + ")", args


def _children_exist(level: str, child: str, cond: str) -> str:
    """EXISTS over the series (``child`` "se", alias xse) or instances
    (``child`` "i", alias xi) of the current study or series row."""
    if child == "se":
        return f"EXISTS (SELECT 1 FROM series xse WHERE xse.study_pk = st.id AND {cond})"
    if level == "study":
        return ("EXISTS (SELECT 1 FROM series xse JOIN instances xi ON xi.series_pk = xse.id "
                f"WHERE xse.study_pk = st.id AND {cond})")
    return f"EXISTS (SELECT 1 FROM instances xi WHERE xi.series_pk = se.id AND {cond})"


def _condition(level: str, match: QidoMatch) -> tuple[str, list]:
    """SQL for one match at the query ``level``."""
    if match.tag == MODALITIES_IN_STUDY:
        # PS3.4 C.3.4: the distinct Modality values of the study's series, so
        # the study matches if any of its series does.
        cond, args = _value_condition("xse.modality", match)
        return _children_exist("study", "se", cond), args
    column = QIDO_COLUMNS.get(match.tag)
    if column is not None:
        if _LEVEL_RANK[column.level] <= _LEVEL_RANK[level]:
            return _value_condition(f"{column.table}.{column.column}", match)
        cond, args = _value_condition(f"{_ALIASES[column.table]}.{column.column}", match)
        return _children_exist(level, column.table, cond), args
    # Not a column: the values of the attribute in the metadata JSON (every
    # value of a multi-valued one; the Alphabetic group of a PN).
    value = "json_extract(je.value, '$.Alphabetic')" if match.vr == "PN" else "je.value"
    cond, args = _value_condition(value, match)
    path = f'$."{match.tag:08X}".Value'
    source = "i.metadata" if level == "instance" else "xi.metadata"
    sql = f"EXISTS (SELECT 1 FROM json_each({source}, ?) je WHERE {cond})"
    if level != "instance":
        sql = _children_exist(level, "i", sql)
    return sql, [path, *args]


def _where(search: QidoSearch) -> tuple[str, list]:
    parts, args = [], []
    if search.study_uid is not None:
        parts.append("st.study_instance_uid = ?")
        args.append(search.study_uid)
    if search.series_uid is not None:
        parts.append("se.series_instance_uid = ?")
        args.append(search.series_uid)
    for match in search.matches:
        sql, a = _condition(search.level, match)
        parts.append(sql)
        args.extend(a)
    return (" WHERE " + " AND ".join(parts)) if parts else "", args


def qido_search(index: Index, search: QidoSearch) -> list[QidoRow]:
    """Run a QIDO-RS search: one page of matching resources, in a stable order.

    The page of keys is selected first, so computed attributes and metadata
    are only worked out for the rows returned (PS3.18 8.3.4.4 limit/offset).
    """
    level = search.level
    where, args = _where(search)
    order = _order(search)
    columns = [(tag, f"{c.table}.{c.column}") for tag, c in QIDO_COLUMNS.items()
               if _LEVEL_RANK[c.level] <= _LEVEL_RANK[level]]
    columns += [(tag, _COMPUTED_SQL[tag]) for tag in search.computed]
    select = [sql for _, sql in columns]
    # Attributes kept on the row are read from there; others, and the whole
    # metadata, from the representative instance, joined only when needed.
    kept = QIDO_KEPT.get(level, ())
    sources = [_KEPT_COLUMN[level] if tag in kept else "rep.metadata"
               for tag in search.metadata_tags]
    select += [f"json_extract({source}, ?)" for source in sources]
    select_args = [f'$."{tag:08X}"' for tag in search.metadata_tags]
    if search.whole_metadata:
        select.append("rep.metadata")
    representative = (f"LEFT JOIN instances rep ON rep.id = {_REPRESENTATIVE[level]} "
                      if search.whole_metadata or "rep.metadata" in sources else "")
    sql = (
        f"WITH page(k) AS MATERIALIZED (SELECT {_KEY[level]} FROM {_FROM[level]}{where} "
        f"ORDER BY {order} LIMIT ? OFFSET ?) "
        # CROSS JOIN: SQLite keeps the page as the outer loop.
        f"SELECT {', '.join(select)} FROM page CROSS JOIN {_TABLE[level]} ON {_KEY[level]} = page.k"
        f"{_PARENTS[level]} "
        f"{representative}ORDER BY {order}"
    )
    rows = index.read(sql, (*args, search.limit, search.offset, *select_args))
    result = []
    n_values, n_meta = len(columns), len(search.metadata_tags)
    for row in rows:
        values = {tag: row[k] for k, (tag, _) in enumerate(columns)}
        metadata = dict(zip(search.metadata_tags, row[n_values:n_values + n_meta]))
        whole = row[n_values + n_meta] if search.whole_metadata else None
        result.append(QidoRow(values, metadata, whole))
    return result


def qido_count(index: Index, search: QidoSearch) -> int:
    """How many resources match ``search`` (limit and offset ignored)."""
    where, args = _where(search)
    (row,) = index.read(f"SELECT count(*) FROM {_FROM[search.level]}{where}", tuple(args))
    return row[0]



# -- MPPS (the worklist issue) ----------------------------------------------


@dataclass(frozen=True)
class MppsRecord:
    """One Modality Performed Procedure Step row (PS3.4 F.7)."""

    sop_instance_uid: str
    status: str
    study_instance_uid: str | None
    accession_number: str | None
    requested_procedure_id: str | None
    scheduled_procedure_step_id: str | None
    worklist_item: str | None
    calling_aet: str | None
    peer: str | None
    created_at: float
    updated_at: float
    dataset: str  # DICOM JSON


_MPPS_COLS = ("sop_instance_uid", "status", "study_instance_uid", "accession_number",
              "requested_procedure_id", "scheduled_procedure_step_id", "worklist_item",
              "calling_aet", "peer", "created_at", "updated_at", "dataset")


def mpps_insert(index: Index, record: MppsRecord) -> bool:
    """Insert a new procedure step; False (nothing written) if its SOP Instance UID exists."""
    def insert(conn: apsw.Connection) -> bool:
        if conn.execute("SELECT 1 FROM mpps WHERE sop_instance_uid = ?",
                        (record.sop_instance_uid,)).fetchone():
            return False
        conn.execute(f"INSERT INTO mpps ({', '.join(_MPPS_COLS)}) "
                     f"VALUES ({', '.join('?' * len(_MPPS_COLS))})",
                     tuple(getattr(record, c) for c in _MPPS_COLS))
        return True

    return index.run_write(insert)


def mpps_get(index: Index, sop_instance_uid: str) -> MppsRecord | None:
    """The procedure step with this SOP Instance UID, or None."""
    rows = index.read(f"SELECT {', '.join(_MPPS_COLS)} FROM mpps WHERE sop_instance_uid = ?",
                      (sop_instance_uid,))
    return MppsRecord(*rows[0]) if rows else None


def mpps_update(index: Index, previous: MppsRecord, *, status: str, dataset: str,
                worklist_item: str | None, now: float) -> bool:
    """Replace a step's status and attributes, only if it is still exactly ``previous``
    (same status and ``updated_at``); False if it changed meanwhile (the caller re-reads)."""
    def update(conn: apsw.Connection) -> bool:
        conn.execute(
            "UPDATE mpps SET status = ?, dataset = ?, worklist_item = ?, updated_at = ? "
            "WHERE sop_instance_uid = ? AND status = ? AND updated_at = ?",
            (status, dataset, worklist_item, now, previous.sop_instance_uid, previous.status,
             previous.updated_at))
        return conn.changes() == 1

    return index.run_write(update)


def studies_quiet_since(index: Index, study_instance_uids: Iterable[str],
                        accession_numbers: Iterable[str], before: float) -> tuple[set[str], set[str]]:
    """Which of these Study Instance UIDs and Accession Numbers belong to a received study
    that has had no new instance since ``before`` (Orthanc's "stable study")."""
    found_uids: set[str] = set()
    found_accessions: set[str] = set()
    for column, wanted, found in (("study_instance_uid", list(study_instance_uids), found_uids),
                                  ("accession_number", list(accession_numbers), found_accessions)):
        for start in range(0, len(wanted), 500):  # stay far below SQLite's variable limit
            chunk = wanted[start:start + 500]
            rows = index.read(
                f"SELECT DISTINCT {column} FROM studies WHERE {column} IN "
                f"({', '.join('?' * len(chunk))}) AND updated_at <= ?", (*chunk, before))
            found.update(r[0] for r in rows)
    return found_uids, found_accessions


# -- operations (backup, reindex, recycling) -------------------------------
#
# Module-level functions for appliance.ops: the ones taking an apsw Connection
# read a database that is not the live index (a backup being written or
# verified) or a snapshot held open by the caller.

_COUNTS_SQL = """SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies),
                        (SELECT count(*) FROM series), (SELECT count(*) FROM instances),
                        (SELECT coalesce(sum(file_size), 0) FROM instances)"""
COUNT_NAMES = ("patients", "studies", "series", "instances", "bytes")


def counts_of(conn: apsw.Connection) -> dict[str, int]:
    """Index.counts() on another connection (a snapshot, a backup file)."""
    return dict(zip(COUNT_NAMES, conn.execute(_COUNTS_SQL).fetchone()))


def schema_version_of(conn: apsw.Connection) -> int:
    """The schema version (PRAGMA user_version) of a database."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def files_of(conn: apsw.Connection) -> Iterator[tuple[str, str, int, str]]:
    """(sop_instance_uid, file_path, file_size, sha256) of every instance, streamed."""
    yield from conn.execute(
        "SELECT sop_instance_uid, file_path, file_size, sha256 FROM instances ORDER BY id")


def patient_exists(index: Index, patient_id: str) -> bool:
    """True if the index holds this PatientID."""
    return bool(index.read("SELECT 1 FROM patients WHERE patient_id = ?", (patient_id,)))


@dataclass(frozen=True)
class PatientUsage:
    """A patient as recycling sees it: internal id, last store, what it holds."""

    pk: int
    updated_at: float
    studies: int
    instances: int
    bytes: int


def least_recently_stored(index: Index, *, spare: Iterable[str], stored_before: float,
                          limit: int = 8) -> list[PatientUsage]:
    """The patients stored longest ago (Orthanc's recycling order), oldest first,
    except the PatientIDs in ``spare`` and those stored at or after ``stored_before``."""
    spare = list(spare)
    rows = index.read(
        f"""SELECT p.id, p.updated_at,
                   (SELECT count(*) FROM studies st WHERE st.patient_pk = p.id),
                   (SELECT count(*) FROM instances i JOIN series se ON se.id = i.series_pk
                      JOIN studies st ON st.id = se.study_pk WHERE st.patient_pk = p.id),
                   (SELECT coalesce(sum(i.file_size), 0) FROM instances i
                      JOIN series se ON se.id = i.series_pk
                      JOIN studies st ON st.id = se.study_pk WHERE st.patient_pk = p.id)
            FROM patients p
            WHERE p.updated_at < ? AND p.patient_id NOT IN ({', '.join('?' * len(spare))})
            ORDER BY p.updated_at, p.id LIMIT ?""",
        (stored_before, *spare, limit))
    return [PatientUsage(*r) for r in rows]


def delete_patient(index: Index, patient_pk: int) -> list[tuple[str, int]]:
    """Delete a patient with its studies, series and instances in one transaction;
    return the (file_path, file_size) of the files to delete afterwards."""
    def delete(conn: apsw.Connection) -> list[tuple[str, int]]:
        files = list(conn.execute(
            """SELECT i.file_path, i.file_size FROM instances i
               JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk
               WHERE st.patient_pk = ?""", (patient_pk,)))
        conn.execute("""DELETE FROM instances WHERE series_pk IN (SELECT se.id FROM series se
                        JOIN studies st ON st.id = se.study_pk WHERE st.patient_pk = ?)""",
                     (patient_pk,))
        conn.execute("DELETE FROM series WHERE study_pk IN "
                     "(SELECT id FROM studies WHERE patient_pk = ?)", (patient_pk,))
        conn.execute("DELETE FROM studies WHERE patient_pk = ?", (patient_pk,))
        conn.execute("DELETE FROM patients WHERE id = ?", (patient_pk,))
        return files

    return index.run_write(delete)


def ingest_since(index: Index, since: float) -> tuple[int, float | None]:
    """(bytes of the instances received after ``since``, time of the oldest instance)."""
    (row,) = index.read(
        """SELECT (SELECT coalesce(sum(file_size), 0) FROM instances WHERE received_at > ?),
                  (SELECT min(received_at) FROM instances)""", (since,))
    return row[0], row[1]


def insert_many(index: Index, records: Iterable[InstanceRecord], *,
                overwrite: bool) -> list[InsertOutcome]:
    """Insert a batch of instances in one transaction (reindex: one commit for many
    files rather than one each)."""
    batch = list(records)
    return index.run_write(lambda conn: [_insert(conn, rec, overwrite) for rec in batch])


def settle_timestamps(index: Index) -> None:
    """Set the created/updated times of every patient, study and series from the
    received_at of its instances (after a reindex, so recycling order and study
    stability follow the files' ages rather than the time of the rebuild)."""
    def settle(conn: apsw.Connection) -> None:
        conn.execute("""UPDATE series SET
            created_at = (SELECT min(received_at) FROM instances WHERE series_pk = series.id),
            updated_at = (SELECT max(received_at) FROM instances WHERE series_pk = series.id)""")
        conn.execute("""UPDATE studies SET
            created_at = (SELECT min(created_at) FROM series WHERE study_pk = studies.id),
            updated_at = (SELECT max(updated_at) FROM series WHERE study_pk = studies.id)""")
        conn.execute("""UPDATE patients SET
            created_at = (SELECT min(created_at) FROM studies WHERE patient_pk = patients.id),
            updated_at = (SELECT max(updated_at) FROM studies WHERE patient_pk = patients.id)""")

    index.run_write(settle)


def delete_instances_at(index: Index, file_paths: Iterable[str]) -> int:
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

    return index.run_write(delete)


def checkpoint_file(path: Path) -> None:
    """Fold the WAL of the closed database at ``path`` into the file itself, so the
    file alone is the whole database (before it is moved or copied)."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()  # the last connection: SQLite removes the -wal and -shm files
