"""Only whole objects are acknowledged (issue 15.1), end to end.

A C-STORE whose data set is cut anywhere, damaged in its framing, or whose
pixels do not fit its Image Pixel attributes gets a failure status and leaves
nothing behind; the association and the daemon go on. The rule itself is
tested on bytes in tests/dicomfile/test_structure.py; here the real daemon
gets such objects from pynetdicom, sent byte for byte (chunked send).
"""

from __future__ import annotations

import struct

import pydicom
import pytest

from tests.synthetic import generate_singles
from tests.support import dataset_bytes, encode, meta_file, pydicom_file, scu_store

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CANNOT_UNDERSTAND, NOT_ITS_SOP_CLASS = 0xC000, 0xA900
REFUSED = {CANNOT_UNDERSTAND, NOT_ITS_SOP_CLASS}


def ct_small_body() -> tuple[bytes, pydicom.Dataset]:
    """CT_small.dcm's data set alone, as Explicit VR Little Endian bytes."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    return encode(ds), ds


def assert_nothing_left(daemon) -> None:
    assert daemon.rows("SELECT count(*) FROM instances") == [(0,)]
    assert list(daemon.storage.rglob("*.dcm")) == []
    assert daemon.incoming_files() == []


def test_a_data_set_cut_inside_its_header_is_refused(daemon, chunked_send, tmp_path):
    """The report, step by step: 10 % of CT_small's data set after a valid file meta."""
    body, ds = ct_small_body()
    cut = body[: len(body) // 10]
    assert b"\xe0\x7f\x10\x00" not in cut  # the cut falls inside the header
    sent = meta_file(tmp_path / "cut.dcm", cut, ds.SOPClassUID, ds.SOPInstanceUID)
    assert scu_store(daemon.dicom_port, [sent]) == [CANNOT_UNDERSTAND]
    assert_nothing_left(daemon)
    assert "truncated DICOM object" in daemon.log()
    # The whole object then stores, byte for byte.
    whole = meta_file(tmp_path / "whole.dcm", body, ds.SOPClassUID, ds.SOPInstanceUID)
    assert scu_store(daemon.dicom_port, [whole]) == [0]
    assert dataset_bytes(daemon.stored_path(ds.SOPInstanceUID)) == body


def test_cuts_at_many_offsets_are_all_refused(daemon, chunked_send, tmp_path):
    us_image = generate_singles(tmp_path / "us", 1)[0]
    us_ds = pydicom.dcmread(us_image)
    ct_body, ct_ds = ct_small_body()
    cases = []
    for name, body, ds in (("ct", ct_body, ct_ds), ("us", encode(us_ds), us_ds)):
        # Dense through the header, sparse through the pixel data, and one byte short.
        offsets = sorted({*range(1, 2048, 37), *range(2048, len(body), len(body) // 15), len(body) - 1})
        for cut in offsets:
            cases.append(meta_file(tmp_path / f"{name}-{cut}.dcm", body[:cut], ds.SOPClassUID,
                                   ds.SOPInstanceUID))
    statuses = scu_store(daemon.dicom_port, cases)
    wrong = {c.name: hex(s) for c, s in zip(cases, statuses) if s not in REFUSED}
    assert not wrong, wrong
    assert_nothing_left(daemon)
    assert scu_store(daemon.dicom_port, [us_image]) == [0]


def _element_headers(body: bytes, limit: int) -> list[int]:
    """Offsets of the top-level explicit VR LE element headers before ``limit``."""
    offsets, pos = [], 0
    while pos < limit:
        offsets.append(pos)
        vr = body[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL"):
            length = struct.unpack_from("<L", body, pos + 8)[0]
            pos += 12 + (0 if length == 0xFFFFFFFF else length)
            if length == 0xFFFFFFFF:
                break  # an undefined-length sequence: stop listing here
        else:
            pos += 8 + struct.unpack_from("<H", body, pos + 6)[0]
    return offsets


# Some 400 objects: on stock pynetdicom each waits for the delayed ACK of pynetdicom's
# client (Nagle on), 20 s in all; how a refused object is answered is covered above.
@pytest.mark.fast_path_only
def test_damaged_framing_in_the_header_is_refused(daemon, chunked_send, tmp_path):
    """Each element's length made longer, odd, or huge, each tag made to repeat
    the one before: every such object is refused."""
    body, ds = ct_small_body()
    cases = []
    heads = _element_headers(body, 1500)
    for i, at in enumerate(heads):
        long_vr = body[at + 4:at + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT")
        spot, fmt = (at + 8, "<L") if long_vr else (at + 6, "<H")
        length = struct.unpack_from(fmt, body, spot)[0]
        for new in (length + 2, length + 1, 0xFFF0 if not long_vr else 0x7FFFFFF0):
            damaged = bytearray(body)
            struct.pack_into(fmt, damaged, spot, new)
            cases.append((f"len{at}:{new}", bytes(damaged)))
        if i:
            damaged = bytearray(body)
            damaged[at:at + 4] = body[heads[i - 1]:heads[i - 1] + 4]  # a repeated tag
            cases.append((f"tag{at}", bytes(damaged)))
    files = [meta_file(tmp_path / f"{n}.dcm", b, ds.SOPClassUID, ds.SOPInstanceUID) for n, b in cases]
    statuses = scu_store(daemon.dicom_port, files)
    wrong = {n: hex(s) for (n, _), s in zip(cases, statuses) if s not in REFUSED}
    assert not wrong, wrong
    assert_nothing_left(daemon)


@pytest.mark.parametrize("change, status, reason", [
    ({"Rows": 65535, "Columns": 65535, "NumberOfFrames": 1000}, CANNOT_UNDERSTAND,
     "65535 rows x 65535 columns x 3 samples x 8 bits x 1000 frames need"),
    ({"PixelData": None}, NOT_ITS_SOP_CLASS, "Ultrasound Image Storage without Pixel Data"),
    # A zero would make any Pixel Data "fit"; no viewer can show these.
    ({"Rows": 0}, NOT_ITS_SOP_CLASS, "an image of 0 rows x 640 columns x 3 samples"),
    ({"SamplesPerPixel": 0}, NOT_ITS_SOP_CLASS, "an image of 480 rows x 640 columns x 0 samples"),
    ({"SamplesPerPixel": None}, NOT_ITS_SOP_CLASS, "without Rows, Columns, Samples per Pixel and Bits"),
    ({"BitsAllocated": 0}, NOT_ITS_SOP_CLASS, "Bits Allocated 0: neither 1 nor a multiple of 8"),
    ({"BitsAllocated": 12}, NOT_ITS_SOP_CLASS, "Bits Allocated 12: neither 1 nor a multiple of 8"),
])  # fmt: skip
def test_pixels_must_match_the_image(daemon, chunked_send, tmp_path, change, status, reason):
    ds = pydicom.dcmread(generate_singles(tmp_path / "us", 1)[0])
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    sent = meta_file(tmp_path / "odd.dcm", encode(ds), ds.SOPClassUID, ds.SOPInstanceUID)
    assert scu_store(daemon.dicom_port, [sent]) == [status]
    assert reason in daemon.log()
    assert_nothing_left(daemon)
