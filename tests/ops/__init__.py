"""Operations tests: disk, quotas, backups, reindex, status and metrics, end to end.

What several of them share: small filesystems mounted for a test (tmpfs; the
tests run as root), the CLI as a subprocess, tiny synthetic DICOM files of
chosen patients, and pynetdicom C-STOREs that report every status.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

from pydicom.uid import generate_uid

from tests.support import Daemon, new_dataset, run

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
OUT_OF_RESOURCES = 0xA700


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False):
    """A size-limited tmpfs at ``path`` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def cli(config_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``pacs-appliance ARGS --config CONFIG`` as a subprocess."""
    return run([sys.executable, "-m", "appliance", *args, "--config", str(config_path)],
               timeout=timeout)


def write_config(path: Path, config: dict) -> Path:
    """A config file for the CLI (the daemon's, or a variant of it)."""
    path.write_text(json.dumps(config, indent=2))
    return path


def image(folder: Path, patient: str, *, study: str | None = None, series: str | None = None,
          number: int = 1, pixels: int = 64) -> Path:
    """One small US image of ``patient`` (``pixels`` x ``pixels``, 8 bit)."""
    ds = new_dataset(US_IMAGE)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID, ds.PatientName = patient, f"Name^{patient}"
    ds.PatientBirthDate, ds.PatientSex = "19800101", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240315", "101500", f"A{patient}"
    ds.StudyDescription, ds.SeriesDescription = "US ABDOMEN", "B-mode"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", 1, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = pixels
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(i % 251 for i in range(pixels * pixels))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def stored_files(daemon: Daemon) -> list[Path]:
    """Files in the storage's fan-out folders."""
    return sorted(p for p in daemon.storage.glob("[0-9a-f][0-9a-f]/*") if p.is_file())


def leftovers(daemon: Daemon) -> list[Path]:
    """Anything a refused or interrupted store may have left: incoming files, temp files."""
    found = list(daemon.incoming_files())
    found += [p for p in daemon.storage.rglob("*") if p.is_file() and p.suffix in (".part", ".tmp")]
    return found


def status_json(daemon: Daemon) -> dict:
    """The daemon's status file (what ``pacs-appliance status --json`` prints)."""
    return json.loads((Path(daemon.config["IndexDirectory"]) / "pacs-appliance.status.json").read_text())
