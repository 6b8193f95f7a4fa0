"""What the delete, fix-patient and ZIP tests share: a daemon with a user, a
study of N small US images stored through C-STORE, and the two invariants of
a crash (the index and the storage folder name the same files; nothing left
in the doomed list after a start)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests
from pydicom.uid import generate_uid

from tests.support import Daemon, new_dataset
from tests.web import store

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
USER, PASSWORD = "alice", "Secret-1"
AUTH = (USER, PASSWORD)


def auth_config() -> dict:
    """Config overrides: authentication on, one user."""
    return {"AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}}


def write_study(folder: Path, count: int, *, series: int = 1, name: str = "Wrong^Patient",
                pid: str = "WRONG1", pixels: int = 64) -> tuple[str, list[Path]]:
    """``count`` small US images of one new study (spread over ``series``
    series), as files; returns (StudyInstanceUID, paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    paths = []
    for i in range(count):
        ds = new_dataset(US_IMAGE)
        ds.PatientName, ds.PatientID, ds.PatientSex = name, pid, "F"
        ds.PatientBirthDate, ds.AccessionNumber = "19800101", "ACC-W"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uids[i % series]
        ds.StudyDate, ds.Modality = "20240101", "US"
        ds.SeriesNumber, ds.InstanceNumber = i % series + 1, i + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = 8, pixels // 8
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = bytes((i + j) % 256 for j in range(pixels))
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


def store_study(daemon: Daemon, folder: Path, count: int, **kw) -> tuple[str, list[Path]]:
    """:func:`write_study` and C-STORE it (DCMTK's storescu, all Success)."""
    study, paths = write_study(folder, count, **kw)
    store(daemon.dicom_port, paths)
    return study, paths


def url(daemon: Daemon, path: str) -> str:
    """The daemon's URL of ``path``."""
    return f"http://127.0.0.1:{daemon.http_port}{path}"


def files_on_disk(daemon: Daemon) -> set[str]:
    """Stored files (relative paths), the incoming folder aside."""
    return {str(p.relative_to(daemon.storage)) for p in daemon.storage.rglob("*.dcm")
            if ".incoming" not in p.parts}


def assert_no_orphans(daemon: Daemon) -> None:
    """Every stored file is indexed, every indexed file is there, nothing is owed."""
    indexed = {r[0] for r in daemon.rows("SELECT file_path FROM instances")}
    assert files_on_disk(daemon) == indexed
    assert daemon.rows("SELECT count(*) FROM doomed_files") == [(0,)]


def kill_during(daemon: Daemon, request, delay: float) -> None:
    """Send ``request()`` (blocking) on a thread and SIGKILL the daemon
    ``delay`` seconds later, whatever the request is doing then."""
    thread = threading.Thread(target=lambda: _swallow(request), daemon=True)
    thread.start()
    time.sleep(delay)
    daemon.kill()
    thread.join(30)


def _swallow(request) -> None:
    try:
        request()
    except requests.RequestException:
        pass  # the daemon died under it: expected
