"""STOW-RS end to end: the real daemon, dicomweb-client, aiohttp and raw HTTP bodies."""

from __future__ import annotations

import asyncio
import http.client
import io
import json

import aiohttp
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.support import pydicom_file
from tests.web import start_daemon
from tests.web.wado_support import get, split_multipart, us_dataset, write

BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
# FailureReason values (PS3.18 Table I.2-2 and appliance.web.stow).
CANNOT_UNDERSTAND = 0xC000
NOT_ITS_SOP_CLASS = 0xA900
STUDY_MISMATCH = 0xC409


def body_of(parts: list[bytes], content_type: str = "application/dicom") -> bytes:
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        out.write(part)
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


class Stow:
    """The module's daemon (1 MB STOW limit) and a way to post to it."""

    def __init__(self, daemon, folder):
        self.daemon = daemon
        self.folder = folder
        self.base = f"http://127.0.0.1:{daemon.http_port}/dicom-web"
        self.client = DICOMwebClient(self.base)

    def post(self, body: bytes, path: str = "/studies", content_type: str = CONTENT_TYPE,
             **headers) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.daemon.http_port, timeout=60)
        try:
            conn.request("POST", "/dicom-web" + path, body=body,
                         headers={"Content-Type": content_type, **headers})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {"raw": data}
        return response.status, payload

    def files(self) -> list:
        return sorted(p for p in self.daemon.storage.rglob("*.dcm"))

    def count(self) -> int:
        return self.daemon.rows("SELECT count(*) FROM instances")[0][0]

    def new_file(self, **kwargs) -> bytes:
        path = write(us_dataset(**kwargs), self.folder / "tmp.dcm")
        return path.read_bytes()


@pytest.fixture(scope="module")
def stow(tmp_path_factory):
    root = tmp_path_factory.mktemp("stow")
    daemon = start_daemon(root / "daemon", DicomWeb={"MaximumStowBodySize": 1})
    try:
        yield Stow(daemon, root)
    finally:
        daemon.stop()


def referenced(payload) -> list[dict]:
    return payload.get("00081199", {}).get("Value", [])


def failed(payload) -> list[dict]:
    return payload.get("00081198", {}).get("Value", [])


def uid(item, tag) -> str | None:
    return (item[tag].get("Value") or [None])[0]


def test_three_instances_with_dicomweb_client(stow):
    study = pydicom.uid.generate_uid()
    datasets = [us_dataset(study=study, seed=i, rows=32, columns=32) for i in range(3)]
    result = stow.client.store_instances(datasets)
    items = result.ReferencedSOPSequence
    assert [i.ReferencedSOPInstanceUID for i in items] == [d.SOPInstanceUID for d in datasets]
    assert "FailedSOPSequence" not in result
    # dicomweb-client sends "Host" without the port: the URLs say what the client used.
    assert result.RetrieveURL == f"http://127.0.0.1/dicom-web/studies/{study}"
    assert items[0].RetrieveURL.endswith(
        f"/studies/{study}/series/{datasets[0].SeriesInstanceUID}"
        f"/instances/{datasets[0].SOPInstanceUID}")
    back = stow.client.retrieve_study(study)
    assert sorted(d.SOPInstanceUID for d in back) == sorted(d.SOPInstanceUID for d in datasets)


def test_stored_byte_for_byte_and_urls(stow):
    study = pydicom.uid.generate_uid()
    files = [stow.new_file(study=study, seed=10 + i, rows=16, columns=16) for i in range(3)]
    status, payload = stow.post(body_of(files), f"/studies/{study}")
    assert status == 200, payload
    items = referenced(payload)
    assert len(items) == 3 and not failed(payload)
    base = f"http://127.0.0.1:{stow.daemon.http_port}/dicom-web"
    assert payload["00081190"] == {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    for data, item in zip(files, items):
        sop = uid(item, "00081155")
        assert stow.daemon.stored_path(sop).read_bytes() == data
        assert item["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.6.1"]
        url = item["00081190"]["Value"][0]
        assert url.startswith(f"{base}/studies/{study}/series/") and url.endswith(sop)
        reply = get(url, 'multipart/related; type="application/dicom"; transfer-syntax=*')
        assert split_multipart(reply.content_type, reply.body)[0][1] == data
    # Stored again: already there, answered success (as Orthanc and C-STORE do).
    status, payload = stow.post(body_of(files[:1]))
    assert status == 200 and len(referenced(payload)) == 1


def test_a_broken_part_fails_alone(stow):
    good = [stow.new_file(seed=20 + i, rows=16, columns=16) for i in range(2)]
    truncated = good[0][:-500]
    before = stow.count()
    status, payload = stow.post(body_of([good[0], b"this is not DICOM", good[1], truncated]))
    assert status == 202, payload
    assert len(referenced(payload)) == 2
    reasons = [item["00081197"]["Value"][0] for item in failed(payload)]
    assert reasons == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    assert stow.count() == before + 2
    assert stow.daemon.incoming_files() == []


def test_a_part_cut_inside_its_header_fails_alone(stow):
    """Issue 15.1 for STOW-RS: a part whose data set ends inside an element of
    its header is failed (pydicom alone would read it as a shorter object)."""
    good = stow.new_file(seed=40, rows=16, columns=16)
    pixel_at = good.rfind(b"\xe0\x7f\x10\x00")
    cut = good[: pixel_at - 3]  # inside the last element before Pixel Data
    lone_header = good[:pixel_at]  # cut between elements: an image without its pixels
    before = stow.count()
    status, payload = stow.post(body_of([cut, good, lone_header]))
    assert status == 202, payload
    assert len(referenced(payload)) == 1
    reasons = [item["00081197"]["Value"][0] for item in failed(payload)]
    assert reasons == [CANNOT_UNDERSTAND, NOT_ITS_SOP_CLASS]
    assert stow.count() == before + 1
    assert stow.daemon.incoming_files() == []


def test_nothing_stored_is_409(stow):
    before = stow.count()
    status, payload = stow.post(body_of([b"garbage one", b"garbage two"]))
    assert status == 409
    assert len(failed(payload)) == 2 and not referenced(payload)
    assert payload["00081190"] == {"vr": "UR"}
    assert stow.count() == before


def test_instances_of_another_study_than_the_url(stow):
    study = pydicom.uid.generate_uid()
    right = stow.new_file(study=study, seed=30, rows=16, columns=16)
    wrong = stow.new_file(seed=31, rows=16, columns=16)
    status, payload = stow.post(body_of([wrong]), f"/studies/{study}")
    assert status == 409
    (item,) = failed(payload)
    assert item["00081197"]["Value"] == [STUDY_MISMATCH]
    assert uid(item, "00081155") == pydicom.dcmread(io.BytesIO(wrong)).SOPInstanceUID
    status, payload = stow.post(body_of([right, wrong]), f"/studies/{study}")
    assert status == 202 and len(referenced(payload)) == 1 and len(failed(payload)) == 1
    assert stow.daemon.stored_path(pydicom.dcmread(io.BytesIO(wrong)).SOPInstanceUID) is None
    assert stow.daemon.incoming_files() == []
    assert stow.post(body_of([right]), "/studies/not-a-uid")[0] == 400


def test_a_part_that_is_not_dicom_by_type(stow):
    good = stow.new_file(seed=40, rows=16, columns=16)
    body = (f"--{BOUNDARY}\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\r\n"
            f"--{BOUNDARY}\r\n\r\n").encode() + good + f"\r\n--{BOUNDARY}--".encode()
    status, payload = stow.post(body)  # the second part has no headers: application/dicom
    assert status == 202
    assert [i["00081197"]["Value"][0] for i in failed(payload)] == [CANNOT_UNDERSTAND]


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    "application/json",
    f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
    f"multipart/form-data; boundary={BOUNDARY}",
    "",
])
def test_unsupported_media_types_are_415(stow, content_type):
    assert stow.post(body_of([b"x"]), content_type=content_type)[0] == 415


@pytest.mark.parametrize(("content_type", "body"), [
    ('multipart/related; type="application/dicom"', None),  # no boundary
    ('multipart/related; type="application/dicom"; boundary=""', None),
    ('multipart/related; type="application/dicom"; boundary=' + "x" * 80, None),
    (CONTENT_TYPE, b"no boundary anywhere in this body"),
    (CONTENT_TYPE, f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nnever closed".encode()),
    (CONTENT_TYPE, f"--{BOUNDARY}garbage\r\n\r\nx\r\n--{BOUNDARY}--".encode()),
    (CONTENT_TYPE, f"--{BOUNDARY}\r\nBad header line\r\n\r\nx\r\n--{BOUNDARY}--".encode()),
    (CONTENT_TYPE, f"--{BOUNDARY}--\r\n".encode()),  # no part at all
    (CONTENT_TYPE, b""),
])
def test_garbled_requests_are_400_and_store_nothing(stow, content_type, body):
    before, files = stow.count(), stow.files()
    if body is None:
        body = body_of([stow.new_file(seed=50, rows=16, columns=16)])
    elif b"never closed" in body or b"garbage" in body:
        # A good part first: it must not be stored either.
        body = body_of([stow.new_file(seed=51, rows=16, columns=16)])[:-len(f"--{BOUNDARY}--\r\n")] + body
    status, payload = stow.post(body, content_type=content_type)
    assert status == 400, payload
    assert stow.count() == before and stow.files() == files
    assert stow.daemon.incoming_files() == []


def test_over_the_maximum_size_is_413_and_leaves_nothing(stow):
    before, files = stow.count(), stow.files()
    big = [stow.new_file(seed=60 + i, rows=256, columns=256) for i in range(6)]  # ~1.2 MB
    status, _ = stow.post(body_of(big))
    assert status == 413
    # Without Content-Length (chunked): the limit is found while streaming.

    async def chunked() -> int:
        async def chunks():
            data = body_of(big)
            for i in range(0, len(data), 65536):
                yield data[i:i + 65536]

        async with aiohttp.ClientSession() as session:
            async with session.post(f"{stow.base}/studies", data=chunks(),
                                    headers={"Content-Type": CONTENT_TYPE}) as response:
                return response.status

    assert asyncio.run(chunked()) == 413
    assert stow.count() == before and stow.files() == files
    assert stow.daemon.incoming_files() == []
    # Under the limit, fine.
    assert stow.post(body_of(big[:2]))[0] == 200


def test_response_media_type(stow):
    good = stow.new_file(seed=70, rows=16, columns=16)
    assert stow.post(body_of([good]), Accept="application/dicom+xml")[0] == 406
    status, payload = stow.post(body_of([good]), Accept="application/dicom+json")
    assert status == 200 and referenced(payload)


def test_one_part_sent_in_tiny_chunks(stow):
    # Boundaries split across network reads must still be found.
    data = stow.new_file(seed=80, rows=16, columns=16)
    body = body_of([data])

    async def post() -> tuple[int, dict]:
        async def chunks():
            for i in range(0, len(body), 7):
                yield body[i:i + 7]

        async with aiohttp.ClientSession() as session:
            async with session.post(f"{stow.base}/studies", data=chunks(),
                                    headers={"Content-Type": CONTENT_TYPE}) as response:
                return response.status, await response.json(content_type=None)

    status, payload = asyncio.run(post())
    assert status == 200
    assert stow.daemon.stored_path(uid(referenced(payload)[0], "00081155")).read_bytes() == data


def test_bundled_files_across_transfer_syntaxes_round_trip(stow):
    names = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", "MR_small_jp2klossless.dcm",
             "liver_expb_1frame.dcm", "CT_small.dcm", "test-SR.dcm",
             "image_dfl.dcm"]
    files = [pydicom_file(n).read_bytes() for n in names]
    status, payload = stow.post(body_of(files))
    assert status == 200, payload
    assert len(referenced(payload)) == len(files)
    for data, item in zip(files, referenced(payload)):
        reply = get(item["00081190"]["Value"][0],
                    'multipart/related; type="application/dicom"; transfer-syntax=*')
        assert split_multipart(reply.content_type, reply.body)[0][1] == data


def test_the_parser_finds_boundaries_split_anywhere():
    # Pure: appliance.web.multipart on every split of a body into two network reads.
    from appliance.web.multipart import MultipartParser

    contents = [b"first", b"second\r\n--stow-test\r\n", b"", b"-" * 100]
    body = b"preamble\r\n" + body_of(contents) + b"epilogue"
    for cut in range(len(body) + 1):
        parser = MultipartParser(BOUNDARY)
        got: list[bytes] = []
        for piece in (body[:cut], body[cut:]):
            for event, value in parser.feed(piece):
                if event == "start":
                    assert value == {"content-type": "application/dicom"}
                    got.append(b"")
                elif event == "data":
                    got[-1] += value
        parser.close()
        assert got == contents, cut
