"""What the WADO-RS, STOW-RS and WADO-URI tests share: synthetic ultrasound objects,
a pynetdicom C-STORE, an independent multipart splitter and an HTTP helper."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from tests.support import new_dataset, scu_store

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def us_dataset(*, frames: int = 1, rows: int = 64, columns: int = 64, rgb: bool = True,
               study: str | None = None, patient_id: str = "WADO001", seed: int = 1,
               photometric: str | None = None) -> Dataset:
    """A small synthetic ultrasound object (multi-frame when frames > 1), Explicit VR LE,
    with an icon image in a sequence (its pixel data is bulk data at depth 1)."""
    rng = np.random.default_rng(seed)
    sop_class = US_MULTIFRAME if frames > 1 else US_IMAGE
    ds = new_dataset(sop_class)
    ds.StudyDate, ds.StudyTime, ds.Modality = "20240315", "101500", "US"
    ds.PatientName, ds.PatientID = "Wado^Test", patient_id
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    icon = Dataset()
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.Rows = icon.Columns = 48
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation = 7, 0
    icon.PixelData = rng.integers(0, 256, 48 * 48, dtype=np.uint8).tobytes()
    ds.IconImageSequence = Sequence([icon])
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if rgb else "MONOCHROME2")
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
    shape = (frames, rows, columns, 3) if rgb else (frames, rows, columns)
    ds.PixelData = rng.integers(0, 256, shape, dtype=np.uint8).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Save as a Part-10 file."""
    ds.save_as(path, enforce_file_format=True)
    return path


def cstore(port: int, files: list[Path]) -> list[int]:
    """Send files as they are (any transfer syntax) with pynetdicom; the statuses."""
    return scu_store(port, files, aet="WADOTEST")


@dataclass
class Reply:
    """An HTTP response, whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def parts(self) -> list[tuple[dict[str, str], bytes]]:
        """The parts of a multipart body."""
        return split_multipart(self.content_type, self.body)


def get(url: str, accept: str | None = None, **headers: str) -> Reply:
    """GET with urllib (a client independent of the server's code)."""
    if accept is not None:
        headers["Accept"] = accept
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def split_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body on its boundary (RFC 2046), independently of the server."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    assert m, content_type
    delimiter = b"--" + m.group(1).encode()
    assert body.startswith(delimiter), body[:80]
    chunks = body.split(b"\r\n" + delimiter)
    parts = []
    first = chunks[0][len(delimiter):]
    for chunk in [first, *chunks[1:]]:
        if chunk.startswith(b"--"):
            break
        assert chunk.startswith(b"\r\n")
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts
