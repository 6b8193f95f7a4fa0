"""WADO-URI end to end (PS3.18 9): the real daemon and plain HTTP clients."""

from __future__ import annotations

import io
from urllib.parse import urlencode

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.support import pydicom_file, run
from tests.web import start_daemon
from tests.web.wado_support import cstore, get, us_dataset, write

ELE = "1.2.840.10008.1.2.1"


class Uri:
    def __init__(self, daemon, files):
        self.daemon = daemon
        self.files = files
        self.base = f"http://127.0.0.1:{daemon.http_port}/wado"

    def ds(self, role):
        return pydicom.dcmread(self.files[role])

    def query(self, role, **params):
        ds = pydicom.dcmread(self.files[role], stop_before_pixels=True)
        args = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID,
                "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID}
        args.update(params)
        return get(f"{self.base}?{urlencode({k: v for k, v in args.items() if v is not None})}")


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    root = tmp_path_factory.mktemp("wado-uri")
    files = {
        "cine": write(us_dataset(frames=4, rows=40, columns=60, seed=5), root / "cine.dcm"),
        "jpeg": pydicom_file("SC_rgb_jpeg_dcmtk.dcm"),
        "rle": pydicom_file("MR_small_RLE.dcm"),
        "sr": pydicom_file("test-SR.dcm"),
    }
    daemon = start_daemon(root / "daemon", DicomWeb={"WadoRoot": "/wado"})
    try:
        assert cstore(daemon.dicom_port, list(files.values())) == [0] * len(files)
        yield Uri(daemon, files)
    finally:
        daemon.stop()


def image(reply) -> Image.Image:
    assert reply.status == 200, reply.body[:200]
    return Image.open(io.BytesIO(reply.body))


def test_dicom_as_stored(uri):
    reply = uri.query("cine", contentType="application/dicom")
    assert reply.status == 200
    assert reply.content_type == f"application/dicom; transfer-syntax={ELE}"
    sop = uri.ds("cine").SOPInstanceUID
    assert reply.body == uri.daemon.stored_path(sop).read_bytes()
    # Lossy JPEG stays as stored by default (PS3.18 8.7.3.4 Note 2)...
    assert uri.query("jpeg", contentType="application/dicom").body == \
        uri.daemon.stored_path(uri.ds("jpeg").SOPInstanceUID).read_bytes()
    # ... and is decompressed on request.
    got = pydicom.dcmread(io.BytesIO(uri.query("jpeg", contentType="application/dicom",
                                               transferSyntax=ELE).body))
    assert got.file_meta.TransferSyntaxUID == ELE
    assert np.array_equal(got.pixel_array, uri.ds("jpeg").pixel_array)
    # RLE (lossless) is Explicit VR LE by default.
    rle = pydicom.dcmread(io.BytesIO(uri.query("rle", contentType="application/dicom").body))
    assert rle.file_meta.TransferSyntaxUID == ELE
    assert np.array_equal(rle.pixel_array, uri.ds("rle").pixel_array)
    assert uri.query("cine", contentType="application/dicom",
                     transferSyntax="1.2.840.10008.1.2.4.50").status == 406


def test_jpeg_is_the_default_and_png_on_request(uri):
    jpeg = image(uri.query("cine"))
    assert jpeg.format == "JPEG" and jpeg.size == (60, 40)
    png = image(uri.query("cine", contentType="image/png", frameNumber="3"))
    assert png.format == "PNG"
    assert np.array_equal(np.asarray(png), uri.ds("cine").pixel_array[2])
    assert image(uri.query("cine", contentType="image/jpeg,image/png")).format == "JPEG"
    assert image(uri.query("cine", contentType="image/gif, image/png")).format == "PNG"
    # Without pixel data the default is the object itself.
    sr = uri.query("sr")
    assert sr.status == 200 and sr.content_type.startswith("application/dicom")
    assert uri.query("sr", contentType="image/jpeg").status == 406


def test_rendering_parameters(uri):
    assert image(uri.query("cine", rows="20")).size == (30, 20)
    assert image(uri.query("cine", columns="30", rows="30")).size == (30, 20)
    low = uri.query("cine", imageQuality="5").body
    assert len(low) < len(uri.query("cine", imageQuality="100").body)
    half = image(uri.query("cine", contentType="image/png", region="0.0,0.0,0.5,0.5"))
    assert half.size == (30, 20)
    assert np.array_equal(np.asarray(half), uri.ds("cine").pixel_array[0][:20, :30])
    windowed = image(uri.query("rle", windowCenter="500", windowWidth="1000"))
    assert windowed.mode == "L"
    assert uri.query("cine", frameNumber="5").status == 404


def test_study_and_series_are_optional_but_checked(uri):
    ds = uri.ds("cine")
    assert image(get(f"{uri.base}?requestType=WADO&objectUID={ds.SOPInstanceUID}")).format == "JPEG"
    assert uri.query("cine", studyUID="1.2.3").status == 404
    assert uri.query("cine", seriesUID=uri.ds("jpeg").SeriesInstanceUID).status == 404
    assert uri.query("cine", objectUID="1.2.3.4.5").status == 404


@pytest.mark.parametrize("params", [
    {"requestType": None},
    {"requestType": "WADO-RS"},
    {"objectUID": None},
    {"objectUID": "abc"},
    {"objectUID": "../../etc/passwd"},
    {"objectUID": "/etc/passwd"},
    {"studyUID": "1..2"},
    {"seriesUID": "%2e%2e"},
    {"frameNumber": "0"},
    {"frameNumber": "x"},
    {"rows": "-1"},
    {"rows": "100000"},
    {"imageQuality": "101"},
    {"windowCenter": "40"},
    {"windowCenter": "a", "windowWidth": "1"},
    {"region": "0.5,0.5,0.2,0.2"},
    {"region": "x"},
    {"anonymize": "yes"},
    {"unknownParameter": "1"},
    {"transferSyntax": "../x", "contentType": "application/dicom"},
])
def test_bad_requests_are_400(uri, params):
    reply = uri.query("cine", **params)
    assert reply.status == 400, (params, reply.status, reply.body[:200])


def test_unsupported_content_type_is_406(uri):
    assert uri.query("cine", contentType="text/html").status == 406


def test_traversal_in_the_path(uri):
    done = run(["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                f"{uri.base}/../../etc/passwd?requestType=WADO&objectUID=1.2"])
    assert done.stdout in ("400", "404")
