"""HTTP end-to-end tests, plus what several of them share: a small synthetic
archive (patients with ASCII and non-ASCII names, several studies, US/SR/OT
series) and a module-scoped daemon starter."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support import Daemon, base_config, new_dataset

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
_SOP_CLASS = {"US": US_IMAGE, "OT": SC_IMAGE, "SR": BASIC_TEXT_SR}


@dataclass
class Study:
    """One synthetic study: patient, study attributes, and its series."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    date: str
    time: str
    accession: str
    description: str
    # (modality, number of instances) per series, in series-number order
    series: list[tuple[str, int]]
    charset: str = "ISO_IR 192"
    uid: str = field(default_factory=generate_uid)
    series_uids: list[str] = field(default_factory=list)
    sop_uids: list[list[str]] = field(default_factory=list)

    @property
    def modalities(self) -> set[str]:
        """ModalitiesInStudy as a set."""
        return {m for m, _ in self.series}

    @property
    def instance_count(self) -> int:
        """NumberOfStudyRelatedInstances."""
        return sum(n for _, n in self.series)


def sample_studies() -> list[Study]:
    """Five studies of four patients, chosen to exercise every kind of matching:
    case and non-ASCII letters in names, wildcard-special characters in an ID,
    a shared StudyDate, dates either side of a year boundary, three modalities."""
    return [
        Study("PAT001", "Doe^John", "19700101", "M", "20240110", "093000", "ACC001",
              "Abdomen US", [("US", 3), ("SR", 1)]),
        Study("PAT002", "Müller^Jürgen", "19650505", "M", "20240215", "141500", "ACC002",
              "Thyroid", [("US", 2)]),
        Study("PAT003", "doe^jane", "19900909", "F", "20231231", "235959", "ACC003",
              "Obstetric", [("OT", 1)]),
        Study("PAT001", "Doe^John", "19700101", "M", "20240301", "080000", "ACC004",
              "Thyroid follow-up", [("US", 1)]),
        Study("PAT[4]_%", "O'Brien^Pat", "19801224", "O", "20240110", "120000", "ACC*5",
              "Knee", [("OT", 2), ("US", 1)]),
    ]


def _dataset(study: Study, modality: str, series_uid: str, series_number: int,
             sop_uid: str, instance_number: int) -> Dataset:
    sop_class = _SOP_CLASS[modality]
    ds = new_dataset(sop_class, sop_uid, study.charset)
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = "Web Tests"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StudyDescription = study.description
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.BodyPartExamined = "ABDOMEN"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study.accession[-3:]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PerformedProcedureStepStartDate = study.date
    if modality == "SR":
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "UNVERIFIED"
        return ds
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 4, 6
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(24))
    return ds


def write_studies(folder: Path, studies: list[Study]) -> list[Path]:
    """Write every instance of ``studies`` as a Part-10 file; fill in their UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for study in studies:
        study.series_uids, study.sop_uids = [], []
        for number, (modality, count) in enumerate(study.series, start=1):
            series_uid = generate_uid()
            study.series_uids.append(series_uid)
            sops = []
            for i in range(1, count + 1):
                sop = generate_uid()
                path = folder / f"{len(paths):03d}.dcm"
                _dataset(study, modality, series_uid, number, sop, i).save_as(
                    path, enforce_file_format=True)
                sops.append(sop)
                paths.append(path)
            study.sop_uids.append(sops)
    return paths


def store(port: int, files: list[Path]) -> None:
    """C-STORE ``files`` with DCMTK's storescu over one association."""
    done = subprocess.run(["storescu", "-aet", "WEBTEST", "-aec", "ORTHANC", "127.0.0.1",
                           str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def start_daemon(root: Path, **overrides) -> Daemon:
    """A daemon for a whole test module (the caller stops it)."""
    return Daemon(root, base_config(root, **overrides)).start()
