"""Deletes, the swap of a fixed study, the files owed a removal, the audit trail.

A mixin of :class:`appliance.store.index.Index`. The crash-safety rule
(schema ``doomed_files``): a row and the listing of its file as doomed change
in one transaction, and a file is unlinked only once it is listed, so after
any crash the start-up sweep (:meth:`Removals.doomed_files`) finds every file
that must still go, and no row ever names a missing file.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import apsw

from appliance.lazyclasses import lazy_dataclass
from appliance.store.index.instances import InstanceRecord, _insert, _keep_summaries


class StudyChanged(Exception):
    """A swap found the old instances no longer all there (nothing was changed)."""


@lazy_dataclass(frozen=True)
class AuditEntry:
    """One line of the audit trail (who deleted or changed what, and why)."""

    user: str
    action: str                 # "delete" | "modify"
    level: str                  # "Patient" | "Study" | "Series" | "Instance"
    uids: dict[str, str]
    reason: str = ""
    instances: int = 0
    time: float = 0.0

    def as_json(self) -> dict:
        """The entry as GET /audit shows it."""
        return {"Time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
                "User": self.user, "Action": self.action, "Level": self.level,
                "UIDs": self.uids, "Reason": self.reason, "Instances": self.instances}


@lazy_dataclass(frozen=True)
class Removed:
    """What a delete (or the old side of a swap) took out of the index."""

    files: list[tuple[str, int]]    # (file_path, file_size), now doomed
    patients: int                   # patients left without a study, gone too

    @property
    def bytes(self) -> int:
        """Bytes of the files removed."""
        return sum(size for _, size in self.files)


_SCOPE_SELECT = """
    SELECT i.id, i.file_path, i.file_size, i.series_pk, se.study_pk, st.patient_pk
    FROM instances i JOIN series se ON se.id = i.series_pk
    JOIN studies st ON st.id = se.study_pk WHERE """


def _remove(conn: apsw.Connection, where: str, args: tuple) -> Removed:
    """Delete the instance rows selected by ``where`` (over i, se, st), their
    parents left empty, keep the summaries of the rest right (a series delete
    leaves its study's counts and modalities true), and list their files as
    doomed; all inside the caller's transaction."""
    rows = list(conn.execute(_SCOPE_SELECT + where, args))
    if not rows:
        return Removed([], 0)
    conn.execute("DELETE FROM instances WHERE id IN (SELECT value FROM json_each(?))",
                 (json.dumps([r[0] for r in rows]),))
    per_series = Counter((r[3], r[4]) for r in rows)
    for (series_pk, study_pk), count in per_series.items():
        conn.execute("DELETE FROM series WHERE id = ? AND NOT EXISTS "
                     "(SELECT 1 FROM instances WHERE series_pk = ?)", (series_pk, series_pk))
        _keep_summaries(conn, series_pk, study_pk, -count, representative_may_change=True)
    for study_pk in {r[4] for r in rows}:
        conn.execute("DELETE FROM studies WHERE id = ? AND NOT EXISTS "
                     "(SELECT 1 FROM series WHERE study_pk = ?)", (study_pk, study_pk))
    patients = 0
    for patient_pk in {r[5] for r in rows}:
        conn.execute("DELETE FROM patients WHERE id = ? AND NOT EXISTS "
                     "(SELECT 1 FROM studies WHERE patient_pk = ?)", (patient_pk, patient_pk))
        patients += conn.changes()
    files = [(r[1], r[2]) for r in rows]
    _doom(conn, files)
    return Removed(files, patients)


def _doom(conn: apsw.Connection, files: Iterable[tuple[str, int]]) -> None:
    now = time.time()
    conn.executemany("INSERT OR IGNORE INTO doomed_files (file_path, file_size, since) "
                     "VALUES (?, ?, ?)", [(path, size, now) for path, size in files])


def _audit(conn: apsw.Connection, entry: AuditEntry) -> None:
    conn.execute("INSERT INTO audit (time, user, action, level, uids, reason, instances) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (entry.time or time.time(), entry.user, entry.action, entry.level,
                  json.dumps(entry.uids), entry.reason, entry.instances))


def _scope(study_uid: str | None, series_uid: str | None, sop_uid: str | None,
           patient_pk: int | None = None) -> tuple[str, tuple]:
    where, args = [], []
    for column, value in (("st.patient_pk", patient_pk), ("st.study_instance_uid", study_uid),
                          ("se.series_instance_uid", series_uid),
                          ("i.sop_instance_uid", sop_uid)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    return " AND ".join(where), tuple(args)


class Removals:
    """The delete, swap, doomed-file and audit operations of the index."""

    def delete_scope(self, study_uid: str | None, series_uid: str | None = None,
                     sop_uid: str | None = None, *, audit: AuditEntry,
                     patient_pk: int | None = None) -> Removed:
        """Delete a study, a series in it or an instance in that (or, by
        ``patient_pk``, a patient with everything of it) in one transaction
        with its audit entry; its files are listed as doomed. Nothing matched:
        an empty :class:`Removed` and no audit entry."""
        where, args = _scope(study_uid, series_uid, sop_uid, patient_pk)

        def delete(conn: apsw.Connection) -> Removed:
            removed = _remove(conn, where, args)
            if removed.files:
                _audit(conn, replace(audit, instances=len(removed.files)))
            return removed

        return self.run_write(delete)

    def doom_files(self, files: Iterable[tuple[str, int]]) -> None:
        """List files as doomed before they are placed (the new files of a
        patient fix: garbage unless :meth:`swap_instances` takes them in)."""
        batch = list(files)
        self.run_write(lambda conn: _doom(conn, batch))

    def swap_instances(self, old_ids: list[int], records: list[InstanceRecord], *,
                       patient: dict[str, str | None], audit: AuditEntry,
                       dirs: Iterable[Path]) -> tuple[Removed, int]:
        """One transaction: delete the instance rows ``old_ids`` (their files
        doomed), insert ``records`` (their files, listed as doomed by
        :meth:`doom_files`, taken off the list), set ``patient``'s columns
        (patient_name... by column name) on the patient row of the new
        PatientID (kept when it has other studies), add the audit entry.
        ``dirs`` (where the new files were renamed) are fsynced before the
        commit. Returns (what was removed, change in the number of patients).
        Raises StudyChanged when some of ``old_ids`` are gone, and if a
        record's SOP Instance UID is already stored (nothing changed then)."""
        records = list(records)

        def swap(conn: apsw.Connection) -> tuple[Removed, int]:
            (before,) = conn.execute("SELECT count(*) FROM patients").fetchone()
            removed = _remove(conn, "i.id IN (SELECT value FROM json_each(?))",
                              (json.dumps(old_ids),))
            if len(removed.files) != len(old_ids):
                # Deleted (or fixed by another request) meanwhile: swapping
                # in the new study would bring back what is gone, or two.
                raise StudyChanged("instances of the study were deleted or replaced meanwhile")
            for rec in records:
                if not _insert(conn, rec, overwrite=False).inserted:
                    raise apsw.ConstraintError(f"instance {rec.sop_instance_uid} is already stored")
            conn.execute("DELETE FROM doomed_files WHERE file_path IN "
                         "(SELECT value FROM json_each(?))",
                         (json.dumps([r.file_path for r in records]),))
            if patient and records:
                sets = ", ".join(f"{column} = ?" for column in patient)
                conn.execute(f"UPDATE patients SET {sets} WHERE patient_id = ?",
                             (*patient.values(), records[0].patient_id))
            _audit(conn, audit)
            (after,) = conn.execute("SELECT count(*) FROM patients").fetchone()
            return removed, after - before

        return self.run_write(swap, dirs)

    def received_times(self, instance_ids: list[int]) -> dict[int, float]:
        """When each of these instances was received, by row id."""
        return dict(self.read("SELECT id, received_at FROM instances WHERE id IN "
                              "(SELECT value FROM json_each(?))", (json.dumps(instance_ids),)))

    def doomed_files(self) -> list[tuple[str, bool]]:
        """(file_path, still named by an instance row) of every doomed file."""
        return self.read("SELECT d.file_path, EXISTS (SELECT 1 FROM instances i "
                         "WHERE i.file_path = d.file_path) FROM doomed_files d")

    def forget_doomed(self, paths: Iterable[str]) -> None:
        """Take files off the doomed list (unlinked, or kept after all)."""
        batch = list(paths)
        self.run_write(lambda conn: conn.execute(
            "DELETE FROM doomed_files WHERE file_path IN (SELECT value FROM json_each(?))",
            (json.dumps(batch),)))

    def audit_entries(self, limit: int, offset: int = 0) -> list[AuditEntry]:
        """The audit trail, newest first."""
        rows = self.read("SELECT user, action, level, uids, reason, instances, time FROM audit "
                         "ORDER BY time DESC, id DESC LIMIT ? OFFSET ?", (limit, offset))
        return [AuditEntry(u, a, lv, json.loads(uids), r, n, t)
                for u, a, lv, uids, r, n, t in rows]

