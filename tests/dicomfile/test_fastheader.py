"""fastheader reads a header without pydicom: it must agree with pydicom.

Each case writes a real Part-10 file, then compares what ingest gets from
fastheader (``archive._fast_early``: record and DICOM JSON) with what it gets
from pydicom (``read_header`` + ``instance_record``).  Headers fastheader does
not read must give None (pydicom then decides), never a different answer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from appliance.dicomfile import fastheader
from appliance.store import archive
from appliance.dicomfile import structure
from appliance.dicomfile.header import read_header
from appliance.dicomfile.settings import quiet_pydicom
from tests.support import PYDICOM_FILES, new_dataset

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


@pytest.fixture(autouse=True, scope="module")
def _as_the_daemon_reads():
    quiet_pydicom()  # the daemon's pydicom settings (no validation)


def _receipt_free(record):
    return dataclasses.replace(record, received_at=0.0, file_size=0, source="",
                               calling_aet=None, peer=None)


_REFUSED = "refused"


def _both(path: Path):
    """What ingest makes of the file at path: (through fastheader, through
    pydicom), each a record, None (fastheader declined) or _REFUSED. The
    structure check is the same for both, as in Archive._check."""
    data = path.read_bytes()
    try:
        structure.check(structure.Reader(data, len(data)))
        whole = True
    except structure.Malformed:
        whole = False
    early = archive._fast_early(data[:archive._FAST_HEADER_LIMIT])
    fast = None if early is None else early.record if whole else _REFUSED
    try:
        header = read_header(path)
        uids = archive.header_uids(header)
        slow = archive.instance_record(header, uids, 0, archive._NOBODY) if whole else _REFUSED
    except Exception:  # noqa: BLE001 - Archive._check refuses the object then
        slow = _REFUSED
    return fast, slow


def _assert_agree(path: Path, *, fast_expected: bool = True) -> None:
    fast, slow = _both(path)
    if fast is None:
        assert not fast_expected, f"fastheader declined {path.name}"
        return
    assert (fast is _REFUSED) == (slow is _REFUSED), f"only one refuses {path.name}"
    if fast is _REFUSED:
        return
    assert json.loads(fast.metadata) == json.loads(slow.metadata)
    assert fast.metadata == slow.metadata  # same text too: same key order
    assert _receipt_free(fast) == _receipt_free(slow)


def _us_image(charset: str = "ISO_IR 100") -> Dataset:
    """An ultrasound image header much like a scanner's, 64x48 RGB."""
    ds = new_dataset(US_IMAGE, charset=charset)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", ""]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName = "Müller^Jürgen^^Dr."
    ds.PatientID = "PAT-0042 "
    ds.PatientBirthDate, ds.PatientSex = "19700101", "M"
    ds.StudyDate, ds.StudyTime = "20261127", "101500.123"
    ds.AccessionNumber, ds.StudyID = "ACC1", "1"
    ds.Modality, ds.Manufacturer = "US", "ACME"
    ds.ReferringPhysicianName = "Weiß^Anna=^="
    ds.StudyDescription = "Abdomen"
    ds.SeriesNumber, ds.InstanceNumber = " 3", "7 "
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = 48, 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = "33.3"
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 2
    region.RegionLocationMinX0, region.RegionLocationMaxX1 = 0, 63
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.0123, -0.0456
    region.PhysicalUnitsXDirection = 3
    region.ReferencePixelX0 = -5
    ds.SequenceOfUltrasoundRegions = Sequence([region, Dataset()])
    ds.PixelData = np.zeros((48, 64, 3), np.uint8).tobytes()
    return ds


def _write(ds: Dataset, path: Path, syntax=ExplicitVRLittleEndian) -> Path:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_an_ultrasound_image_is_read_the_same(tmp_path, syntax):
    _assert_agree(_write(_us_image(), tmp_path / "us.dcm", syntax))


@pytest.mark.parametrize("charset,name", [
    ("ISO_IR 192", "Ünal^Zoë=山田^太郎=やまだ^たろう"),
    ("ISO_IR 100", "Ñandú^José"),
    ("ISO_IR 6", "PLAIN^NAME"),
    ("", "NO^CHARSET"),
])
def test_character_sets(tmp_path, charset, name):
    ds = _us_image(charset)
    ds.PatientName = name
    ds.StudyDescription = name.replace("^", " ")
    _assert_agree(_write(ds, tmp_path / "cs.dcm"))


def test_values_at_the_edges(tmp_path):
    """Multi-values with empty components, numbers as text, empty elements,
    long values either side of the bulk-data threshold, binary VRs, AT, UR,
    private elements, empty and undefined-length sequences."""
    ds = _us_image()
    ds.PatientName = ["A^B==", "", "=^X"]
    ds.OtherPatientIDs = "ID1\\\\ID3"
    ds.PatientAge = ""
    ds.PatientWeight = "1e2"
    ds.add_new(0x00181063, "DS", ["1", " -2.5 ", "3.0E-1"])       # Frame Time Vector
    ds.add_new(0x00200012, "IS", "1.0")                           # Acquisition Number
    ds.add_new(0x00082111, "ST", "text\\with backslash  ")       # Derivation Description
    ds.add_new(0x00081040, "LO", "x" * 1500)                      # inline whatever its length
    ds.add_new(0x00204000, "LT", "y" * 1025)                      # bulk: LT over 1024 bytes
    ds.add_new(0x00081050, "PN", "")                              # empty
    ds.add_new(0x00181030, "LO", "a" * 1024)                      # exactly the threshold
    ds.add_new(0x00280034, "IS", ["4", "3"])                      # Pixel Aspect Ratio
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00080120, "UR", "http://example.org/a b  ")
    ds.add_new(0x00181000, "LO", "SN-1\x00")
    ds.add_new(0x00181012, "DA", "20260101\\20260102 ")
    ds.add_new(0x00283010, "SQ", Sequence())                      # empty sequence
    ds.add_new(0x00540016, "SQ", Sequence([Dataset()]))           # one empty item
    ds.add_new(0x00180010, "LO", "Contrast\\")
    ds.add_new(0x00081190, "UR", "")
    ds.add_new(0x00281201, "OW", b"\x01\x02" * 8)                 # binary: bulk
    ds.add_new(0x00189219, "FD", [float("nan")])                  # not a JSON number: bulk
    ds.add_new(0x00189215, "FL", [1.5, -0.1])
    ds.add_new(0x00181088, "IS", "")
    ds.add_new(0x00189004, "CS", "  ")
    ds.add_new(0x00091010, "LO", "ACME 1.0")                      # private creator
    ds.add_new(0x00091011, "LO", "private value")
    ds.add_new(0x00091012, "UL", [1, 2, 3])
    ds.SequenceOfUltrasoundRegions[0].add_new(0x00186024, "US", list(range(600)))  # bulk in an item
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "T-1", "SRT", "Liver"
    item = Dataset()
    item.AnatomicRegionSequence = Sequence([nested])
    ds.add_new(0x00082218, "SQ", Sequence([item]))
    seq = ds[0x00082218]
    seq.is_undefined_length = True
    for element in (ds[0x00540016], ds.SequenceOfUltrasoundRegions):
        element.is_undefined_length = True
    for i in ds.SequenceOfUltrasoundRegions:
        i.is_undefined_length_sequence_item = True
    _assert_agree(_write(ds, tmp_path / "edges.dcm"))


def test_implicit_little_endian_pixel_representation(tmp_path):
    """Implicit VR: "US or SS" elements take the Pixel Representation."""
    for representation, smallest in ((0, 5), (1, -5)):
        ds = _us_image()
        ds.PixelRepresentation = representation
        ds.add_new(0x00280106, "SS" if representation else "US", smallest)
        _assert_agree(_write(ds, tmp_path / f"pr{representation}.dcm", ImplicitVRLittleEndian))


@pytest.mark.parametrize("change", [
    "no SOP Instance UID", "invalid Study UID", "ISO 2022 escape", "private implicit",
    "UN element", "bad IS",
])
def test_what_it_leaves_to_pydicom(tmp_path, change):
    """None, not a guess: pydicom then reads it (or refuses it)."""
    ds = _us_image()
    syntax = ExplicitVRLittleEndian
    if change == "no SOP Instance UID":
        del ds.SOPInstanceUID
    elif change == "invalid Study UID":
        ds.StudyInstanceUID = "1.2.abc"
    elif change == "ISO 2022 escape":
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"
    elif change == "private implicit":
        ds.add_new(0x00091010, "LO", "ACME 1.0")
        syntax = ImplicitVRLittleEndian
    elif change == "UN element":
        ds.add_new(0x00191001, "UN", b"1.0 ")
    elif change == "bad IS":
        ds.add_new(0x00200012, "IS", "91")  # made "1A" below: pydicom will not write it
    path = _write(ds, tmp_path / "odd.dcm", syntax)
    if change == "bad IS":
        element = b"\x20\x00\x12\x00IS\x02\x00"
        path.write_bytes(path.read_bytes().replace(element + b"91", element + b"1A"))
    fast, _ = _both(path)
    assert fast is None
    _assert_agree(path, fast_expected=False)


def test_a_header_cut_short_is_not_read(tmp_path):
    """Until the Pixel Data element has begun the header is not whole: every
    shorter prefix gives None, every longer one the same answer."""
    data = _write(_us_image(), tmp_path / "us.dcm").read_bytes()
    whole = fastheader.read(data)
    assert whole is not None
    for cut in range(0, whole.pixel.value_at):
        assert fastheader.read(data[:cut]) is None, cut
    assert fastheader.read(data[:whole.pixel.value_at]) == whole


def test_pydicoms_test_files(tmp_path):
    """Every file pydicom ships: fastheader agrees with pydicom or declines."""
    read = 0
    for path in sorted(PYDICOM_FILES.rglob("*.dcm")):  # the bundled ones: no network here
        fast, _ = _both(path)
        _assert_agree(path, fast_expected=False)
        read += fast is not None
    assert read >= 30  # most are plain little endian: they must not all fall back
