"""Synthetic ultrasound data for the benchmarks, generated once into a cache folder.

What a clinic's scanners send: 640x480 RGB (8 bit, interleaved) US images, uncompressed,
Explicit VR Little Endian — single frames (US Image Storage) and cine loops (US Multi-frame
Image Storage). The pixels are a speckled fan-shaped sector over black, different for every
image, so nothing downstream can shortcut on constant data.

UIDs are derived deterministically from the index, so a cached set is identical from run to
run and the files can be reused (a stamp file records the parameters that produced them).

Run ``python -m tests.bench.datagen [DIR]`` to (re)generate by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

log = logging.getLogger(__name__)

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
ROWS, COLUMNS = 480, 640
SINGLE_COUNT = 200
CINE_FRAMES = 150
# Bump when the content or header layout changes, so stale caches are regenerated.
FORMAT_VERSION = 1

DEFAULT_CACHE = Path(__file__).resolve().parent / "results" / "data"


@dataclass(frozen=True)
class BenchData:
    """Paths of a generated data set."""

    singles: list[Path]
    cine: Path

    @property
    def single_bytes(self) -> int:
        """Total size of the single-frame files."""
        return sum(p.stat().st_size for p in self.singles)


def _uid(*parts: object) -> str:
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


def _base_dataset(sop_class: str, sop_instance: str, study: str, series: str,
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


def _write(ds: Dataset, path: Path) -> None:
    # Write to a temp name first so an interrupted run never leaves a truncated cached file.
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)


def generate_singles(folder: Path, count: int = SINGLE_COUNT) -> list[Path]:
    """Write ``count`` single-frame US images into ``folder`` and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240315)
    mask = _sector_mask()
    study, series = _uid("study"), _uid("series", 1)
    paths = []
    for i in range(count):
        ds = _base_dataset(US_IMAGE_STORAGE, _uid("single", i), study, series, 1, i + 1)
        ds.PixelData = _frame(rng, mask, t=i / 7.0).tobytes()
        path = folder / f"us_{i:04d}.dcm"
        _write(ds, path)
        paths.append(path)
    return paths


def generate_cine(path: Path, frames: int = CINE_FRAMES) -> Path:
    """Write one ``frames``-frame US Multi-frame cine loop at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240316)
    mask = _sector_mask()
    ds = _base_dataset(US_MULTIFRAME_STORAGE, _uid("cine", 0), _uid("study"), _uid("series", 2),
                       2, 1)
    ds.SeriesDescription = "Abdomen cine"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 33.3
    ds.CineRate = 30
    ds.RecommendedDisplayFrameRate = 30
    ds.PixelData = b"".join(_frame(rng, mask, t=f / 10.0).tobytes() for f in range(frames))
    _write(ds, path)
    return path


def ensure_data(cache: Path = DEFAULT_CACHE, singles: int = SINGLE_COUNT,
                cine_frames: int = CINE_FRAMES) -> BenchData:
    """Return the cached data set in ``cache``, generating whatever is missing or stale."""
    stamp = cache / "stamp.json"
    wanted = {"version": FORMAT_VERSION, "singles": singles, "cine_frames": cine_frames,
              "rows": ROWS, "columns": COLUMNS}
    single_dir, cine_path = cache / "single", cache / "cine" / "cine_150.dcm"
    single_paths = [single_dir / f"us_{i:04d}.dcm" for i in range(singles)]
    current = None
    if stamp.exists():
        try:
            current = json.loads(stamp.read_text())
        except ValueError:
            current = None
    if current != wanted or not all(p.exists() for p in single_paths):
        log.info("generating %d single-frame images in %s", singles, single_dir)
        stamp.unlink(missing_ok=True)
        if single_dir.exists():
            for old in single_dir.glob("*.dcm"):
                old.unlink()
        single_paths = generate_singles(single_dir, singles)
        cine_path.unlink(missing_ok=True)
    if not cine_path.exists():
        log.info("generating the %d-frame cine at %s", cine_frames, cine_path)
        generate_cine(cine_path, cine_frames)
    stamp.write_text(json.dumps(wanted))
    return BenchData(singles=single_paths, cine=cine_path)


def main(argv: list[str] | None = None) -> int:
    """Generate (or verify) the cached benchmark data set; print where it is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", nargs="?", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = ensure_data(args.cache)
    print(f"{len(data.singles)} single frames, {data.single_bytes / 1e6:.1f} MB, in "
          f"{data.singles[0].parent}")
    print(f"cine: {data.cine} ({data.cine.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
