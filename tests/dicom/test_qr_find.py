"""Query/Retrieve C-FIND (Patient Root, Study Root) end to end: the real daemon, filled
with DCMTK's storescu, queried with DCMTK's findscu -P / -S and with pynetdicom."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.ops import cli
from tests.support import Daemon, base_config, new_dataset, run

PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
PENDING, SUCCESS, CANCEL = 0xFF00, 0x0000, 0xFE00
REFUSED, DOES_NOT_MATCH = 0x0124, 0xA900

# PatientID -> (name, character set, birth date, sex)
PATIENTS = {
    "QR-P1": ("Doe^John", "ISO_IR 100", "19700101", "M"),
    "QR-P2": ("Müller^Jürgen", "ISO_IR 100", "19650505", "M"),    # Latin-1 on disk
    "QR-P3": ("Παπαδόπουλος^Γιώργος", "ISO_IR 192", "19800808", "M"),  # UTF-8 on disk
    "QR-P4": ("doe^jane", "ISO_IR 100", "19900909", "F"),
}
UID = "1.2.826.0.1.3680043.8.498.77"
# (PatientID, StudyInstanceUID, StudyDate, StudyTime, AccessionNumber,
#  [(SeriesInstanceUID, Modality, [instance numbers])])
STUDIES = [
    ("QR-P1", f"{UID}.1", "20240110", "101500", "ACC1",
     [(f"{UID}.1.1", "US", [1, 2]), (f"{UID}.1.2", "SR", [1])]),
    ("QR-P1", f"{UID}.2", "20240320", "083000", "ACC2", [(f"{UID}.2.1", "US", [1])]),
    ("QR-P2", f"{UID}.3", "20230601", "120000", "ACC3", [(f"{UID}.3.1", "US", [1])]),
    ("QR-P3", f"{UID}.4", "20240901", "090000", "ACC4", [(f"{UID}.4.1", "US", [1])]),
    ("QR-P4", f"{UID}.5", "20241201", "160000", "ACC5", [(f"{UID}.5.1", "US", [1])]),
]

MODALITIES = {  # Orthanc's object form, with AllowFind and the host checked
    "finder": {"AET": "FINDER", "Host": "127.0.0.1", "Port": 104, "AllowFind": True},
    "nofind": {"AET": "NOFIND", "Host": "127.0.0.1", "Port": 104, "AllowFind": False},
    "elsewhere": {"AET": "FARAWAY", "Host": "10.9.9.9", "Port": 104, "AllowFind": True},
}


BULK_PATIENT = ("Bulk^Patient", "ISO_IR 192", "20000101", "O")


def _instance(path: Path, pid: str, study, series, number: int) -> None:
    name, charset, birth, sex = PATIENTS.get(pid, BULK_PATIENT)
    _, study_uid, date, time_, accession, _ = study
    series_uid, modality, _ = series
    sop_class = BASIC_TEXT_SR if modality == "SR" else SECONDARY_CAPTURE
    ds = new_dataset(sop_class, f"{series_uid}.{number}", charset=charset)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, pid, birth, sex
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, date, time_
    ds.AccessionNumber, ds.StudyID, ds.StudyDescription = accession, accession[-1], "Abdomen"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.SeriesInstanceUID, ds.Modality = series_uid, modality
    ds.SeriesNumber = series_uid.rsplit(".", 1)[1]
    ds.InstanceNumber = number
    ds.PatientAge = "054Y"
    if sop_class == SECONDARY_CAPTURE:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 2
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = b"\0" * 4
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def qr(tmp_path_factory, pynetdicom_env):
    """A daemon holding the studies above, shared by this module's tests."""
    root = tmp_path_factory.mktemp("qr")
    files = root / "files"
    files.mkdir()
    for study in STUDIES:
        for series in study[5]:
            for number in series[2]:
                _instance(files / f"{series[0]}.{number}.dcm", study[0], study, series, number)
    d = Daemon(root, base_config(root, DicomModalities=MODALITIES, DicomCheckModalityHost=True),
               env=pynetdicom_env(root)).start()
    result = run(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(d.dicom_port), "+sd", str(files)])
    assert result.returncode == 0, result.stderr
    yield d
    d.stop()


def findscu(daemon, model: str, out: Path, *keys: str, aet: str = "FINDER"):
    """DCMTK findscu with -k keys; (completed process, answers read back, sorted by the
    order findscu received them)."""
    out.mkdir(exist_ok=True)
    args = ["findscu", "-v", model, "-aet", aet, "-aec", "ORTHANC", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = run(args + ["127.0.0.1", str(daemon.dicom_port)])
    answers = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return result, answers


def pyfind(daemon, sop_class: str, identifier: Dataset, aet: str = "FINDER"):
    """(statuses, answers, last status data set) of one C-FIND sent with pynetdicom."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", daemon.dicom_port, ae_title="ORTHANC")
    assert assoc.is_established
    statuses, answers, last = [], [], None
    try:
        for status, answer in assoc.send_c_find(identifier, sop_class):
            statuses.append(status.Status)
            last = status
            if answer is not None and status.Status == PENDING:
                answers.append(answer)
    finally:
        assoc.release()
    return statuses, answers, last


def query(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# --------------------------------------------------------------------------- findscu, every level


def test_study_root_study_level_by_patient_id_with_computed_keys(qr, tmp_path):
    result, answers = findscu(
        qr, "-S", tmp_path / "a", "QueryRetrieveLevel=STUDY", "PatientID=QR-P1",
        "StudyInstanceUID", "StudyDate", "AccessionNumber", "PatientName", "ModalitiesInStudy",
        "SOPClassesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "NumberOfPatientRelatedStudies", "PatientAge", "AdditionalPatientHistory", "InstanceAvailability",
        "RetrieveAETitle")
    assert result.returncode == 0, result.stderr
    assert "Success" in result.stdout + result.stderr
    by_uid = {str(a.StudyInstanceUID): a for a in answers}
    assert sorted(by_uid) == [f"{UID}.1", f"{UID}.2"]
    first = by_uid[f"{UID}.1"]
    assert first.QueryRetrieveLevel == "STUDY"
    assert first.StudyDate == "20240110" and first.AccessionNumber == "ACC1"
    assert str(first.PatientName) == "Doe^John"
    assert list(first.ModalitiesInStudy) == ["SR", "US"]
    assert sorted(first.SOPClassesInStudy) == sorted([SECONDARY_CAPTURE, BASIC_TEXT_SR])
    assert first.NumberOfStudyRelatedSeries == 2 and first.NumberOfStudyRelatedInstances == 3
    assert first.NumberOfPatientRelatedStudies == 2
    assert first.PatientAge == "054Y"  # not a column: from the stored instance
    assert "AdditionalPatientHistory" in first and not first.AdditionalPatientHistory  # asked, unknown: empty
    assert first.InstanceAvailability == "ONLINE" and first.RetrieveAETitle == "ORTHANC"
    assert by_uid[f"{UID}.2"].NumberOfStudyRelatedInstances == 1


def test_patient_root_every_level(qr, tmp_path):
    result, patients = findscu(qr, "-P", tmp_path / "p", "QueryRetrieveLevel=PATIENT",
                               "PatientID=QR-P*", "PatientName", "PatientBirthDate",
                               "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                               "NumberOfPatientRelatedInstances", "StudyDate")
    assert result.returncode == 0, result.stderr
    assert sorted(str(a.PatientID) for a in patients) == ["QR-P1", "QR-P2", "QR-P3", "QR-P4"]
    p1 = next(a for a in patients if a.PatientID == "QR-P1")
    assert p1.PatientBirthDate == "19700101"
    assert (p1.NumberOfPatientRelatedStudies, p1.NumberOfPatientRelatedSeries,
            p1.NumberOfPatientRelatedInstances) == (2, 3, 4)
    assert "StudyDate" in p1 and not p1.StudyDate  # a lower level's key: present, empty

    _, studies = findscu(qr, "-P", tmp_path / "s", "QueryRetrieveLevel=STUDY", "PatientID=QR-P1",
                         "StudyInstanceUID", "StudyDate=20240301-")
    assert [str(a.StudyInstanceUID) for a in studies] == [f"{UID}.2"]

    _, series = findscu(qr, "-P", tmp_path / "se", "QueryRetrieveLevel=SERIES", "PatientID=QR-P1",
                        f"StudyInstanceUID={UID}.1", "SeriesInstanceUID", "Modality",
                        "NumberOfSeriesRelatedInstances", "SeriesNumber")
    assert sorted((str(a.Modality), a.NumberOfSeriesRelatedInstances) for a in series) == [
        ("SR", 1), ("US", 2)]

    _, images = findscu(qr, "-P", tmp_path / "i", "QueryRetrieveLevel=IMAGE", "PatientID=QR-P1",
                        f"StudyInstanceUID={UID}.1", f"SeriesInstanceUID={UID}.1.1",
                        "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows")
    assert sorted(str(a.SOPInstanceUID) for a in images) == [f"{UID}.1.1.1", f"{UID}.1.1.2"]
    assert all(a.SOPClassUID == SECONDARY_CAPTURE and a.Rows == 2 for a in images)


def test_study_root_series_and_image_levels(qr, tmp_path):
    _, series = findscu(qr, "-S", tmp_path / "se", "QueryRetrieveLevel=SERIES",
                        f"StudyInstanceUID={UID}.1", "SeriesInstanceUID", "Modality=US")
    assert [str(a.SeriesInstanceUID) for a in series] == [f"{UID}.1.1"]
    _, images = findscu(qr, "-S", tmp_path / "i", "QueryRetrieveLevel=IMAGE",
                        f"StudyInstanceUID={UID}.1", f"SeriesInstanceUID={UID}.1.1",
                        "SOPInstanceUID", "InstanceNumber=2")
    assert [str(a.SOPInstanceUID) for a in images] == [f"{UID}.1.1.2"]
    assert images[0].InstanceNumber == 2


def test_wildcard_is_case_insensitive_on_names_and_date_range(qr, tmp_path):
    _, answers = findscu(qr, "-S", tmp_path / "w", "QueryRetrieveLevel=STUDY", "PatientName=DOE*",
                         "PatientID", "StudyDate=20240101-20241231")
    assert sorted(str(a.PatientID) for a in answers) == ["QR-P1", "QR-P1", "QR-P4"]
    _, answers = findscu(qr, "-S", tmp_path / "q", "QueryRetrieveLevel=STUDY",
                         "PatientName=d?e^j*", "PatientID", "StudyDate=-20240131")
    assert [str(a.PatientID) for a in answers] == ["QR-P1"]


def test_uid_list_matching(qr, tmp_path):
    _, answers = findscu(qr, "-S", tmp_path / "u", "QueryRetrieveLevel=STUDY",
                         f"StudyInstanceUID={UID}.3\\{UID}.5\\{UID}.99", "PatientID")
    assert sorted(str(a.PatientID) for a in answers) == ["QR-P2", "QR-P4"]


def test_long_lists_of_uids_match_and_too_many_alternatives_are_refused(qr):
    """A workstation may ask after a thousand SOP Instance UIDs at once (PS3.4
    C.2.2.2.2): all are matched. Thousands of text alternatives (C.2.2.2.8), each a
    pattern of its own, are refused with Unable to Process, and the next query is
    answered (the fuzz harness found the daemon failing such a C-FIND with 0xC311)."""
    wanted = [f"{UID}.1.1.1", f"{UID}.1.1.2"]
    listed = wanted + [f"{UID}.9.{n}" for n in range(998)]
    statuses, answers, _ = pyfind(qr, STUDY_ROOT, query(
        "IMAGE", StudyInstanceUID=f"{UID}.1", SeriesInstanceUID=f"{UID}.1.1", SOPInstanceUID=listed))
    assert statuses[-1] == SUCCESS
    assert sorted(str(a.SOPInstanceUID) for a in answers) == wanted
    statuses, answers, last = pyfind(qr, STUDY_ROOT, query(
        "IMAGE", StudyInstanceUID=f"{UID}.1", SeriesInstanceUID=f"{UID}.1.1", SOPInstanceUID="",
        ImageType=[f"T{n}" for n in range(5000)]))
    assert (statuses, answers) == ([0xC000], [])
    assert "more than 200 values to match" in last.ErrorComment
    statuses, answers, _ = pyfind(qr, STUDY_ROOT, query("STUDY", StudyInstanceUID=f"{UID}.3"))
    assert statuses == [PENDING, SUCCESS] and len(answers) == 1


def test_non_latin_names_keep_their_stored_character_set(qr, tmp_path):
    _, latin = findscu(qr, "-S", tmp_path / "l", "QueryRetrieveLevel=STUDY", "PatientID=QR-P2",
                       "PatientName")
    assert latin[0].SpecificCharacterSet == "ISO_IR 100"
    assert str(latin[0].PatientName) == "Müller^Jürgen"
    raw = (tmp_path / "l").glob("rsp*.dcm").__next__().read_bytes()
    assert "Müller".encode("latin-1") in raw  # written in Latin-1, as stored
    _, greek = findscu(qr, "-S", tmp_path / "g", "SpecificCharacterSet=ISO_IR 192",
                       "QueryRetrieveLevel=STUDY", "PatientName=παπαδόπουλος*", "PatientID")
    assert [str(a.PatientID) for a in greek] == ["QR-P3"]
    assert greek[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(greek[0].PatientName) == "Παπαδόπουλος^Γιώργος"


# --------------------------------------------------------------------------- statuses


def test_missing_upper_unique_key_fails_with_a900(qr, tmp_path):
    # PS3.4 C.4.1.2.2.1: a SERIES query of Study Root must name its study.
    result, answers = findscu(qr, "-S", tmp_path / "h", "QueryRetrieveLevel=SERIES",
                              "SeriesInstanceUID", "Modality")
    assert answers == []
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr  # DCMTK's name of 0xA900
    statuses, _, last = pyfind(qr, PATIENT_ROOT, query("STUDY", StudyInstanceUID=""))
    assert statuses == [DOES_NOT_MATCH]  # Patient Root STUDY level: PatientID missing
    assert last.OffendingElement == 0x00100020
    statuses, _, _ = pyfind(qr, STUDY_ROOT, query("PATIENT", PatientID=""))
    assert statuses == [DOES_NOT_MATCH]  # no PATIENT level in Study Root
    statuses, _, _ = pyfind(qr, STUDY_ROOT, query("IMAGE", StudyInstanceUID=f"{UID}.1",
                                                  SeriesInstanceUID=f"{UID}.1.*",
                                                  SOPInstanceUID=""))
    assert statuses == [DOES_NOT_MATCH]  # a wildcard is no single value
    assert "C-FIND Study Root from FINDER failed: SeriesInstanceUID" in qr.log()


def test_refused_device_gets_0124_and_a_log_line(qr):
    statuses, answers, _ = pyfind(qr, STUDY_ROOT, query("STUDY", PatientID="QR-P1"), aet="NOFIND")
    assert statuses == [REFUSED] and answers == []
    # Declared with AllowFind, but from another host (DicomCheckModalityHost).
    statuses, _, _ = pyfind(qr, STUDY_ROOT, query("STUDY", PatientID="QR-P1"), aet="FARAWAY")
    assert statuses == [REFUSED]
    log = qr.log()
    assert "C-FIND Study Root from NOFIND refused" in log
    assert "C-FIND Study Root from FARAWAY refused" in log


def test_one_info_line_per_query_without_patient_data_and_counted(qr):
    """The INFO line, /metrics and pacs-appliance status."""
    statuses, answers, _ = pyfind(qr, STUDY_ROOT, query("STUDY", PatientName="Doe^John",
                                                        StudyInstanceUID=""))
    assert statuses == [PENDING, PENDING, SUCCESS] and len(answers) == 2
    lines = [line for line in qr.log().splitlines() if "C-FIND Study Root STUDY from FINDER" in line]
    assert lines and "2 match(es)" in lines[-1]
    assert "Doe" not in qr.log() and "QR-P1" not in qr.log()
    metrics = requests.get(f"http://127.0.0.1:{qr.http_port}/metrics", timeout=10).text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("pacs_dicom_queries_total{")
                and 'model="Study Root",level="STUDY",outcome="complete"' in ln)
    assert int(line.rsplit(" ", 1)[1]) >= 1
    # pacs-appliance status reads the status file, rewritten every 5 s.
    deadline, out = time.monotonic() + 15, ""
    while time.monotonic() < deadline and "C-FIND (" not in out:
        out = cli(qr.config_path, "status").stdout
        time.sleep(0.5)
    line = next(ln for ln in out.splitlines() if "queries since start:" in ln)
    assert int(line.split("queries since start:")[1].split()[0]) >= 1 and "complete" in line


# --------------------------------------------------------------------------- many answers

BULK_IMAGES, BULK_STUDIES, LIMIT = 400, 30, 20
BULK_STUDY = f"{UID}.900"
BULK_SERIES = f"{UID}.900.1"


@pytest.fixture(scope="module")
def bulk(tmp_path_factory):
    """A daemon (fast path: the limits and C-CANCEL are the handler's, whichever path) with
    one series of 400 instances and 30 one-instance studies, LimitFindResults 20."""
    root = tmp_path_factory.mktemp("qrbulk")
    files = root / "files"
    files.mkdir()
    template = ("QR-B", f"{BULK_STUDY}", "20240101", "090000", "ACCB",
                [(BULK_SERIES, "SR", [])])
    # One file written by pydicom, the others its bytes with another SOP Instance UID of the
    # same length (1001...: no pydicom per file).
    _instance(files / "i1000.dcm", "QR-B", template, template[5][0], 1000)
    first = (files / "i1000.dcm").read_bytes()
    for n in range(1001, 1000 + BULK_IMAGES):
        (files / f"i{n}.dcm").write_bytes(first.replace(f"{BULK_SERIES}.1000".encode(),
                                                        f"{BULK_SERIES}.{n}".encode()))
    for n in range(BULK_STUDIES):
        study = ("QR-B", f"{UID}.901.{n}", "20240102", "090000", f"ACCB{n}",
                 [(f"{UID}.901.{n}.1", "SR", [1])])
        _instance(files / f"s{n}.dcm", "QR-B", study, study[5][0], 1)
    d = Daemon(root, base_config(root, DicomAlwaysAllowFind=True, LimitFindResults=LIMIT)).start()
    # Four associations at once: their stores share index commits (fsyncs).
    paths = sorted(str(p) for p in files.iterdir())
    senders = [subprocess.Popen(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(d.dicom_port),
                                 *paths[k::4]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for k in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in senders)
    yield d
    d.stop()


@pytest.mark.fast_path_only
def test_limit_find_results_caps_studies_not_instances(bulk, pynetdicom_mode):
    statuses, answers, last = pyfind(bulk, STUDY_ROOT, query("STUDY", PatientID="QR-B",
                                                            StudyInstanceUID=""))
    # Orthanc's answer to a capped search: "matching terminated" (Cancel), after LIMIT answers.
    assert len(answers) == LIMIT and statuses[-1] == CANCEL and len(statuses) == LIMIT + 1
    assert "LimitFindResults" in last.ErrorComment
    assert f"capped by LimitFindResults ({LIMIT})" in bulk.log()
    statuses, answers, _ = pyfind(bulk, STUDY_ROOT, query(
        "IMAGE", StudyInstanceUID=BULK_STUDY, SeriesInstanceUID=BULK_SERIES, SOPInstanceUID=""))
    assert statuses[-1] == SUCCESS and len(answers) == BULK_IMAGES  # LimitFindInstances is 0
    assert len({str(a.SOPInstanceUID) for a in answers}) == BULK_IMAGES  # pages do not overlap


@pytest.mark.fast_path_only
def test_c_cancel_ends_the_answers(bulk, pynetdicom_mode):
    """C-CANCEL after the first answer of 400 (PS3.7 9.3.2.3). Loopback buffers can take
    every answer before the C-CANCEL is read: the C-FIND then ends with Success, as the
    standard allows; seen in time, it ends with Cancel, early, and the log says so."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.dsutils import encode

    from tests.fuzz import rawdicom

    identifier = query("IMAGE", StudyInstanceUID=BULK_STUDY, SeriesInstanceUID=BULK_SERIES,
                       SOPInstanceUID="", SOPClassUID="", InstanceNumber="", PatientAge="",
                       PatientName="", ReferringPhysicianName="", StudyDescription="")
    assoc = rawdicom.Association(bulk.dicom_port, [(STUDY_ROOT, ExplicitVRLittleEndian),
                                                   (rawdicom.VERIFICATION, "1.2.840.10008.1.2")])
    try:
        responses = assoc.find_and_cancel(STUDY_ROOT, ExplicitVRLittleEndian,
                                          encode(identifier, False, True))
        assert responses[0].pending
        if responses[-1].status == CANCEL:
            assert 1 <= len(responses) - 1 < BULK_IMAGES
            deadline = time.monotonic() + 10
            while "cancelled (C-CANCEL)" not in bulk.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "cancelled (C-CANCEL)" in bulk.log()
        else:
            assert responses[-1].status == SUCCESS and len(responses) - 1 == BULK_IMAGES
        assert assoc.echo() == SUCCESS  # the association carries on
    finally:
        assoc.release()


def test_c_cancel_from_pynetdicom(qr):
    """pynetdicom's SCU, C-CANCEL after the first answer: ends with Cancel or, if every
    answer was already sent, Success; the association and the server carry on."""
    ae = AE(ae_title="FINDER")
    ae.add_requested_context(PATIENT_ROOT)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    assoc = ae.associate("127.0.0.1", qr.dicom_port, ae_title="ORTHANC")
    assert assoc.is_established
    statuses = []
    try:
        for status, _ in assoc.send_c_find(query("PATIENT", PatientID="QR-P*", PatientName=""),
                                           PATIENT_ROOT, msg_id=7):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=PATIENT_ROOT)
        assert assoc.send_c_echo().Status == SUCCESS
    finally:
        assoc.release()
    assert statuses[0] == PENDING and statuses[-1] in (CANCEL, SUCCESS)
    assert statuses.count(PENDING) <= len(PATIENTS)
