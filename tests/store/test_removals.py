"""Archive.delete and Archive.modify_study in-process, on real files and a
real SQLite index: summaries, doomed files swept at start, the audit trail,
the header rewrite (UIDs, character set, pixels untouched)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from appliance.store import Archive, AuditEntry, ModifyConflict, ModifyError
from appliance.store.blobs import BlobStore
from tests.store.test_archive import ORIGIN, archive, incoming_copy, stored_files  # noqa: F401
from tests.store.test_index_summaries import assert_summaries_right
from tests.support import new_dataset

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def _study(folder: Path, series_sizes: tuple[int, ...], *, name="Doe^John", pid="PAT1",
           charset="ISO_IR 192") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    paths = []
    for s, count in enumerate(series_sizes, start=1):
        series = generate_uid()
        for i in range(count):
            ds = new_dataset(US_IMAGE, charset=charset)
            ds.PatientName, ds.PatientID, ds.PatientSex = name, pid, "M"
            ds.AccessionNumber = "ACC1"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = ("US", "SR")[s % 2], s, i + 1
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 4, 6, 8, 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
            ds.PixelData = bytes(range(i, i + 24))
            path = folder / f"{study[-8:]}_{s}_{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def _store_all(archive: Archive, paths: list[Path]) -> str:
    for p in paths:
        assert archive.store_instance(incoming_copy(archive, p), ORIGIN).result.stored
    return pydicom.dcmread(paths[0]).StudyInstanceUID


def test_series_delete_leaves_the_rest_of_the_study(archive, tmp_path):
    study = _store_all(archive, _study(tmp_path / "a", (3, 2)))
    series = [s.series_instance_uid for s in archive.instances_in(study)]
    first, second = series[0], series[-1]
    gone = archive.delete(study, second, user="tester", reason="wrong series")
    assert (gone.instances, gone.patients) == (2, 0)
    assert archive.counts()["instances"] == 3 and len(stored_files(archive)) == 3
    assert {i.series_instance_uid for i in archive.instances_in(study)} == {first}
    assert_summaries_right(archive.index)
    (row,) = archive.index.read("SELECT number_of_series, number_of_instances, modalities "
                                "FROM studies")
    assert row == (1, 3, "SR")
    assert archive.delete(study, second, user="tester") is None  # a second delete: unknown
    gone = archive.delete(study, user="tester")
    assert (gone.instances, gone.patients) == (3, 1)
    assert archive.counts() == dict(patients=0, studies=0, series=0, instances=0, bytes=0)
    assert stored_files(archive) == []
    assert archive.index.read("SELECT count(*) FROM doomed_files") == [(0,)]
    trail = archive.audit_trail()
    assert [(e.action, e.level, e.instances, e.user) for e in trail] == [
        ("delete", "Study", 3, "tester"), ("delete", "Series", 2, "tester")]
    assert trail[1].uids == {"StudyInstanceUID": study, "SeriesInstanceUID": second}
    assert trail[1].reason == "wrong series"


def test_instance_under_the_wrong_parents_is_not_deleted(archive, tmp_path):
    study = _store_all(archive, _study(tmp_path / "a", (2,)))
    sop = archive.instances_in(study)[0].sop_instance_uid
    assert archive.delete(generate_uid(), None, None, user="t") is None
    assert archive.delete(study, generate_uid(), sop, user="t") is None
    assert archive.delete(study, archive.instances_in(study)[0].series_instance_uid, sop,
                          user="t").instances == 1
    assert archive.counts()["instances"] == 1


def test_doomed_files_are_removed_at_start(tmp_path):
    """What a crash between the commit and the unlinks leaves: listed files."""
    a = Archive(tmp_path / "storage", tmp_path / "index")
    a.open()
    study = _store_all(a, _study(tmp_path / "a", (2,)))
    kept = a.instances_in(study)[0]
    a.index.delete_scope(study, kept.series_instance_uid, a.instances_in(study)[1].sop_instance_uid,
                         audit=AuditEntry("t", "delete", "Instance", {}))
    stray = BlobStore.relpath(BlobStore.new_id())
    a.blobs.path(stray).write_bytes(b"new file of an interrupted patient fix")
    a.index.doom_files([(stray, 38), (kept.file_path, kept.file_size)])  # never unlink an indexed file
    a.close()
    assert len(stored_files(a)) == 3
    b = Archive(tmp_path / "storage", tmp_path / "index")
    b.open()
    try:
        assert [p.name for p in stored_files(b)] == [Path(kept.file_path).name]
        assert b.index.read("SELECT count(*) FROM doomed_files") == [(0,)]
        assert b.counts()["instances"] == 1
    finally:
        b.close()


@pytest.mark.parametrize("keep_uids", [False, True])
def test_modify_rewrites_the_patient_and_swaps(archive, tmp_path, keep_uids):
    paths = _study(tmp_path / "a", (3, 1))
    study = _store_all(archive, paths)
    old = {i.sop_instance_uid: i for i in archive.instances_in(study)}
    received = sorted(r[0] for r in archive.index.read("SELECT received_at FROM instances"))
    old_pixels = {pydicom.dcmread(archive.file_of(i)).PixelData for i in old.values()}
    done = archive.modify_study(study, {"PatientName": "Roe^Richard", "PatientID": "PAT2",
                                        "AccessionNumber": "ACC9"},
                                keep_uids=keep_uids, user="tester", reason="DCM 113038")
    assert done.instances == 4
    assert (done.study_instance_uid == study) is keep_uids
    assert archive.instances_in(study) == [] or keep_uids
    new = archive.instances_in(done.study_instance_uid)
    assert len(new) == 4 and len(stored_files(archive)) == 4
    assert ({i.sop_instance_uid for i in new} == set(old)) is keep_uids
    assert len({i.series_instance_uid for i in new}) == 2
    datasets = [pydicom.dcmread(archive.file_of(i)) for i in new]
    assert {str(ds.PatientName) for ds in datasets} == {"Roe^Richard"}
    assert {ds.PatientID for ds in datasets} == {"PAT2"}
    assert {ds.AccessionNumber for ds in datasets} == {"ACC9"}
    assert {ds.PatientSex for ds in datasets} == {"M"}  # not replaced: kept
    assert {ds.PixelData for ds in datasets} == old_pixels
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)
    assert archive.index.read("SELECT patient_id, patient_name FROM patients") == [("PAT2", "Roe^Richard")]
    assert archive.index.read("SELECT accession_number FROM studies") == [("ACC9",)]
    assert_summaries_right(archive.index)
    assert archive.index.read("SELECT count(*) FROM doomed_files") == [(0,)]
    # Received when the originals were (the forecast's ingest rate is unchanged).
    assert sorted(r[0] for r in archive.index.read("SELECT received_at FROM instances")) == received
    (entry,) = archive.audit_trail()
    assert (entry.action, entry.level, entry.instances, entry.reason) == (
        "modify", "Study", 4, "DCM 113038")
    assert entry.uids == {"StudyInstanceUID": study,
                          "NewStudyInstanceUID": done.study_instance_uid}


def test_modify_to_a_non_ascii_name_recodes_the_data_set(archive, tmp_path):
    study = _store_all(archive, _study(tmp_path / "a", (1,), name="Muller^Hans",
                                       charset="ISO_IR 100"))
    done = archive.modify_study(study, {"PatientName": "Müller^Jürgen"}, keep_uids=False,
                                user="t")
    (inst,) = archive.instances_in(done.study_instance_uid)
    ds = pydicom.dcmread(archive.file_of(inst))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert archive.index.read("SELECT patient_name FROM patients") == [("Müller^Jürgen",)]


def test_modify_that_fails_changes_nothing(archive, tmp_path):
    study = _store_all(archive, _study(tmp_path / "a", (2,)))
    victim = archive.instances_in(study)[1]
    archive.file_of(victim).write_bytes(b"not DICOM any more")
    with pytest.raises(ModifyError):
        archive.modify_study(study, {"PatientID": "X"}, keep_uids=False, user="t")
    assert len(archive.instances_in(study)) == 2
    assert len(stored_files(archive)) == 2
    assert archive.index.read("SELECT count(*) FROM doomed_files") == [(0,)]
    assert archive.audit_trail() == []


def test_modify_of_a_study_deleted_meanwhile_changes_nothing(archive, tmp_path, monkeypatch):
    """A delete that lands while the new files are written: the swap finds the
    old instances gone and gives up, rather than bring the study back."""
    import appliance.store.fix_patient as fix

    study = _store_all(archive, _study(tmp_path / "a", (3,)))
    rewrite = fix._rewrite

    def rewrite_then_delete(src, out, changes, uids):
        rewrite(src, out, changes, uids)
        archive.delete(study, user="other")

    monkeypatch.setattr(fix, "_rewrite", rewrite_then_delete)
    with pytest.raises(ModifyConflict):
        archive.modify_study(study, {"PatientID": "X"}, keep_uids=False, user="t")
    assert archive.counts()["instances"] == 0 and stored_files(archive) == []
    assert archive.index.read("SELECT count(*) FROM doomed_files") == [(0,)]
    assert [e.action for e in archive.audit_trail()] == ["delete"]
