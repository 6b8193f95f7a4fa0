"""What operations ask of the index: recycling, backups, reindex.

:class:`Maintenance` is a mixin of :class:`appliance.store.index.Index` (the
live index); :class:`Snapshot` reads a database that is not the live index
(a backup being written or verified, or a copy held open by the caller).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import apsw

from appliance.lazyclasses import lazy_dataclass

_COUNTS_SQL = """SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies),
                        (SELECT count(*) FROM series), (SELECT count(*) FROM instances),
                        (SELECT coalesce(sum(file_size), 0) FROM instances)"""
COUNT_NAMES = ("patients", "studies", "series", "instances", "bytes")
_FILES_SQL = "SELECT sop_instance_uid, file_path, file_size, sha256 FROM instances ORDER BY id"


@lazy_dataclass(frozen=True)
class PatientUsage:
    """A patient as recycling sees it: internal id, last store, what it holds."""

    pk: int
    updated_at: float
    studies: int
    instances: int
    bytes: int


class Maintenance:
    """The maintenance operations of the live index."""

    def counts(self) -> dict[str, int]:
        """Numbers of patients, studies, series, instances and stored bytes."""
        (row,) = self.read(_COUNTS_SQL)
        return dict(zip(COUNT_NAMES, row))

    def all_files(self) -> list[tuple[str, str, int, str]]:
        """(sop_instance_uid, file_path, file_size, sha256) of every instance."""
        return self.read(_FILES_SQL)

    def patient_exists(self, patient_id: str) -> bool:
        """True if the index holds this PatientID."""
        return bool(self.read("SELECT 1 FROM patients WHERE patient_id = ?", (patient_id,)))

    def least_recently_stored(self, *, spare: Iterable[str], stored_before: float,
                              limit: int = 8) -> list[PatientUsage]:
        """The patients stored longest ago (Orthanc's recycling order), oldest first,
        except the PatientIDs in ``spare`` and those stored at or after ``stored_before``."""
        spare = list(spare)
        rows = self.read(
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

    def ingest_since(self, since: float) -> tuple[int, float | None]:
        """(bytes of the instances received after ``since``, time of the oldest instance)."""
        (row,) = self.read(
            """SELECT (SELECT coalesce(sum(file_size), 0) FROM instances WHERE received_at > ?),
                      (SELECT min(received_at) FROM instances)""", (since,))
        return row[0], row[1]

    def settle_timestamps(self) -> None:
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

        self.run_write(settle)


class Snapshot:
    """An index database that is not the live index, on a connection the caller holds."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def counts(self) -> dict[str, int]:
        """:meth:`Maintenance.counts` of this database."""
        return dict(zip(COUNT_NAMES, self.conn.execute(_COUNTS_SQL).fetchone()))

    def schema_version(self) -> int:
        """The schema version (PRAGMA user_version) of this database."""
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def files(self) -> Iterator[tuple[str, str, int, str]]:
        """(sop_instance_uid, file_path, file_size, sha256) of every instance, streamed."""
        yield from self.conn.execute(_FILES_SQL)

    @staticmethod
    def checkpoint(path: Path) -> None:
        """Fold the WAL of the closed database at ``path`` into the file itself, so the
        file alone is the whole database (before it is moved or copied)."""
        conn = apsw.Connection(str(path))
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()  # the last connection: SQLite removes the -wal and -shm files
