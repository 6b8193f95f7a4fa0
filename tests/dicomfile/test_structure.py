"""appliance.dicomfile.structure: what counts as a whole object.

Pure code on bytes, so these tests hand it bytes: pydicom's own test files
(every transfer syntax, sequences, private and UN sequences, deflate, big
endian), the same files cut at many offsets, and hand-made malformed ones.
The daemon end of the same rule is tests/dicom/test_whole_objects.py.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from appliance.dicomfile import structure
from appliance.dicomfile.structure import Malformed, NotItsSopClass, Reader, Truncated
from tests.support import encode, meta_file, pydicom_file

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

# Files pydicom ships that are whole, one per kind the walk must handle.
WHOLE = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
    "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_small_odd.dcm", "image_dfl.dcm",
    "nested_priv_SQ.dcm", "test-SR.dcm", "rtplan.dcm",
    "rtdose.dcm", "waveform_ecg.dcm", "liver_1frame.dcm",
    "examples_palette.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "badVR.dcm",
]  # fmt: skip


def whole(data: bytes) -> structure.Whole:
    return structure.check(Reader(data, len(data)))


@pytest.mark.parametrize("name", WHOLE)
def test_whole_files_pass(name):
    data = pydicom_file(name).read_bytes()
    seen = whole(data)
    assert seen.elements > 5


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_pydicoms_truncated_files_are_refused(name):
    with pytest.raises(Truncated, match="truncated DICOM object"):
        whole(pydicom_file(name).read_bytes())


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm"])
def test_every_cut_of_an_image_is_refused(name):
    """Cut anywhere after the preamble, an image is never whole: either an
    element is cut, or (cut between elements) its Pixel Data is missing."""
    data = pydicom_file(name).read_bytes()
    step = max(1, len(data) // 700)
    for cut in range(132, len(data), step):
        with pytest.raises(Malformed):
            whole(data[:cut])
        # ... and likewise when only the first bytes are in memory.
        head = data[:min(cut, 1024)]
        with pytest.raises(Malformed):
            structure.check(Reader(head, cut, lambda pos, n: data[pos:min(pos + n, cut)]))


def test_a_non_image_cut_between_elements_is_whole_but_inside_one_is_not():
    data = pydicom_file("rtplan.dcm").read_bytes()
    refused = sum(1 for cut in range(132, len(data), 7) if _refused(data[:cut]))
    assert refused >= 0.9 * len(range(132, len(data), 7))


def _refused(data: bytes) -> bool:
    try:
        whole(data)
    except Malformed:
        return True
    return False


def test_pixel_data_is_skipped_not_read():
    data = pydicom_file("CT_small.dcm").read_bytes()
    asked = []

    def read_at(pos, n):
        asked.append((pos, n))
        return data[pos:pos + n]

    pixel_at = data.rfind(b"\xe0\x7f\x10\x00OW")
    value_end = pixel_at + 12 + 128 * 128 * 2
    structure.check(Reader(data[:pixel_at + 12], len(data), read_at))
    assert asked and all(pos >= value_end for pos, _ in asked)  # the elements after it
    asked.clear()
    structure.check(Reader(data[:200], len(data), read_at))
    assert asked and all(pos + n > 200 for pos, n in asked)  # beyond the head only


def test_an_object_ending_with_its_pixel_data_needs_only_its_head(tmp_path):
    data = part10(tmp_path, encode(us(PixelData=b"\x80" * 4800, Rows=40, Columns=40)))
    structure.check(Reader(data[:len(data) - 4800], len(data), lambda pos, n: pytest.fail("read")))


@pytest.mark.parametrize("name", ["UN_sequence.dcm", "priv_SQ.dcm"])
def test_snippets_are_walked_whole_then_found_without_pixels(name):
    """pydicom's UN and private sequence samples: well framed (walked to the
    end, into implicit VR sequences), but image objects without Pixel Data."""
    with pytest.raises(NotItsSopClass):
        whole(pydicom_file(name).read_bytes())


# -- hand-made objects -----------------------------------------------------------------


def us(**kw) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = US_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 8, 8, 7
    ds.PixelData = b"\x80" * 48
    for k, v in kw.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def part10(tmp_path, body: bytes, ds: Dataset | None = None, **kw) -> bytes:
    ds = ds or us()
    return meta_file(tmp_path / "o.dcm", body, ds.SOPClassUID, ds.SOPInstanceUID, **kw).read_bytes()


def element(group: int, elem: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2s2xL", group, elem, vr, n) + value
    return struct.pack("<HH2sH", group, elem, vr, n) + value


def test_hand_made_image_is_whole(tmp_path):
    whole(part10(tmp_path, encode(us())))


@pytest.mark.parametrize("change, error", [
    # Tags must ascend: a repeated tag, then one out of order.
    (lambda b: b + element(0x0008, 0x0016, b"UI", b"1.2\x00"), "out of order or repeated"),
    (lambda b: element(0x0010, 0x0010, b"PN", b"A^B ") + b, "out of order or repeated"),
    # A value longer than what follows.
    (lambda b: b[:-48 - 12] + element(0x7FE0, 0x0010, b"OB", b"\x80" * 48, 4000), "Pixel Data needs 4000"),
    # Leftover bytes that are no element.
    (lambda b: b + b"\x01\x02\x03", "truncated"),
    # An unknown VR; also one whose second byte is no letter, which pydicom too
    # reads as an (unknown) explicit VR, not as an implicit element.
    (lambda b: b + element(0x7FE1, 0x0010, b"QQ", b"ab"), "unknown VR"),
    (lambda b: b + element(0x7FE1, 0x0010, b"D\x01", b"ab"), "unknown VR"),
    # A binary value that is not a whole number of values.
    (lambda b: b + element(0xFFFA, 0x0010, b"US", b"\x01\x02\x03"), "not a whole number"),
])  # fmt: skip
def test_malformed_data_sets_are_refused(tmp_path, change, error):
    body = change(encode(us()))
    with pytest.raises(Malformed) as e:
        whole(part10(tmp_path, body))
    assert error in str(e.value)


def test_an_implicit_element_amid_explicit_ones_is_whole(tmp_path):
    # Its length's first bytes (8, 0) are below "AA": pydicom reads it implicitly, as the walk does.
    body = encode(us())
    at = body.index(b"\x20\x00\x0d\x00")  # (0020,000D): where (0008,1030) belongs
    implicit = struct.pack("<HHL", 0x0008, 0x1030, 8) + b"ABDOMEN "
    whole(part10(tmp_path, body[:at] + implicit + body[at:]))


def test_undefined_length_on_a_text_element(tmp_path):
    ds = us()
    body = encode(ds)
    # (0008,1030) Study Description as UT with an undefined length, after (0008,0016..18).
    bad = element(0x0008, 0x1030, b"UT", b"", 0xFFFFFFFF)
    at = body.index(b"\x20\x00\x0d\x00")  # (0020,000D): where (0008,1030) belongs
    with pytest.raises(Malformed, match="undefined length"):
        whole(part10(tmp_path, body[:at] + bad + body[at:]))


def test_items_and_sequences_must_close(tmp_path):
    ds = us()
    inner = Dataset()
    inner.CodeValue = "1"
    ds.ReferencedImageSequence = Sequence([inner])
    body = encode(ds)
    seq = body.index(b"\x08\x00\x40\x11")  # (0008,1140)
    # Make the sequence and item undefined length, and drop their delimiters.
    item_at = seq + 12
    opened = (body[:seq + 8] + b"\xff\xff\xff\xff" + body[item_at:item_at + 4] + b"\xff\xff\xff\xff"
              + body[item_at + 8:])
    with pytest.raises(Malformed):
        whole(part10(tmp_path, opened))
    # With both delimiters it is whole again.
    item_end = opened.index(b"\x20\x00\x0d\x00")
    closed = (opened[:item_end] + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
              + opened[item_end:])
    whole(part10(tmp_path, closed))


def test_nesting_is_bounded(tmp_path):
    ds = us()
    level = ds
    for _ in range(structure.MAX_DEPTH + 5):
        item = Dataset()
        level.ReferencedImageSequence = Sequence([item])
        level = item
    with pytest.raises(Malformed, match="nested deeper"):
        whole(part10(tmp_path, encode(ds)))


def test_pixel_data_must_fit_its_attributes(tmp_path):
    ds = us(Rows=65535, Columns=65535, NumberOfFrames=1000)
    with pytest.raises(Malformed, match="65535 rows x 65535 columns x 3 samples x 8 bits x 1000 frames"):
        whole(part10(tmp_path, encode(ds)))
    with pytest.raises(Malformed, match="Number of Frames"):
        whole(part10(tmp_path, encode(us(NumberOfFrames=0))))
    # 4:2:2 subsampled colour holds two bytes a pixel (PS3.3 C.7.6.3.1.2).
    whole(part10(tmp_path, encode(us(PhotometricInterpretation="YBR_FULL_422", PixelData=b"\x80" * 32))))
    # More than needed is kept (padding some writers add).
    whole(part10(tmp_path, encode(us(PixelData=b"\x80" * 50))))


@pytest.mark.parametrize("change, error", [
    ({"Rows": 0}, "an image of 0 rows x 4 columns x 3 samples"),
    ({"Columns": 0}, "an image of 4 rows x 0 columns x 3 samples"),
    ({"SamplesPerPixel": 0}, "an image of 4 rows x 4 columns x 0 samples"),
    ({"SamplesPerPixel": None}, "without Rows, Columns, Samples per Pixel and Bits Allocated"),
    ({"Rows": None}, "without Rows, Columns, Samples per Pixel and Bits Allocated"),
    ({"BitsAllocated": 0}, "Bits Allocated 0: neither 1 nor a multiple of 8"),
    ({"BitsAllocated": 12}, "Bits Allocated 12: neither 1 nor a multiple of 8"),
])  # fmt: skip
def test_an_image_needs_the_values_its_pixels_are_shown_with(tmp_path, change, error):
    with pytest.raises(NotItsSopClass, match=error):
        whole(part10(tmp_path, encode(us(**change))))
    # The same under an encapsulated syntax, whose fragments are not counted.
    fragments = (element(0x7FE0, 0x0010, b"OB", b"", 0xFFFFFFFF) + b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
                 + b"\xfe\xff\x00\xe0\x04\x00\x00\x00abcd" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    with pytest.raises(NotItsSopClass, match=error):
        whole(part10(tmp_path, encode(us(PixelData=None, **change)) + fragments, ts="1.2.840.10008.1.2.4.50"))


def test_one_bit_and_wide_pixels_are_whole(tmp_path):
    whole(part10(tmp_path, encode(us(SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2",
                                     BitsAllocated=1, BitsStored=1, HighBit=0, PixelData=b"\x80" * 2))))
    whole(part10(tmp_path, encode(us(BitsAllocated=16, BitsStored=12, HighBit=11, PixelData=b"\x80" * 96))))


def test_an_image_needs_its_pixels_but_a_report_does_not(tmp_path):
    with pytest.raises(NotItsSopClass, match="Ultrasound Image Storage without Pixel Data"):
        whole(part10(tmp_path, encode(us(PixelData=None))))
    sr = us(SOPClassUID=BASIC_TEXT_SR, PixelData=None, Rows=None, Columns=None)
    whole(part10(tmp_path, encode(sr), sr))


def test_encapsulated_pixel_data_needs_a_fragment_and_its_delimiter(tmp_path):
    base = encode(us(PixelData=None))
    offset_table = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
    fragment = b"\xfe\xff\x00\xe0\x04\x00\x00\x00abcd"
    end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    pixel = element(0x7FE0, 0x0010, b"OB", b"", 0xFFFFFFFF)
    jpeg = {"ts": "1.2.840.10008.1.2.4.50"}
    assert whole(part10(tmp_path, base + pixel + offset_table + fragment + end, **jpeg)).fragments == 1
    with pytest.raises(Malformed, match="without a fragment"):
        whole(part10(tmp_path, base + pixel + offset_table + end, **jpeg))
    with pytest.raises(Truncated, match="no end"):
        whole(part10(tmp_path, base + pixel + offset_table + fragment, **jpeg))
    with pytest.raises(Truncated):
        whole(part10(tmp_path, base + pixel + offset_table + fragment[:-2], **jpeg))


def test_an_unknown_transfer_syntax_is_refused(tmp_path):
    """How would its data set be read? (A STOW-RS part can claim anything.)"""
    with pytest.raises(Malformed, match="unknown transfer syntax '1.2.3.4.5.6'"):
        whole(part10(tmp_path, encode(us()), ts="1.2.3.4.5.6"))


def test_deflated_data_sets_are_walked_inflated(tmp_path):
    body = encode(us())
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(body) + packer.flush()
    whole(part10(tmp_path, deflated, ts=DeflatedExplicitVRLittleEndian))
    with pytest.raises(Truncated):
        whole(part10(tmp_path, deflated[: len(deflated) // 2], ts=DeflatedExplicitVRLittleEndian))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    cut = packer.compress(body[:-20]) + packer.flush()  # a whole stream of a cut data set
    with pytest.raises(Malformed):
        whole(part10(tmp_path, cut, ts=DeflatedExplicitVRLittleEndian))


def test_an_object_pydicom_cannot_convert_is_not_transcoded_but_refused(tmp_path):
    """An object kept as it came (adopted from Orthanc, which stored it) with an
    element of a VR pydicom does not know: WADO's transcoding to Explicit VR LE
    raises PixelError (406, the stored form served with transfer-syntax=*), not
    pydicom's NotImplementedError (a 500)."""
    from appliance.dicomfile.pixels import PixelError, transcode_to_explicit_le

    body = encode(us())
    at = body.index(b"\x20\x00\x0d\x00")  # (0020,000D): where (0008,1030) belongs
    path = tmp_path / "odd.dcm"
    path.write_bytes(part10(tmp_path, body[:at] + element(0x0008, 0x1030, b"D\x01", b"ab") + body[at:]))
    with pytest.raises(Malformed, match="unknown VR"):   # refused at ingest...
        whole(path.read_bytes())
    with pytest.raises(PixelError, match="cannot be written in Explicit VR Little Endian"):
        b"".join(transcode_to_explicit_le(path))         # ...and a clear refusal if already kept
