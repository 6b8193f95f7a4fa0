"""WADO-RS end to end: the real daemon, dicomweb-client and plain HTTP (urllib, curl)."""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import encaps

from tests.support import dataset_bytes, pydicom_file, run
from tests.web import start_daemon
from tests.web.wado_support import cstore, get, us_dataset, write

ELE = "1.2.840.10008.1.2.1"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_ELE = f'multipart/related; type="application/dicom"; transfer-syntax={ELE}'

# Bundled pydicom files (distinct SOP Instance UIDs), by role.
FILES = {
    "jpeg": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "ybr422": "examples_ybr_color.dcm",  # JPEG baseline, YBR_FULL_422, 30 frames (US)
    "rle": "SC_rgb_rle_2frame.dcm",  # RLE, RGB, 2 frames
    "j2k": "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless, YBR_RCT
    "j2k_lossy": "JPEG2000.dcm",  # JPEG 2000 (lossy-capable), 16-bit MONOCHROME2
    "implicit": "MR_small_implicit.dcm",  # Implicit VR LE, 16-bit
    "ct": "CT_small.dcm",  # Explicit VR LE, private OB values as bulk data
    "big_endian": "SC_rgb_small_odd_big_endian.dcm",
    "sr": "test-SR.dcm",  # no pixel data
    "jpeg12": "JPGExtended.dcm",  # 12-bit JPEG extended: no decoder installed
}


class Archive:
    """The module's daemon and what was stored in it."""

    def __init__(self, daemon, files, synthetic):
        self.daemon = daemon
        self.files = files  # role -> Path
        self.synthetic = synthetic  # role -> Dataset
        self.base = f"http://127.0.0.1:{daemon.http_port}/dicom-web"
        self.client = DICOMwebClient(self.base)

    def reachable(self, uri: str) -> str:
        """dicomweb-client sends "Host: 127.0.0.1" without the port (it sets Host itself),
        so URLs written for it lack the port: put it back."""
        return uri.replace("http://127.0.0.1/", f"http://127.0.0.1:{self.daemon.http_port}/", 1)

    def ds(self, role: str) -> pydicom.Dataset:
        return pydicom.dcmread(self.files[role])

    def url(self, role: str, tail: str = "") -> str:
        ds = pydicom.dcmread(self.files[role], stop_before_pixels=True)
        return (f"{self.base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}{tail}")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("wado")
    files = {role: pydicom_file(name) for role, name in FILES.items()}
    synthetic = {
        "cine": us_dataset(frames=10, rows=64, columns=64, seed=1),
        "grey": us_dataset(rgb=False, rows=32, columns=48, seed=2),
        "mono1": us_dataset(rgb=False, rows=16, columns=16, seed=3, photometric="MONOCHROME1"),
    }
    synthetic["grey"].WindowCenter, synthetic["grey"].WindowWidth = 100, 50
    for role, ds in synthetic.items():
        files[role] = write(ds, root / f"{role}.dcm")
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files.values()}
    assert len(uids) == len(files)
    daemon = start_daemon(root / "daemon")
    try:
        assert cstore(daemon.dicom_port, list(files.values())) == [0] * len(files)
        yield Archive(daemon, files, synthetic)
    finally:
        daemon.stop()


def dataset_bytes_of(data: bytes) -> bytes:
    path = Path(tempfile.mktemp(suffix=".dcm"))
    try:
        path.write_bytes(data)
        return dataset_bytes(path)
    finally:
        path.unlink()


def parts_of(reply, count=None):
    assert reply.status == 200, reply.body[:300]
    assert reply.content_type.startswith("multipart/related"), reply.content_type
    parts = reply.parts()
    if count is not None:
        assert len(parts) == count
    return parts


# --------------------------------------------------------------------------- instances


@pytest.mark.parametrize("role", ["jpeg", "rle", "implicit", "ct", "sr", "cine", "big_endian"])
def test_transfer_syntax_star_gives_the_stored_file_byte_for_byte(archive, role):
    ((headers, body),) = parts_of(get(archive.url(role), DICOM_ANY), 1)
    ds = pydicom.dcmread(archive.files[role], stop_before_pixels=True)
    assert body == archive.daemon.stored_path(ds.SOPInstanceUID).read_bytes()
    # The data set is what the scanner sent (C-STORE carries no File Meta).
    assert dataset_bytes_of(body) == dataset_bytes(archive.files[role])
    ts = ds.file_meta.TransferSyntaxUID
    assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
    assert int(headers["content-length"]) == len(body)


def test_default_is_explicit_le_except_lossy(archive):
    # PS3.18 8.7.3.4: no transfer syntax asked -> Explicit VR LE; lossy JPEG as stored (Note 2).
    for role, stored in (("ct", True), ("cine", True), ("jpeg", True), ("rle", False),
                         ("implicit", False)):
        ((headers, body),) = parts_of(get(archive.url(role), 'multipart/related; type="application/dicom"'), 1)
        if stored:
            assert dataset_bytes_of(body) == dataset_bytes(archive.files[role]), role
        else:
            assert headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
            ds = pydicom.dcmread(io.BytesIO(body))
            assert ds.file_meta.TransferSyntaxUID == ELE
            assert np.array_equal(ds.pixel_array, archive.ds(role).pixel_array), role


@pytest.mark.parametrize("role", ["jpeg", "ybr422", "rle", "j2k", "j2k_lossy", "implicit", "big_endian"])
def test_transcoding_to_explicit_le_keeps_the_pixels(archive, role):
    ((headers, body),) = parts_of(get(archive.url(role), DICOM_ELE), 1)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
    got, original = pydicom.dcmread(io.BytesIO(body)), archive.ds(role)
    assert got.file_meta.TransferSyntaxUID == ELE
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.get("PatientID") == original.get("PatientID")
    # pydicom's own decode of the stored object is the reference.
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_impossible_transfer_syntax_is_406(archive):
    jpeg_ls = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
    assert get(archive.url("ct"), jpeg_ls).status == 406  # we never compress
    assert get(archive.url("jpeg12"), DICOM_ELE).status == 406  # no 12-bit JPEG decoder
    # ... but the stored form is always there.
    assert get(archive.url("jpeg12"), DICOM_ANY).status == 200
    # The client can list alternatives (q-values); the best possible one is used.
    reply = get(archive.url("ct"), f"{jpeg_ls}, {DICOM_ELE};q=0.5")
    assert dataset_bytes_of(parts_of(reply, 1)[0][1]) == dataset_bytes(archive.files["ct"])


def test_a_value_that_cannot_be_written_again_is_406_not_500(tmp_path):
    """An Implicit VR object whose Series Number holds a byte no character set
    decodes ("1\\xff": whole and acknowledged, its framing is sound). pydicom cannot
    encode that value again, so the default Explicit VR LE answer cannot be made:
    406, saying so, while the stored form is served as it is (the long fuzz
    campaign found a 500 here)."""
    ds = us_dataset(rows=8, columns=8, seed=4)
    ds.SeriesNumber = "12"
    path = tmp_path / "odd.dcm"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"   # Implicit VR Little Endian
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    element = b"\x20\x00\x11\x00\x02\x00\x00\x0012"   # (0020,0011) IS, implicit VR
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, element[:-1] + b"\xff"))
    daemon = start_daemon(tmp_path / "daemon")
    try:
        assert cstore(daemon.dicom_port, [path]) == [0]
        url = (f"http://127.0.0.1:{daemon.http_port}/dicom-web/studies/{ds.StudyInstanceUID}"
               f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
        refused = get(url, 'multipart/related; type="application/dicom"')
        assert refused.status == 406, refused.body[:300]
        assert b"cannot be written in Explicit VR Little Endian" in refused.body
        ((_, body),) = parts_of(get(url, DICOM_ANY), 1)
        assert dataset_bytes_of(body) == dataset_bytes(path)
    finally:
        daemon.stop()


def test_dicomweb_client_retrieves_study_series_and_instance(archive):
    ds = archive.ds("cine")
    study = archive.client.retrieve_study(ds.StudyInstanceUID)
    assert [d.SOPInstanceUID for d in study] == [ds.SOPInstanceUID]
    series = archive.client.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert np.array_equal(series[0].pixel_array, ds.pixel_array)
    one = archive.client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                           ds.SOPInstanceUID)
    assert one.PatientID == "WADO001"
    # Three bundled files share one study: all come back, each once.
    jpeg = archive.ds("jpeg")
    shared = archive.client.retrieve_study(jpeg.StudyInstanceUID,
                                           media_types=(("application/dicom", "*"),))
    expected = {pydicom.dcmread(archive.files[r], stop_before_pixels=True).SOPInstanceUID
                for r in ("jpeg", "rle", "big_endian")}
    assert {d.SOPInstanceUID for d in shared} == expected


def test_unknown_uids_are_404_and_bad_ones_400(archive):
    ds = archive.ds("cine")
    assert get(f"{archive.base}/studies/1.2.3.4").status == 404
    assert get(f"{archive.base}/studies/{ds.StudyInstanceUID}/series/1.2.3").status == 404
    # The instance exists, but not under that series: not found there.
    other = archive.ds("ct")
    assert get(f"{archive.base}/studies/{ds.StudyInstanceUID}/series/{other.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}").status == 404
    for bad in ("abc", "1..2", "1.2.", "9" * 65, quote("1.2;rm -rf")):
        reply = get(f"{archive.base}/studies/{bad}")
        assert reply.status == 400, (bad, reply.status)
        assert b"StudyInstanceUID" in reply.body


@pytest.mark.parametrize("path", [
    "/studies/..%2F..%2F..%2Fetc%2Fpasswd",
    "/studies/%2e%2e/series/%2e%2e/instances/%2e%2e",
    "/studies/%2Fetc%2Fpasswd",
    "/studies/1.2/series/1.2/instances/1.2/bulk/..%2F..%2F..%2Fetc%2Fpasswd",
    "/studies/1.2/series/1.2/instances/1.2/bulk/%2Fetc%2Fpasswd",
    "/studies/1.2/series/1.2/instances/1.2/frames/..%2F1",
    "/studies/../../../../etc/passwd",
    "/studies/1.2/series/../../../../../etc/passwd",
])
def test_traversal_attempts_never_reach_a_file(archive, path):
    done = run(["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                archive.base + path])
    assert done.stdout in ("400", "404"), (path, done.stdout)


# --------------------------------------------------------------------------- metadata


def test_metadata_is_what_was_stored_with_absolute_bulk_uris(archive):
    ds = archive.ds("ct")
    meta = archive.client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert meta["00100020"]["Value"] == [ds.PatientID]
    assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
    uri = archive.reachable(meta["7FE00010"]["BulkDataURI"])
    assert uri == archive.url("ct", "/bulk/7FE00010")
    (pixels,) = archive.client.retrieve_bulkdata(uri)
    assert pixels == ds.PixelData
    # A private OB value, fetched with a plain client asking for a single part.
    private = get(archive.reachable(meta["00431028"]["BulkDataURI"]), "application/octet-stream")
    assert private.status == 200
    assert private.body == ds[0x00431028].value


def test_bulk_data_inside_a_sequence_and_errors(archive):
    ds = archive.synthetic["cine"]
    (meta,) = archive.client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    icon = archive.reachable(meta["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"])
    assert icon.endswith("/bulk/00880200/0/7FE00010")
    assert archive.client.retrieve_bulkdata(icon) == [ds.IconImageSequence[0].PixelData]
    assert get(archive.url("cine", "/bulk/00880200/1/7FE00010")).status == 404  # no item 1
    assert get(archive.url("cine", "/bulk/00091000")).status == 404  # no such element
    assert get(archive.url("cine", "/bulk/7fe00010")).status == 400  # not our URI form
    assert get(archive.url("cine", "/bulk/7FE00010"), "image/jpeg").status == 406


def test_study_metadata_of_several_instances(archive):
    jpeg = archive.ds("jpeg")
    metas = archive.client.retrieve_study_metadata(jpeg.StudyInstanceUID)
    assert len(metas) == 3
    for meta in metas:
        sop = meta["00080018"]["Value"][0]
        series = meta["0020000E"]["Value"][0]
        assert archive.reachable(meta["7FE00010"]["BulkDataURI"]) == (
            f"{archive.base}/studies/{jpeg.StudyInstanceUID}/series/{series}/instances/{sop}"
            "/bulk/7FE00010")
    reply = get(f"{archive.base}/studies/{jpeg.StudyInstanceUID}/metadata", "application/dicom+xml")
    assert reply.status == 406


def test_urls_follow_the_proxy_headers(archive):
    reply = get(archive.url("ct", "/metadata"), None,
                **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.clinic"})
    assert b'"BulkDataURI":"https://pacs.clinic/dicom-web/studies/' in reply.body


def test_compressed_pixel_data_as_bulk_data(archive):
    ds = archive.ds("rle")
    uri = archive.url("rle", "/bulk/7FE00010")
    # octet-stream: every frame decoded, one part.
    (raw,) = archive.client.retrieve_bulkdata(uri, media_types=("application/octet-stream",))
    assert raw == ds.pixel_array.tobytes()
    # as stored: one part per compressed frame (PS3.18 8.7.3.3.2).
    reply = get(uri, 'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    parts = parts_of(reply, 2)
    assert [p[1] for p in parts] == list(encaps.generate_frames(ds.PixelData, number_of_frames=2))
    assert parts[0][0]["content-type"] == "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"


# --------------------------------------------------------------------------- frames


def test_frames_of_an_uncompressed_cine(archive):
    ds = archive.synthetic["cine"]
    frame_size = 64 * 64 * 3
    frames = archive.client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1, 5, 10])
    for got, n in zip(frames, (1, 5, 10)):
        assert got == ds.PixelData[(n - 1) * frame_size:n * frame_size]
    single = get(archive.url("cine", "/frames/7"), "application/octet-stream")
    assert single.headers["content-type"].startswith("application/octet-stream")
    assert single.body == ds.PixelData[6 * frame_size:7 * frame_size]


def test_frames_of_compressed_instances(archive):
    ds = archive.ds("ybr422")
    # Uncompressed (the default): decoded to RGB, as pydicom decodes it.
    decoded = archive.client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[2, 30])
    assert decoded == [ds.pixel_array[1].tobytes(), ds.pixel_array[29].tobytes()]
    # As stored (what OHIF asks for): the JPEG bitstream of each frame.
    reply = get(archive.url("ybr422", "/frames/3"),
                'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    ((headers, body),) = parts_of(reply, 1)
    assert headers["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert body == encaps.get_frame(ds.PixelData, 2, number_of_frames=30)
    jpeg = get(archive.url("ybr422", "/frames/4"), 'multipart/related; type="image/jpeg"')
    assert Image.open(io.BytesIO(parts_of(jpeg, 1)[0][1])).size == (320, 240)


@pytest.mark.parametrize(("frames", "status"), [
    ("11", 404), ("1,11", 404), ("0", 400), ("a", 400), ("1,,2", 400), ("-1", 400), ("1;2", 400),
    (",".join(["1"] * 5000), 400), ("9" * 30, 400),
])
def test_bad_frame_lists(archive, frames, status):
    assert get(archive.url("cine", f"/frames/{frames}")).status == status


def test_frames_of_an_instance_without_pixels_and_unacceptable_types(archive):
    assert get(archive.url("sr", "/frames/1")).status == 404
    assert get(archive.url("cine", "/frames/1"), "image/jpeg").status == 406  # never re-encoded
    assert get(archive.url("cine", "/frames/1,2"), "application/octet-stream").status == 406


# --------------------------------------------------------------------------- rendered


def image(reply) -> Image.Image:
    assert reply.status == 200, reply.body[:200]
    return Image.open(io.BytesIO(reply.body))


def test_rendered_instance_and_frame(archive):
    ds = archive.synthetic["cine"]
    jpeg = archive.client.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    # PNG is lossless: frame 3 of the RGB cine comes back exactly.
    png = image(get(archive.url("cine", "/frames/3/rendered"), "image/png"))
    assert png.format == "PNG" and png.size == (64, 64)
    assert np.array_equal(np.asarray(png), ds.pixel_array[2])
    # An instance-level rendering of a multi-frame object is its first frame.
    first = image(get(archive.url("cine", "/rendered"), "image/png"))
    assert np.array_equal(np.asarray(first), ds.pixel_array[0])


def test_rendered_viewport_and_quality(archive):
    small = image(get(archive.url("ybr422", "/rendered?viewport=100,100"), "image/jpeg"))
    assert small.size == (100, 75)  # 320x240 fitted, aspect kept
    wide = image(get(archive.url("ybr422", "/frames/2/rendered?viewport=640,")))
    assert wide.size == (640, 480)
    low = get(archive.url("ybr422", "/rendered?quality=5")).body
    high = get(archive.url("ybr422", "/rendered?quality=95")).body
    assert len(low) < len(high)
    # viewport=vw,vh,sx,sy,sw,sh: a source region, then fitted.
    crop = image(get(archive.url("cine", "/rendered?viewport=32,32,8,16,32,32"), "image/png"))
    assert np.array_equal(np.asarray(crop), archive.synthetic["cine"].pixel_array[0][16:48, 8:40])
    assert image(get(archive.url("cine", "/rendered?viewport=10,10,8,16,32,32"))).size == (10, 10)


def test_rendered_grey_scale(archive):
    grey = archive.synthetic["grey"]
    got = np.asarray(image(get(archive.url("grey", "/rendered"), "image/png")))
    # PS3.3 C.11.2.1.2.1 linear window, center 100 width 50.
    x = grey.pixel_array.astype(float)
    expected = np.clip(np.rint(((x - 99.5) / 49 + 0.5) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(got, expected)
    windowed = np.asarray(image(get(archive.url("grey", "/rendered?window=128,256,linear-exact"),
                                    "image/png")))
    assert np.abs(windowed.astype(int) - grey.pixel_array).max() <= 1
    mono1 = archive.synthetic["mono1"]
    inverted = np.asarray(image(get(archive.url("mono1", "/rendered"), "image/png")))
    x = mono1.pixel_array.astype(float)
    lo, hi = x.min(), x.max()
    assert np.array_equal(inverted, 255 - np.rint((x - lo) * 255 / (hi - lo)).astype(np.uint8))
    for role in ("ct", "j2k_lossy", "jpeg", "rle", "big_endian"):
        assert image(get(archive.url(role, "/rendered"))).format == "JPEG"


def test_thumbnails(archive):
    ds = archive.ds("ybr422")
    study = image(get(f"{archive.base}/studies/{ds.StudyInstanceUID}/thumbnail"))
    assert study.size == (128, 96)
    series = image(get(f"{archive.base}/studies/{ds.StudyInstanceUID}/series/"
                       f"{ds.SeriesInstanceUID}/thumbnail?viewport=64,64", "image/png"))
    assert series.size == (64, 48)
    assert image(get(archive.url("ybr422", "/frames/30/thumbnail"))).size == (128, 96)
    assert image(get(archive.url("cine", "/thumbnail"))).size == (128, 128)  # fitted, both ways
    assert get(archive.url("ybr422", "/frames/31/thumbnail")).status == 404


@pytest.mark.parametrize(("tail", "accept", "status"), [
    ("/rendered?viewport=0,0", None, 400),
    ("/rendered?viewport=abc", None, 400),
    ("/rendered?viewport=99999,10", None, 400),
    ("/rendered?quality=0", None, 400),
    ("/rendered?quality=101", None, 400),
    ("/rendered?window=1", None, 400),
    ("/rendered?window=40,0", None, 400),
    ("/rendered?viewport=10,10,500,500,10,10", None, 400),
    ("/rendered", "image/gif", 406),
    ("/rendered", "application/dicom", 406),
    ("/frames/1,2/rendered", None, 400),
])
def test_bad_rendering_requests(archive, tail, accept, status):
    assert get(archive.url("cine", tail), accept).status == status


def test_rendering_what_cannot_be_rendered(archive):
    assert get(archive.url("sr", "/rendered")).status == 406  # no pixel data
    assert get(archive.url("jpeg12", "/rendered")).status == 406  # no decoder
    assert get(archive.url("jpeg12", "/thumbnail")).status == 406


def test_accept_query_parameter(archive):
    assert image(get(archive.url("cine", "/rendered?accept=image/png"))).format == "PNG"


def test_a_client_that_goes_away_does_not_hurt(archive):
    # Read a few bytes of a transcoding response and hang up; the daemon carries on.
    url = archive.url("ybr422")
    proc = subprocess.Popen(["curl", "-s", "-H", f"Accept: {DICOM_ELE}", url],
                            stdout=subprocess.PIPE)
    proc.stdout.read(1000)
    proc.kill()
    proc.wait()
    assert get(archive.url("cine", "/frames/1")).status == 200
    assert "unexpected error" not in archive.daemon.log()


def test_a_failure_after_the_first_byte_cuts_the_response_short(archive):
    # Three bundled files share a study; the 12-bit JPEG cannot be decoded, which
    # is found out only when its turn comes: the response must not look complete.
    ds = archive.ds("jpeg12")
    url = f"{archive.base}/studies/{ds.StudyInstanceUID}"
    done = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Accept: {DICOM_ELE}",
                url])
    assert done.returncode != 0 or done.stdout == "406", (done.returncode, done.stdout)
    assert "unexpected error" not in archive.daemon.log()  # not a 500 either
    assert get(url, DICOM_ANY).status == 200


def test_accept_negotiation():
    # Pure: appliance.web.media, the PS3.18 8.7 decisions in one place.
    from appliance.web import media

    ranges = media.parse_accept([
        'multipart/related; type="image/jpeg"; q=0.5, '
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        "application/dicom;q=0"])
    assert [(r.media_type, r.transfer_syntax, r.q) for r in ranges] == [
        ("application/octet-stream", "*", 1.0), ("image/jpeg", None, 0.5)]
    jpeg = "1.2.840.10008.1.2.4.50"
    assert media.choose_frames(ranges, jpeg, can_decode=True).content_type == \
        f"image/jpeg; transfer-syntax={jpeg}"
    assert media.choose_frames(media.parse_accept([]), jpeg, can_decode=True).content_type == \
        f"application/octet-stream; transfer-syntax={ELE}"
    default = media.parse_accept(['multipart/related; type="application/dicom"'])
    assert media.choose_dicom(default, jpeg, can_transcode=True).stored  # lossy: as stored
    rle = media.choose_dicom(default, "1.2.840.10008.1.2.5", can_transcode=True)
    assert (rle.stored, rle.transfer_syntax) == (False, ELE)
    assert media.choose_dicom(default, "1.2.840.10008.1.2.5", can_transcode=False).stored
    assert media.choose_rendered(media.parse_accept(["image/*"])) == "image/jpeg"
    assert media.choose_rendered(media.parse_accept(["text/html"])) is None
