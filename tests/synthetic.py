"""Synthetic DICOM data shared by the tests and the benchmarks.

What a clinic's scanners send: 640x480 RGB (8 bit, interleaved) US images, uncompressed,
Explicit VR Little Endian: single frames (US Image Storage) and cine loops (US Multi-frame
Image Storage). The pixels are a speckled fan-shaped sector over black, different for every
image, so nothing downstream can shortcut on constant data. And worklist items spread over
days, modalities and stations like a clinic's schedule.

UIDs are derived deterministically, so a generated set is identical from run to run. The
tests import this module; tests/bench imports it too (never the other way round).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
ROWS, COLUMNS = 480, 640
SINGLE_COUNT = 200
CINE_FRAMES = 150
# Bump when the content or header layout changes, so stale caches are regenerated.
FORMAT_VERSION = 1

# Worklist items: a clinic's day of PER_DAY items from FIRST_DAY on.
PER_DAY = 100
MODALITIES = ("US", "CT", "US", "MR")   # half of each day's items are US
FIRST_DAY = date(2026, 12, 1)
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


def uid(*parts: object) -> str:
    """A deterministic UID made of ``parts``."""
    # Deterministic UIDs (hash of the parts under pydicom's root): stable across runs.
    return generate_uid(entropy_srcs=["pacs-appliance-bench", str(FORMAT_VERSION), *map(str, parts)])


def _sector_mask() -> np.ndarray:
    """Boolean mask of a 70-degree fan with its apex at the top centre, like a convex probe."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    apex_x, apex_y = COLUMNS / 2, -40.0
    radius = np.hypot(x - apex_x, y - apex_y)
    angle = np.degrees(np.arctan2(x - apex_x, y - apex_y))
    return (np.abs(angle) < 35) & (radius > 60) & (radius < ROWS + 30)


def _frame(rng: np.random.Generator, mask: np.ndarray, t: float) -> np.ndarray:
    """One RGB frame: Rayleigh speckle in the sector, a moving dark 'vessel', a green trace."""
    speckle = rng.rayleigh(scale=55.0, size=(ROWS, COLUMNS)).astype(np.float32)
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    cx, cy = COLUMNS / 2 + 80 * np.sin(t), ROWS / 2 + 40 * np.cos(t)
    vessel = ((x - cx) ** 2 / 60**2 + (y - cy) ** 2 / 30**2) < 1
    speckle[vessel] *= 0.15
    grey = np.clip(speckle, 0, 255).astype(np.uint8) * mask
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    # A colour overlay (ECG-like trace) so the three channels differ.
    trace_y = (440 + 15 * np.sin(np.arange(COLUMNS) / 12.0 + t)).astype(int)
    rgb[trace_y, np.arange(COLUMNS), 1] = 255
    return rgb


def base_dataset(sop_class: str, sop_instance: str, study: str, series: str,
                  series_number: int, instance_number: int) -> Dataset:
    """Header of a plausible clinic US object (patient, study, series, equipment)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACSBENCH_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", ""]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101512"
    ds.ContentTime = f"1016{instance_number % 60:02d}"
    ds.AccessionNumber = "ACC20240315001"
    ds.Modality = "US"
    ds.Manufacturer = "Bench Synthetic"
    ds.InstitutionName = "Clinic Bench"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "US-ROOM-1"
    ds.StudyDescription = "US ABDOMEN"
    ds.SeriesDescription = "Abdomen B-mode"
    ds.ManufacturerModelName = "SynthSound 640"
    ds.PatientName = "Bench^Patient"
    ds.PatientID = "BENCH0001"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "ABDOMEN"
    ds.DeviceSerialNumber = "SN-0001"
    ds.SoftwareVersions = "1.0"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.Laterality = ""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    return ds


def write_file(ds: Dataset, path: Path) -> None:
    """Save ``ds`` as a Part-10 file at ``path``."""
    # Write to a temp name first so an interrupted run never leaves a truncated cached file.
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)


def generate_singles(folder: Path, count: int = SINGLE_COUNT) -> list[Path]:
    """Write ``count`` single-frame US images into ``folder`` and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240315)
    mask = _sector_mask()
    study, series = uid("study"), uid("series", 1)
    paths = []
    for i in range(count):
        ds = base_dataset(US_IMAGE_STORAGE, uid("single", i), study, series, 1, i + 1)
        ds.PixelData = _frame(rng, mask, t=i / 7.0).tobytes()
        path = folder / f"us_{i:04d}.dcm"
        write_file(ds, path)
        paths.append(path)
    return paths


def generate_cine(path: Path, frames: int = CINE_FRAMES) -> Path:
    """Write one ``frames``-frame US Multi-frame cine loop at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240316)
    mask = _sector_mask()
    ds = base_dataset(US_MULTIFRAME_STORAGE, uid("cine", 0), uid("study"), uid("series", 2),
                       2, 1)
    ds.SeriesDescription = "Abdomen cine"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 33.3
    ds.CineRate = 30
    ds.RecommendedDisplayFrameRate = 30
    ds.PixelData = b"".join(_frame(rng, mask, t=f / 10.0).tobytes() for f in range(frames))
    write_file(ds, path)
    return path


def n_days(files: int) -> int:
    return max(1, files // PER_DAY)


def query_date(files: int) -> str:
    return (FIRST_DAY + timedelta(days=n_days(files) // 2)).strftime("%Y%m%d")


def item(i: int, files: int, patient_name: str | None = None) -> Dataset:
    """Worklist item ``i`` of a folder of ``files`` items."""
    days = n_days(files)
    day = FIRST_DAY + timedelta(days=i % days)
    slot = i // days                       # 0..PER_DAY-1 within its day
    modality = MODALITIES[slot % len(MODALITIES)]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient_name or f"BENCH^PATIENT{i:05d}"
    ds.PatientID = f"PID{i:05d}"
    ds.PatientBirthDate = f"19{50 + i % 50:02d}0{1 + i % 9}1{i % 10}"
    ds.PatientSex = "FM"[i % 2]
    ds.AccessionNumber = f"ACC{i:06d}"
    ds.ReferringPhysicianName = "REFERRER^DR"
    ds.StudyInstanceUID = f"{UID_ROOT}.{files}.{i}"
    ds.RequestedProcedureID = f"RP{i:05d}"
    ds.RequestedProcedureDescription = f"{modality} examination"
    sps = Dataset()
    sps.Modality = modality
    station = 1 + slot % 4
    sps.ScheduledStationAETitle = f"{modality}{station}"
    sps.ScheduledStationName = f"ROOM{station}"
    sps.ScheduledProcedureStepStartDate = day.strftime("%Y%m%d")
    minutes = 7 * 60 + (slot * 6) % (11 * 60)
    sps.ScheduledProcedureStepStartTime = f"{minutes // 60:02d}{minutes % 60:02d}00"
    sps.ScheduledPerformingPhysicianName = "SONO^GRAPHER"
    sps.ScheduledProcedureStepID = f"SPS{i:05d}"
    sps.ScheduledProcedureStepDescription = f"{modality} abdomen"
    sps.ScheduledProcedureStepLocation = f"ROOM{station}"
    ds.ScheduledProcedureStepSequence = [sps]
    return ds
