"""What the index keeps of an Orthanc archive's adoption (schema: _SCHEMA_ADOPTION).

A mixin of :class:`appliance.store.index.Index`. One row per Orthanc DICOM
attachment seen, written in the same transaction as the instance row it gave,
so that a crash leaves both or neither: a restart adopts exactly what is not
marked yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import apsw

from appliance.lazyclasses import lazy_dataclass
from appliance.store.index.instances import InsertOutcome, InstanceRecord, _delete, _insert

# The outcome of an attachment that is tried again at every pass.
UNREADABLE = "unreadable"
DUPLICATE = "duplicate"


@lazy_dataclass(frozen=True)
class AdoptionMark:
    """One Orthanc attachment's outcome, as the index keeps it."""

    uuid: str                       # Orthanc's attachment uuid
    orthanc_instance: str | None    # Orthanc's public id of its instance
    sop_instance_uid: str | None
    outcome: str                    # linked | referenced | copied | decompressed | duplicate | unreadable
    bytes: int
    reason: str | None = None
    verified: bool = True           # False: Orthanc's MD5 still to be compared


@lazy_dataclass(frozen=True)
class Superseded:
    """An earlier adoption that a new attachment of the same instance replaces:
    Orthanc overwrote the instance since (OverwriteInstances)."""

    uuid: str                       # the earlier attachment, which Orthanc no longer lists
    file_path: str                  # the instance's file as that adoption left it


class Adopted:
    """The adoption operations of the index."""

    def adopted_uuids(self) -> set[str]:
        """The Orthanc attachments already settled (every outcome but unreadable)."""
        return {r[0] for r in self.read("SELECT uuid FROM orthanc_adopted WHERE outcome != ?",
                                        (UNREADABLE,))}

    def adoption_unreadable(self, limit: int = 100) -> list[tuple[str, str | None, str]]:
        """(uuid, Orthanc instance id, why) of the attachments that could not be read."""
        return self.read("SELECT uuid, orthanc_instance, coalesce(reason, '') FROM orthanc_adopted "
                         "WHERE outcome = ? ORDER BY adopted_at LIMIT ?", (UNREADABLE, limit))

    def adoption_totals(self) -> dict[str, tuple[int, int]]:
        """outcome -> (attachments, bytes) of everything adopted so far."""
        return {o: (n, b) for o, n, b in self.read(
            "SELECT outcome, count(*), coalesce(sum(bytes), 0) FROM orthanc_adopted GROUP BY outcome")}

    def record_adoption(self, items: Iterable[tuple[InstanceRecord | None, AdoptionMark,
                                                    Superseded | None]],
                        dirs: Iterable[Path]) -> list[InsertOutcome | None]:
        """Insert the instances and their marks in one transaction, once
        ``dirs`` (where their files were placed) are fsynced. An instance is
        inserted over an existing one only when the item names it superseded
        (an earlier adoption of an attachment Orthanc has replaced since) and
        the row still names that adoption's file: its mark goes and the
        outcome's ``replaced_file`` is for the caller to remove. An instance
        found already there otherwise gets its mark turned into a duplicate;
        the caller removes the file it placed for it."""
        batch = list(items)

        def write(conn: apsw.Connection) -> list[InsertOutcome | None]:
            now = time.time()
            done: list[InsertOutcome | None] = []
            for record, mark, superseded in batch:
                outcome = None
                if record is not None:
                    # A store may have replaced the superseded file since it was found.
                    overwrite = superseded is not None and _file_of(
                        conn, record.sop_instance_uid) == superseded.file_path
                    outcome = _insert(conn, record, overwrite=overwrite)
                    if overwrite:
                        conn.execute("DELETE FROM orthanc_adopted WHERE uuid = ?", (superseded.uuid,))
                if outcome is not None and not outcome.inserted:
                    mark = AdoptionMark(mark.uuid, mark.orthanc_instance, mark.sop_instance_uid,
                                        DUPLICATE, mark.bytes, "already stored")
                conn.execute(
                    "INSERT OR REPLACE INTO orthanc_adopted (uuid, orthanc_instance, "
                    "sop_instance_uid, outcome, bytes, reason, adopted_at, verified) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (mark.uuid, mark.orthanc_instance, mark.sop_instance_uid, mark.outcome,
                     mark.bytes, mark.reason, now, int(mark.verified or mark.outcome == DUPLICATE)))
                done.append(outcome)
            return done

        return self.run_write(write, dirs)

    def adoption_unverified(self) -> list[tuple[str, str, str, int, str]]:
        """(uuid, SOP Instance UID, our file path, bytes, Study Instance UID) of
        the adopted files whose MD5 is still to be compared with Orthanc's."""
        return self.read(
            "SELECT m.uuid, m.sop_instance_uid, i.file_path, m.bytes, st.study_instance_uid "
            "FROM orthanc_adopted m JOIN instances i ON i.sop_instance_uid = m.sop_instance_uid "
            "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
            "WHERE m.verified = 0")

    def adoption_placed(self, sop_instance_uid: str) -> list[str]:
        """Uuids of the attachments adopted as this instance's file (linked,
        referenced, copied or decompressed), whether or not the instance still
        has that file."""
        return [r[0] for r in self.read(
            "SELECT uuid FROM orthanc_adopted WHERE sop_instance_uid = ? AND outcome NOT IN (?, ?)",
            (sop_instance_uid, UNREADABLE, DUPLICATE))]

    def adoption_verified(self, uuids: Iterable[str]) -> None:
        """These adopted files matched Orthanc's MD5."""
        done = list(uuids)
        self.run_write(lambda conn: conn.executemany(
            "UPDATE orthanc_adopted SET verified = 1 WHERE uuid = ?", [(u,) for u in done]))

    def adoption_withdraw(self, uuid: str, sop_instance_uid: str, file_path: str,
                          reason: str) -> str | None:
        """An adopted file turned out damaged: its instance row goes (the path
        of our file is returned, for the caller to remove) unless the instance
        is another file by now (replaced by a store), and its mark says why, so
        the next pass tries it again."""
        def write(conn: apsw.Connection) -> str | None:
            path = _delete_if_at(conn, sop_instance_uid, file_path)
            conn.execute("UPDATE orthanc_adopted SET outcome = ?, reason = ?, verified = 1 "
                         "WHERE uuid = ?", (UNREADABLE, reason, uuid))
            return path
        return self.run_write(write)

    def instances_with_path_prefix(self, path_prefix: str) -> list[tuple[str, str]]:
        """(SOP Instance UID, file path) of the instances whose file path starts with
        ``path_prefix`` (the references to Orthanc's files: appliance.store.blobs)."""
        return self.read("SELECT sop_instance_uid, file_path FROM instances "
                         "WHERE substr(file_path, 1, ?) = ?", (len(path_prefix), path_prefix))

    def adoption_forget(self, items: Iterable[tuple[str, str, str]]) -> int:
        """Orthanc deleted these attachments (uuid, SOP Instance UID, file path), adopted
        by reference: each instance row goes unless a store replaced its file since, and
        each mark goes too (nothing of it is left to adopt). One transaction; returns how
        many rows went."""
        batch = list(items)

        def write(conn: apsw.Connection) -> int:
            gone = 0
            for uuid, sop_instance_uid, file_path in batch:
                gone += _delete_if_at(conn, sop_instance_uid, file_path) is not None
                conn.execute("DELETE FROM orthanc_adopted WHERE uuid = ?", (uuid,))
            return gone
        return self.run_write(write) if batch else 0

    def carry_adoption_marks(self, rows: Iterable[tuple]) -> None:
        """Take over marks of another index (a reindex: :func:`marks_to_carry`
        of appliance.store.adoption), as they were."""
        batch = list(rows)
        self.run_write(lambda conn: conn.executemany(
            "INSERT OR REPLACE INTO orthanc_adopted (uuid, orthanc_instance, sop_instance_uid, "
            "outcome, bytes, reason, adopted_at, verified) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch))

    def adoption_retried(self) -> set[str]:
        """Uuids marked unreadable: tried again, their MD5 compared at once."""
        return {r[0] for r in self.read("SELECT uuid FROM orthanc_adopted WHERE outcome = ?",
                                        (UNREADABLE,))}


def _delete_if_at(conn: apsw.Connection, sop_instance_uid: str, file_path: str) -> str | None:
    """Delete the instance's row if it still names ``file_path`` (a store may have
    replaced it since); the path deleted, or None."""
    return _delete(conn, sop_instance_uid) if _file_of(conn, sop_instance_uid) == file_path else None


def _file_of(conn: apsw.Connection, sop_instance_uid: str) -> str | None:
    """The file path of the instance's row, None when there is no row."""
    row = conn.execute("SELECT file_path FROM instances WHERE sop_instance_uid = ?",
                       (sop_instance_uid,)).fetchone()
    return row[0] if row else None
