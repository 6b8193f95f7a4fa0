"""Modality Performed Procedure Steps (PS3.4 F.7) kept in the index.

A mixin of :class:`appliance.store.index.Index`.
"""

from __future__ import annotations


import apsw

from appliance.lazyclasses import lazy_dataclass

@lazy_dataclass(frozen=True)
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


class Mpps:
    """The MPPS operations of the index."""

    def mpps_insert(self, record: MppsRecord) -> bool:
        """Insert a new procedure step; False (nothing written) if its SOP Instance UID exists."""
        def insert(conn: apsw.Connection) -> bool:
            if conn.execute("SELECT 1 FROM mpps WHERE sop_instance_uid = ?",
                            (record.sop_instance_uid,)).fetchone():
                return False
            conn.execute(f"INSERT INTO mpps ({', '.join(_MPPS_COLS)}) "
                         f"VALUES ({', '.join('?' * len(_MPPS_COLS))})",
                         tuple(getattr(record, c) for c in _MPPS_COLS))
            return True

        return self.run_write(insert)

    def mpps_get(self, sop_instance_uid: str) -> MppsRecord | None:
        """The procedure step with this SOP Instance UID, or None."""
        rows = self.read(f"SELECT {', '.join(_MPPS_COLS)} FROM mpps WHERE sop_instance_uid = ?",
                         (sop_instance_uid,))
        return MppsRecord(*rows[0]) if rows else None

    def mpps_update(self, previous: MppsRecord, *, status: str, dataset: str,
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

        return self.run_write(update)

    def mpps_states(self, study_uids: set[str], accession_numbers: set[str],
                    ) -> dict[tuple[str, str], str]:
        """The newest step's status per ("study", StudyInstanceUID) and per
        ("accession", AccessionNumber) among those given (the worklist page).

        Both columns are indexed; the lists are bounded by the caller's worklist."""
        found: dict[tuple[str, str], str] = {}
        for kind, column, values in (("study", "study_instance_uid", study_uids),
                                     ("accession", "accession_number", accession_numbers)):
            values = sorted(values)
            for start in range(0, len(values), 500):  # SQLite's bound variable limit
                chunk = values[start:start + 500]
                rows = self.read(
                    f"SELECT {column}, status FROM mpps WHERE {column} IN "
                    f"({', '.join('?' * len(chunk))}) ORDER BY updated_at", tuple(chunk))
                found.update(((kind, value), status) for value, status in rows)
        return found
