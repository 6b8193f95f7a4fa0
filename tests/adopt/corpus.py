"""A small realistic archive to give Orthanc: ultrasound single and multi-frame
images over several transfer syntaxes, Latin-1 and UTF-8 patient names, a
few studies, plus compressed objects from pydicom's own test files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid,
)

from tests.support import pydicom_file

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
# Compressed and odd transfer syntaxes, as sent by other systems (pydicom's files).
BUNDLED = ("SC_rgb_jpeg_dcmtk.dcm",      # JPEG Baseline
           "SC_rgb_rle_2frame.dcm",      # RLE Lossless, two frames
           "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
           "ExplVR_BigEnd.dcm")          # Explicit VR Big Endian (retired, still met)
# (SpecificCharacterSet, PatientName): what Orthanc must keep and we must show.
PATIENTS = (("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "Γεωργίου^Νίκος"),
            ("ISO_IR 192", "山田^太郎"), ("ISO_IR 100", "Françoise^Lefèvre"))


@dataclass(frozen=True)
class Sent:
    """One object of the corpus: its file and what identifies it."""

    path: Path
    study: str
    sop_instance_uid: str


def _us(folder: Path, n: int, study: str, series: str, patient: int, frames: int,
        ts: str, rng: np.random.Generator) -> Sent:
    charset, name = PATIENTS[patient]
    uid = generate_uid()
    sop_class = US_MULTIFRAME if frames > 1 else US_IMAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, uid
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ts, PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.PatientName, ds.PatientID = name, f"ADOPT{patient}"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240105", "101010", f"ACC{patient}"
    ds.StudyID, ds.ReferringPhysicianName = "1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", 1, n
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 24, 32, 3
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames, ds.FrameTime, ds.FrameIncrementPointer = frames, "33.3", 0x00181063
    ds.PixelData = rng.integers(0, 255, size=frames * 24 * 32 * 3, dtype=np.uint8).tobytes()
    path = folder / f"us{n:03d}.dcm"
    ds.save_as(path, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True,
               enforce_file_format=True)
    return Sent(path, study, uid)


def make_corpus(folder: Path, singles: int = 40) -> list[Sent]:
    """Write the corpus into ``folder``: ``singles`` single-frame US images over
    four patients' studies, three cine loops, and :data:`BUNDLED`."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(14)
    studies = [(generate_uid(), generate_uid()) for _ in PATIENTS]
    sent = []
    for n in range(singles):
        p = n % len(PATIENTS)
        ts = ImplicitVRLittleEndian if n % 5 == 0 else ExplicitVRLittleEndian
        sent.append(_us(folder, n, *studies[p], p, 1, ts, rng))
    for k in range(3):
        sent.append(_us(folder, singles + k, *studies[k], k, 6, ExplicitVRLittleEndian, rng))
    for name in BUNDLED:
        src = pydicom_file(name)
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        dest = folder / name
        dest.write_bytes(src.read_bytes())
        sent.append(Sent(dest, ds.StudyInstanceUID, ds.SOPInstanceUID))
    return sent
