"""Modality Performed Procedure Step end to end (PS3.4 F.7): pynetdicom N-CREATE / N-SET
against the real daemon, its worklist folder and its index; and the worklist cleanup."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.dicom.test_scp import minimal_sc
from tests.support import scu_store
from tests.worklist.helpers import MPPS, find, mwl_query, poll, start_wl_daemon, write_wl

PENDING, SUCCESS = 0xFF00, 0x0000


@pytest.fixture(scope="module")
def d(tmp_path_factory, pynetdicom_env):
    root = tmp_path_factory.mktemp("mpps")
    daemon = start_wl_daemon(root, env=pynetdicom_env(root))
    daemon.folder = Path(daemon.config["Worklists"]["Database"])
    yield daemon
    daemon.stop()


def create_attrs(*, study_uid: str = "", accession: str = "", rp_id: str = "",
                 status: str = "IN PROGRESS", **changes) -> Dataset:
    """An N-CREATE attribute list as an ultrasound scanner sends it."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Ζαχαρίας^Γιάννης"
    ds.PatientID = "P1"
    ssa = Dataset()
    ssa.StudyInstanceUID = study_uid or generate_uid()
    ssa.AccessionNumber = accession
    ssa.RequestedProcedureID = rp_id
    ssa.ScheduledProcedureStepID = "SPS1"
    ssa.ReferencedStudySequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "US1"
    ds.PerformedProcedureStepStartDate = "20240105"
    ds.PerformedProcedureStepStartTime = "093000"
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.PerformedProcedureStepStatus = status
    ds.Modality = "US"
    ds.PerformedSeriesSequence = []
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def final_attrs(status: str = "COMPLETED", **extra) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240105"
    ds.PerformedProcedureStepEndTime = "100000"
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    series.PerformingPhysicianName = "WHO^DR"
    series.ReferencedImageSequence = []
    ds.PerformedSeriesSequence = [series]
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


class Scanner:
    """One association carrying MPPS requests."""

    def __init__(self, port: int, aet: str = "US1") -> None:
        ae = AE(ae_title=aet)
        ae.add_requested_context(MPPS)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
        assert self.assoc.is_established

    def create(self, attrs: Dataset, uid: str | None = "new") -> tuple[Dataset, str | None]:
        uid = generate_uid() if uid == "new" else uid
        status, _ = self.assoc.send_n_create(attrs, MPPS, uid)
        return status, uid

    def set(self, uid: str, changes: Dataset) -> Dataset:
        status, _ = self.assoc.send_n_set(changes, MPPS, uid)
        return status

    def __enter__(self) -> "Scanner":
        return self

    def __exit__(self, *exc) -> None:
        self.assoc.release()


def row(d, uid: str) -> dict | None:
    rows = d.rows("SELECT status, worklist_item, study_instance_uid, accession_number, dataset, "
                  "calling_aet FROM mpps WHERE sop_instance_uid = ?", (uid,))
    if not rows:
        return None
    keys = ("status", "worklist_item", "study_instance_uid", "accession_number", "dataset", "calling_aet")
    return dict(zip(keys, rows[0]))


def answered(d, accession: str) -> list[str]:
    statuses, answers = find(d.dicom_port, mwl_query(AccessionNumber=accession, PatientID=""))
    assert statuses[-1] == SUCCESS
    return [str(a.PatientID) for a in answers]


def test_full_lifecycle_closes_and_archives_the_worklist_item(d):
    study = generate_uid()
    write_wl(d.folder, "life.wl", patient_id="L1", accession="L-ACC", study_uid=study)
    poll(lambda: answered(d, "L-ACC") == ["L1"])
    with Scanner(d.dicom_port) as scanner:
        status, uid = scanner.create(create_attrs(study_uid=study))
        assert status.Status == SUCCESS
        assert row(d, uid)["status"] == "IN PROGRESS" and row(d, uid)["worklist_item"] == "life.wl"
        assert answered(d, "L-ACC") == ["L1"]  # still scheduled while in progress
        progress = Dataset()
        progress.PerformedProcedureStepDescription = "Abdomen, part 1"
        assert scanner.set(uid, progress).Status == SUCCESS
        assert row(d, uid)["status"] == "IN PROGRESS"
        assert scanner.set(uid, final_attrs("COMPLETED")).Status == SUCCESS
        assert answered(d, "L-ACC") == []  # at once, not after the watcher's delay
    stored = row(d, uid)
    assert stored["status"] == "COMPLETED" and stored["calling_aet"] == "US1"
    attrs = json.loads(stored["dataset"])
    assert attrs["00400254"]["Value"] == ["Abdomen, part 1"]  # N-SETs merged
    assert attrs["00100010"]["Value"][0]["Alphabetic"] == "Ζαχαρίας^Γιάννης"
    assert len(attrs["00400340"]["Value"]) == 1
    assert not (d.folder / "life.wl").exists()
    assert (d.folder / "archive" / "life.wl").is_file()
    time.sleep(0.3)  # the watcher sees the file leave: still not answered
    assert answered(d, "L-ACC") == []


def test_no_update_after_a_final_state(d):
    with Scanner(d.dicom_port) as scanner:
        status, uid = scanner.create(create_attrs())
        assert scanner.set(uid, final_attrs("DISCONTINUED")).Status == SUCCESS
        status = scanner.set(uid, final_attrs("COMPLETED"))
        assert status.Status == 0x0110
        assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
        assert status.ErrorID == 0xA710
        late = Dataset()
        late.PerformedProcedureStepDescription = "too late"
        assert scanner.set(uid, late).Status == 0x0110
    assert row(d, uid)["status"] == "DISCONTINUED"


@pytest.mark.parametrize("link", ["accession", "requested_procedure"])
def test_discontinued_links_by_accession_or_requested_procedure(d, link):
    accession, rp_id = f"{link[:3]}-ACC", f"{link[:3]}-RP"  # SH: 16 characters at most
    write_wl(d.folder, f"{link}.wl", patient_id=link, accession=accession,
             requested_procedure_id=rp_id)
    poll(lambda: answered(d, accession) == [link])
    with Scanner(d.dicom_port) as scanner:
        attrs = create_attrs(accession=accession if link == "accession" else "",
                             rp_id=rp_id if link == "requested_procedure" else "")
        status, uid = scanner.create(attrs)  # a new Study Instance UID: not in the item
        assert status.Status == SUCCESS and row(d, uid)["worklist_item"] == f"{link}.wl"
        assert scanner.set(uid, final_attrs("DISCONTINUED")).Status == SUCCESS
    assert answered(d, accession) == []
    assert (d.folder / "archive" / f"{link}.wl").is_file()


def test_error_statuses(d):
    with Scanner(d.dicom_port) as scanner:
        # N-SET of an instance nobody created: No Such SOP Instance
        assert scanner.set(generate_uid(), final_attrs()).Status == 0x0112
        # the same SOP Instance created twice: Duplicate SOP Instance
        status, uid = scanner.create(create_attrs())
        assert status.Status == SUCCESS
        assert scanner.create(create_attrs(), uid)[0].Status == 0x0111
        # N-CREATE must start IN PROGRESS (PS3.4 F.7.2.1.3): Invalid Attribute Value
        status, bad = scanner.create(create_attrs(status="COMPLETED"))
        assert status.Status == 0x0106 and row(d, bad) is None
        # a type 1 attribute missing, or empty: Missing Attribute (Value)
        status, bad = scanner.create(create_attrs(PerformedProcedureStepStatus=None))
        assert status.Status == 0x0120 and "PerformedProcedureStepStatus" in status.ErrorComment
        status, bad = scanner.create(create_attrs(Modality=""))
        assert status.Status == 0x0121 and row(d, bad) is None
        # N-SET to a state that does not exist
        status = scanner.set(uid, final_attrs("DONE"))
        assert status.Status == 0x0106
        # N-SET of an attribute Table F.7.2-1 does not allow to change
        rename = Dataset()
        rename.PatientName = "OTHER^NAME"
        status = scanner.set(uid, rename)
        assert status.Status == 0x0106 and status.AttributeIdentifierList == 0x00100010
        # after all that, the step is intact and still usable
        assert row(d, uid)["status"] == "IN PROGRESS"
        assert scanner.set(uid, final_attrs()).Status == SUCCESS
        # no SOP Instance UID in the request: the SCP makes one
        before = d.rows("SELECT count(*) FROM mpps")[0][0]
        status, _ = scanner.create(create_attrs(), None)
        assert status.Status == SUCCESS
        assert d.rows("SELECT count(*) FROM mpps")[0][0] == before + 1
    assert "MPPS N-CREATE from US1 refused" in d.log()


def test_archiving_can_be_turned_off(d):
    study = generate_uid()
    write_wl(d.folder, "keep.wl", patient_id="K1", accession="K-ACC", study_uid=study)
    poll(lambda: answered(d, "K-ACC") == ["K1"])
    config = dict(d.config, Mpps={"ArchiveFinishedWorklists": False})
    d.config_path.write_text(json.dumps(config))
    count = d.log().count("SIGHUP:")
    d.proc.send_signal(signal.SIGHUP)
    poll(lambda: d.log().count("SIGHUP:") > count)
    try:
        with Scanner(d.dicom_port) as scanner:
            status, uid = scanner.create(create_attrs(study_uid=study))
            assert scanner.set(uid, final_attrs()).Status == SUCCESS
        assert row(d, uid)["status"] == "COMPLETED" and row(d, uid)["worklist_item"] == "keep.wl"
        assert answered(d, "K-ACC") == ["K1"] and (d.folder / "keep.wl").exists()
    finally:
        d.config_path.write_text(json.dumps(d.config))
        d.proc.send_signal(signal.SIGHUP)
        poll(lambda: d.log().count("SIGHUP:") > count + 1)


def test_mpps_refused_to_an_ae_without_rights(tmp_path, pynetdicom_env):
    daemon = start_wl_daemon(tmp_path, env=pynetdicom_env(tmp_path),
                             DicomAlwaysAllowStore=False, DicomAlwaysAllowFindWorklist=False,
                             DicomModalities={"viewer": {"AET": "VIEWER", "Host": "127.0.0.1",
                                                         "Port": 104, "AllowStore": False,
                                                         "AllowFindWorklist": False}})
    try:
        with Scanner(daemon.dicom_port, aet="VIEWER") as scanner:
            status, uid = scanner.create(create_attrs())
            assert status.Status == 0x0124
        assert daemon.rows("SELECT count(*) FROM mpps")[0][0] == 0
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- cleanup


def test_cleanup_on_stable_study_and_after_a_delay(tmp_path):
    daemon = start_wl_daemon(tmp_path, StableAge=1, worklists={
        "DeleteWorklistsOnStableStudy": True, "HousekeepingInterval": 1,
        "DeleteWorklistsDelay": 24})
    try:
        folder = Path(daemon.config["Worklists"]["Database"])
        study = generate_uid()
        write_wl(folder, "by-uid.wl", patient_id="S1", accession="S-UID", study_uid=study)
        write_wl(folder, "by-accession.wl", patient_id="S2", accession="S-ACC",
                 study_uid=generate_uid())
        write_wl(folder, "waiting.wl", patient_id="S3", accession="S-WAIT", study_uid=generate_uid())
        old = write_wl(folder, "old.wl", patient_id="S4", accession="S-OLD")
        day_ago = time.time() - 25 * 3600
        os.utime(old, (day_ago, day_ago))
        poll(lambda: not old.exists())  # older than DeleteWorklistsDelay hours
        sent = tmp_path / "sent"
        sent.mkdir()
        files = []
        for n, ds in enumerate([minimal_sc(StudyInstanceUID=study),
                                minimal_sc(AccessionNumber="S-ACC")]):
            path = sent / f"{n}.dcm"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
            ds.file_meta = meta
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        assert scu_store(daemon.dicom_port, files) == [0, 0]
        poll(lambda: not (folder / "by-uid.wl").exists() and not (folder / "by-accession.wl").exists())
        assert (folder / "waiting.wl").exists()  # its study never came
        statuses, answers = find(daemon.dicom_port, mwl_query(PatientID=""))
        assert [str(a.PatientID) for a in answers] == ["S3"]
        assert "worklist housekeeping: " in daemon.log()
    finally:
        daemon.stop()
