"""``pacs-appliance reindex``: the index deleted, rebuilt from the stored files alone,
and compared with the original, row by row."""

from __future__ import annotations

import os
import shutil

from pydicom.uid import generate_uid

from tests.ops import cli, image
from tests.support import Daemon, base_config, run, scu_store

# Everything the files can tell (not: internal ids, created/updated times, where an
# instance came from).
QUERIES = {
    "patients": "SELECT patient_id, patient_name, patient_birth_date, patient_sex FROM patients",
    "studies": """SELECT st.study_instance_uid, p.patient_id, st.study_date, st.study_time,
                  st.accession_number, st.study_description, st.referring_physician_name, st.study_id
                  FROM studies st JOIN patients p ON p.id = st.patient_pk""",
    "series": """SELECT se.series_instance_uid, st.study_instance_uid, se.modality, se.series_number,
                 se.series_description FROM series se JOIN studies st ON st.id = se.study_pk""",
    "instances": """SELECT i.sop_instance_uid, se.series_instance_uid, i.sop_class_uid,
                    i.instance_number, i.number_of_frames, i.rows, i.columns, i.transfer_syntax_uid,
                    i.specific_character_set, i.file_path, i.file_size, i.sha256, i.metadata
                    FROM instances i JOIN series se ON se.id = i.series_pk""",
}


def _rows(daemon: Daemon) -> dict[str, list[tuple]]:
    return {name: sorted(daemon.rows(sql), key=repr) for name, sql in QUERIES.items()}


def test_reindex_rebuilds_the_same_index(tmp_path):
    files = []
    for p, name in enumerate(["Doe^John", "Müller^Jürgen", "O'Brien^Pat"]):
        for s in range(2):
            study, series = generate_uid(), generate_uid()
            files += [image(tmp_path / "in", f"R{p}", study=study, series=series, number=i)
                      for i in range(3)]
    daemon = Daemon(tmp_path / "d", base_config(tmp_path / "d")).start()
    assert scu_store(daemon.dicom_port, files) == [0] * len(files)
    original = _rows(daemon)
    assert len(original["instances"]) == 18 and len(original["patients"]) == 3

    out = cli(daemon.config_path, "reindex")
    assert out.returncode == 2 and f"another pacs-appliance (pid {daemon.proc.pid})" in out.stderr
    assert daemon.stop() == 0

    # The index is lost; the storage holds junk too.
    for suffix in ("", "-wal", "-shm"):
        daemon.index_file.with_name(daemon.index_file.name + suffix).unlink(missing_ok=True)
    junk = daemon.storage / "ab" / ("ab" + "0" * 30 + ".dcm")
    junk.write_bytes(b"this is not DICOM" * 10)
    (daemon.storage / "ab" / "notes.txt").write_text("not ours")
    (daemon.storage / ".incoming" / "x.part").write_bytes(b"partial")
    # An older copy of an instance under another id (an overwrite cut short).
    first = daemon.storage / original["instances"][0][9]
    older = daemon.storage / "cd" / ("cd" + "1" * 30 + ".dcm")
    shutil.copy(first, older)
    os.utime(older, (first.stat().st_mtime - 3600,) * 2)

    out = cli(daemon.config_path, "reindex")
    assert out.returncode == 4, out.stdout + out.stderr
    assert out.stdout.startswith("reindex: 18 instances indexed from ")
    assert "(3 patients, 6 studies, 6 series," in out.stdout
    assert f"unreadable, not indexed (left on disk): ab/{junk.name}: not a DICOM object" in out.stdout
    assert f"older copy of an instance, not indexed (left on disk): cd/{older.name}" in out.stdout
    assert out.stderr.strip() == "pacs-appliance: reindex: 1 file(s) could not be read (listed above)"
    assert "previous index" not in out.stdout
    assert _rows(daemon) == original
    assert junk.exists() and older.exists()
    # received_at is the time the file was stored.
    (received,) = daemon.rows("SELECT received_at FROM instances WHERE file_path = ?",
                              (original["instances"][0][9],))
    assert abs(received[0] - first.stat().st_mtime) < 1e-3

    junk.unlink()
    out = cli(daemon.config_path, "reindex")
    assert out.returncode == 0 and "the previous index is kept in " in out.stdout
    assert _rows(daemon) == original

    daemon.start()  # serves the rebuilt index
    assert run(["echoscu", "-aec", "ORTHANC", "127.0.0.1", str(daemon.dicom_port)]).returncode == 0
    assert daemon.rows("SELECT count(*) FROM instances") == [(18,)]
    daemon.stop()
