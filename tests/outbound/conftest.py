"""Helpers of the outbound tests: small instances, a DCMTK storescp destination,
a pynetdicom storage commitment "scanner", the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from tests.support import new_dataset, wait_for

SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
US = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_instances(folder: Path, n: int, *, study_uid: str | None = None,
                   series_uid: str | None = None, modality: str = "US",
                   sop_class: str = US) -> list[Path]:
    """``n`` small instances of one series, written as Part-10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    pixels = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    paths = []
    for i in range(n):
        ds = new_dataset(sop_class)
        ds.PatientID, ds.PatientName = "P1", "Test^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.InstanceNumber, ds.SeriesNumber = modality, i + 1, 1
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class StoreScp:
    """DCMTK storescp writing what it receives into ``folder`` (one file per SOP
    Instance UID: a duplicate overwrites, so the count is of distinct instances)."""

    def __init__(self, folder: Path, port: int | None = None, aet: str = "ARCH") -> None:
        self.folder = folder
        self.port = port or free_port()
        self.aet = aet
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreScp":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["storescp", "-aet", self.aet, "-od", str(self.folder),
                                      str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        wait_for(listening, 10, "storescp")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def received(self) -> set[str]:
        """The SOP Instance UIDs received (storescp names files <modality>.<uid>)."""
        return {p.name.split(".", 1)[1] for p in self.folder.iterdir()
                if "." in p.name and not p.name.startswith(".")} if self.folder.exists() else set()


@pytest.fixture
def storescp(tmp_path):
    """Factory of storescp destinations, stopped after the test."""
    started: list[StoreScp] = []

    def factory(name: str = "scp", port: int | None = None, start: bool = True) -> StoreScp:
        scp = StoreScp(tmp_path / name, port)
        started.append(scp)
        return scp.start() if start else scp

    yield factory
    for scp in started:
        scp.stop()


def cli(daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``pacs-appliance ARGS --config <the daemon's>``, as a subprocess."""
    return subprocess.run([sys.executable, "-m", "appliance", *args, "--config",
                           str(daemon.config_path)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def queue_json(daemon) -> dict:
    """``queue list --json`` of a daemon's folder."""
    done = cli(daemon, "queue", "list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
