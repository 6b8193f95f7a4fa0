"""The frame headers appliance.dicomfile.codestream reads, on pydicom's real compressed files."""

from __future__ import annotations

import pydicom
import pytest
from pydicom import encaps

from appliance.dicomfile import codestream
from tests.support import pydicom_file

# JPEG Baseline/Extended/Lossless, JPEG-LS and JPEG 2000 files bundled with pydicom.
FILES = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG-lossy.dcm", "JPGExtended.dcm",
         "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jls_lossy_line.dcm",
         "JPEG2000.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_gdcm_KY.dcm", "GDCMJ2K_TextGBR.dcm",
         "examples_ybr_color.dcm"]


def _attrs(ds) -> dict:
    return {"Rows": ds.Rows, "Columns": ds.Columns, "SamplesPerPixel": ds.SamplesPerPixel,
            "BitsAllocated": ds.BitsAllocated, "BitsStored": ds.BitsStored,
            "PhotometricInterpretation": ds.PhotometricInterpretation}


def _first_frame(ds) -> bytes:
    frames = int(ds.get("NumberOfFrames", 1))
    return next(encaps.generate_frames(ds.PixelData, number_of_frames=frames))


@pytest.mark.parametrize("name", FILES)
def test_real_files_agree_with_their_codestream(name):
    ds = pydicom.dcmread(pydicom_file(name))
    ts = str(ds.file_meta.TransferSyntaxUID)
    frame = _first_frame(ds)
    header = codestream.frame_header(frame, ts)
    assert (header.rows, header.columns, header.components) == (ds.Rows, ds.Columns,
                                                                ds.SamplesPerPixel)
    assert header.precision <= ds.BitsAllocated
    assert codestream.problem(_attrs(ds), ts, frame) is None


@pytest.mark.parametrize("change,why", [
    ({"Rows": 99}, "the codestream is 100 x 100, the attributes say 100 x 99"),
    ({"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2"},
     "the codestream has 3 components, Samples per Pixel 1"),
    ({"BitsAllocated": 32}, "JPEG Baseline with Bits Allocated 32 and Bits Stored 8"),
    ({"BitsStored": 7}, "JPEG Baseline with Bits Allocated 8 and Bits Stored 7"),
    ({"BitsAllocated": 12}, "Bits Allocated 12 is not 1, 8, 16, 32 or 64"),
    ({"BitsStored": 9}, "Bits Stored 9 does not fit Bits Allocated 8"),
    ({"SamplesPerPixel": 4}, "Samples per Pixel 4 is neither 1 nor 3"),
    ({"PhotometricInterpretation": "MONOCHROME2"},
     "Photometric Interpretation MONOCHROME2 with 3 samples per pixel"),
])
def test_disagreements_are_named(change, why):
    ds = pydicom.dcmread(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
    attrs = {**_attrs(ds), **change}
    assert codestream.problem(attrs, str(ds.file_meta.TransferSyntaxUID), _first_frame(ds)) == why


def test_damaged_headers_are_named():
    ds = pydicom.dcmread(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
    ts, frame = str(ds.file_meta.TransferSyntaxUID), _first_frame(ds)
    assert codestream.problem(_attrs(ds), ts, b"\0" + frame) == \
        "the frame does not start with a JPEG SOI marker"
    assert codestream.problem(_attrs(ds), ts, frame[:20]).startswith("no JPEG frame header")
    j2k = pydicom.dcmread(pydicom_file("JPEG2000.dcm"))
    assert codestream.problem(_attrs(j2k), str(j2k.file_meta.TransferSyntaxUID), b"junk") == \
        "no JPEG 2000 SIZ segment at the start of the frame"
    assert codestream.frame_header(frame, "1.2.840.10008.1.2.5") is None  # RLE: no header
