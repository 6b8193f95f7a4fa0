"""Orthanc's quotas: MaximumStorageSize / MaximumPatientCount with MaximumStorageMode
Reject and Recycle, end to end and in-process (a store in progress is never recycled)."""

from __future__ import annotations

import re

import pytest

from appliance.ops.quota import StorageMode, StoreAdmission
from appliance.store.archive import Archive, Origin
from tests.ops import OUT_OF_RESOURCES, image, leftovers, stored_files
from tests.support import Daemon, base_config, scu_store


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two small images of each of the patients Q0..Q3, and four 1 MiB images of Q9."""
    folder = tmp_path_factory.mktemp("quota")
    small = {p: [image(folder, p, number=i) for i in range(2)] for p in ("Q0", "Q1", "Q2", "Q3")}
    big = [image(folder, "Q9", number=i, pixels=1024) for i in range(4)]
    return small, big


def _patients(daemon: Daemon) -> list[str]:
    return [r[0] for r in daemon.rows("SELECT patient_id FROM patients ORDER BY patient_id")]


def test_reject_mode(tmp_path, files):
    small, big = files
    daemon = Daemon(tmp_path, base_config(tmp_path, MaximumPatientCount=2, MaximumStorageSize=3,
                                          MaximumStorageMode="Reject")).start()
    try:
        assert scu_store(daemon.dicom_port, small["Q0"] + small["Q1"]) == [0, 0, 0, 0]
        # A third patient is refused; more of a patient already stored is not.
        assert scu_store(daemon.dicom_port, small["Q2"]) == [OUT_OF_RESOURCES] * 2
        assert scu_store(daemon.dicom_port, [image(tmp_path / "more", "Q0", number=7)]) == [0]
        assert _patients(daemon) == ["Q0", "Q1"]
        # MaximumStorageSize 3 MB: the third 1 MiB image of a stored patient no longer fits.
        extra = [image(tmp_path / "big", "Q1", number=10 + i, pixels=1024) for i in range(3)]
        assert scu_store(daemon.dicom_port, extra) == [0, 0, OUT_OF_RESOURCES]
        assert daemon.rows("SELECT count(*) FROM instances") == [(7,)]
        assert len(stored_files(daemon)) == 7 and leftovers(daemon) == []
        assert "MaximumPatientCount (2) reached" in daemon.log()
        assert "MaximumStorageSize (3 MB) reached" in daemon.log()
    finally:
        daemon.stop()


def test_recycle_mode_deletes_the_least_recently_stored_patient(tmp_path, files):
    small, _ = files
    daemon = Daemon(tmp_path, base_config(tmp_path, MaximumPatientCount=2, StableAge=0)).start()
    try:
        assert scu_store(daemon.dicom_port, small["Q0"]) == [0, 0]
        assert scu_store(daemon.dicom_port, small["Q1"]) == [0, 0]
        q0_files = [daemon.storage / r[0] for r in daemon.rows(
            "SELECT file_path FROM instances i JOIN series se ON se.id = i.series_pk JOIN studies st "
            "ON st.id = se.study_pk JOIN patients p ON p.id = st.patient_pk WHERE p.patient_id = 'Q0'")]
        q0_pk = daemon.rows("SELECT id FROM patients WHERE patient_id = 'Q0'")[0][0]
        # Q0 is stored again later than Q1: now Q1 is the least recently stored.
        assert scu_store(daemon.dicom_port, [image(tmp_path / "again", "Q0", number=5)]) == [0]
        assert scu_store(daemon.dicom_port, small["Q2"]) == [0, 0]
        assert _patients(daemon) == ["Q0", "Q2"]
        assert all(f.exists() for f in q0_files)
        assert len(stored_files(daemon)) == 5
        assert scu_store(daemon.dicom_port, small["Q3"]) == [0, 0]
        assert _patients(daemon) == ["Q2", "Q3"]
        assert not any(f.exists() for f in q0_files)
        lines = [line for line in daemon.log().splitlines() if "recycled patient" in line]
        assert len(lines) == 2
        assert re.search(rf"recycled patient #{q0_pk} \(least recently stored", lines[1])
        assert "3 studies, 3 instances" in lines[1]
        assert not any(p in line for line in lines for p in ("Q0", "Q1", "Name^"))  # no IDs, names
    finally:
        daemon.stop()


def test_recycling_spares_patients_being_received(tmp_path):
    """In-process: a patient with a store in progress, or one stored within
    StableAge, is never recycled; when nothing else is left the object is refused."""
    archive = Archive(tmp_path / "storage", tmp_path / "index")
    archive.open()
    try:
        admission = StoreAdmission(archive, minimum_free_mb=0, maximum_storage_mb=0,
                                   maximum_patient_count=1, mode=StorageMode.RECYCLE,
                                   spare_recent_seconds=0)
        archive.admission = admission

        def store(patient: str):
            f = archive.new_incoming()
            f.write(image(tmp_path / "in", patient).read_bytes())
            return archive.store_instance(f, Origin("DICOM", "test"))

        assert store("A").result.stored
        receiving = admission.admit("A", 100)       # a second image of A arriving
        assert receiving.refusal is None
        refused = store("B")
        assert refused.result.dimse_status == OUT_OF_RESOURCES
        assert "MaximumPatientCount (1) reached and no patient can be recycled" in refused.reason
        receiving.close(stored=False)
        assert store("B").result.stored              # now A may go
        assert [r[0] for r in archive.index.read("SELECT patient_id FROM patients")] == ["B"]

        admission._spare_recent = 3600                # B was stored seconds ago: spared
        assert store("C").result.dimse_status == OUT_OF_RESOURCES
        assert admission.snapshot()["recycled_patients"] == 1
    finally:
        archive.close()


def test_forgetting_a_reference_frees_no_disk_space(tmp_path):
    """In-process: deleting an instance adopted by reference (an Orthanc file, only
    forgotten) does not count as freed space between two disk measurements; deleting
    a file of ours does."""
    from appliance.ops.disk import MB, DiskState
    from appliance.store.blobs import reference_to
    from appliance.store.orthanc import attachment_path

    storage = tmp_path / "storage"
    archive = Archive(storage, tmp_path / "index")
    archive.open()
    try:
        def store(patient: str):
            f = archive.new_incoming()
            f.write(image(tmp_path / "in", patient).read_bytes())
            outcome = archive.store_instance(f, Origin("DICOM", "test"))
            assert outcome.result.stored
            return archive.index.read(
                "SELECT st.study_instance_uid, i.file_path, i.file_size FROM instances i "
                "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
                "WHERE i.sop_instance_uid = ?", (outcome.sop_instance_uid,))[0]

        ours_study, _, ours_size = store("OURS")
        theirs_study, theirs_path, theirs_size = store("THEIRS")
        uuid = "0f3e2d1c-0b0a-4998-8776-655443322110"
        orthanc_file = attachment_path(storage, uuid)
        orthanc_file.parent.mkdir(parents=True)
        (storage / theirs_path).rename(orthanc_file)
        archive.index.move_files({theirs_path: reference_to(uuid)})

        admission = StoreAdmission(archive, minimum_free_mb=1, maximum_storage_mb=0,
                                   maximum_patient_count=0, mode=StorageMode.REJECT,
                                   spare_recent_seconds=0)
        archive.admission = admission
        # Measured just below the minimum, by less than either file's size.
        short = min(ours_size, theirs_size) // 2
        admission.disk_changed(DiskState(measured_at=0.0, filesystems=(), missing=(),
                                         store_free=MB - short, minimum_free=MB, forecast=None))
        assert admission.snapshot()["accepting"] is False

        assert archive.delete(theirs_study, user="test").instances == 1
        assert orthanc_file.exists()
        assert admission.snapshot()["accepting"] is False   # nothing was freed on disk

        assert archive.delete(ours_study, user="test").instances == 1
        assert admission.snapshot()["accepting"] is True
    finally:
        archive.close()
