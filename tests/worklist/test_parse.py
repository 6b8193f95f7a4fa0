"""The fast .wl reader (appliance.worklist.parse.read_fast) against pydicom: the same
attribute map for every file of a corpus covering the character sets, VRs and layouts the
worklist meets, and the same verdict on damaged files."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance.worklist.parse import (
    WorklistFileError,
    _Unsupported,
    parse_worklist,
    parse_worklist_pydicom,
    read_fast,
)
from tests.synthetic import item as bench_item
from tests.worklist.helpers import wl_bytes, worklist_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _code(value: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = f"meaning {value}"
    return code


def _corpus() -> list[Dataset]:
    odd = worklist_dataset(patient_id="ODD ", patient_name="  LEADING^SPACES  ")
    odd.PatientComments = "  leading kept\\back slash in LT  "
    odd.OtherPatientIDs = ["A", "", "BC ", " D"]
    odd.AdmittingDiagnosesDescription = ["one", "two "]
    odd.StudyInstanceUID = "1.2.3"
    odd.AdditionalPatientHistory = ""
    odd.PatientAge = "042Y"
    odd.PatientWeight = "72.50"
    odd.PatientSize = ["1.5", "2"]
    odd.add_new(0x00201002, "IS", "12")  # Images in Study
    odd.add_new(0x00280010, "US", 480)  # a binary VR
    odd.add_new(0x00400253, "SH", "")  # empty
    odd.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = [_code("U1"), _code("U2")]
    odd.ReferencedStudySequence = []  # an empty sequence
    names = worklist_dataset(patient_name="DOE^JOHN^^^", physician="A^B=C^D")
    names.ReferringPhysicianName = ["ONE^DR", "TWO^DR"]
    undefined = worklist_dataset()
    undefined["ScheduledProcedureStepSequence"].is_undefined_length = True
    return [
        worklist_dataset(),
        worklist_dataset(patient_name="Ζαχαρίας^Γιάννης"),
        worklist_dataset(charset="ISO_IR 100", patient_name="Dupré^Hélène"),
        worklist_dataset(charset=None, patient_name="PLAIN^ASCII"),
        worklist_dataset(charset=None, patient_name="Müller^Zoë"),
        worklist_dataset(charset=["ISO 2022 IR 6", "ISO 2022 IR 87"],
                         patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう"),
        worklist_dataset(charset="ISO_IR 126", patient_name="Διονυσιος"),
        worklist_dataset(charset="ISO_IR 144", patient_name="Иванов^Иван"),
        worklist_dataset(charset="GB18030", patient_name="王^小明"),
        worklist_dataset(station=["AA32", "AA33"], time_=None, study_uid="1.2.3.4"),
        worklist_dataset(with_sps=False),
        odd, names, undefined,
        bench_item(7, 10000), bench_item(4242, 1000),
    ]


def _files() -> list[tuple[str, bytes]]:
    out = []
    for n, ds in enumerate(_corpus()):
        for implicit in (False, True):
            out.append((f"{n}-{'implicit' if implicit else 'explicit'}",
                        wl_bytes(ds, implicit=implicit)))
    return out


@pytest.mark.parametrize(("name", "data"), _files(), ids=[n for n, _ in _files()])
def test_fast_reader_gives_pydicoms_attribute_map(name, data):
    reference = parse_worklist_pydicom(data)
    try:
        fast = read_fast(data)
    except _Unsupported:
        fast = None
    if fast is not None:
        assert fast == reference
    assert parse_worklist(data) == reference


def test_fast_reader_takes_the_usual_files():
    # Only the unusual goes to pydicom: every corpus file here is read the fast way.
    taken = sum(1 for ds in _corpus() for implicit in (False, True)
                if _fast_or_none(wl_bytes(ds, implicit=implicit)) is not None)
    assert taken == 2 * len(_corpus())


def _fast_or_none(data: bytes):
    try:
        return read_fast(data)
    except _Unsupported:
        return None


def _part10(body: bytes, syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue() + body


def _explicit(tag: int, vr: str, value: bytes) -> bytes:
    if vr in ("OB", "OW", "SQ", "UC", "UN", "UR", "UT"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


@pytest.mark.parametrize("body", [
    # out of order: pydicom sorts
    _explicit(0x00100020, "LO", b"P2") + _explicit(0x00100010, "PN", b"DOE "),
    # a private tag and a UN element: pydicom decides their VR
    _explicit(0x00100020, "LO", b"P3") + _explicit(0x00091001, "UN", b"ab"),
    # a value beyond ASCII in the declared character set: pydicom decodes it
    _explicit(0x00080005, "CS", b"ISO_IR 100") + _explicit(0x00080050, "SH", b"\xe9t\xe9"),
])
def test_unusual_files_are_left_to_pydicom(body):
    data = _part10(body, ExplicitVRLittleEndian)
    assert parse_worklist(data) == parse_worklist_pydicom(data)


def test_other_syntaxes_and_no_file_meta_are_left_to_pydicom():
    ds = worklist_dataset(patient_id="BE")
    big = wl_bytes(ds).replace(ExplicitVRLittleEndian.encode(), ExplicitVRBigEndian.encode())
    assert _fast_or_none(big) is None
    assert _fast_or_none(wl_bytes(ds)[132:]) is None  # no preamble: a raw data set
    assert _fast_or_none(wl_bytes(ds, implicit=True)) is not None
    assert ImplicitVRLittleEndian  # both Little Endian syntaxes are read the fast way


@pytest.mark.parametrize("cut", [1, 7, 8, 30, 100, 200, 333, -40, -9, -8, -1])
@pytest.mark.parametrize("implicit", [False, True])
def test_damaged_files_get_the_same_verdict(cut, implicit):
    data = wl_bytes(worklist_dataset(), implicit=implicit)
    damaged = data[:cut] if cut > 0 else data[:len(data) + cut]

    def verdict(reader):
        try:
            return reader(damaged)
        except WorklistFileError as e:
            return f"error: {e}"

    assert verdict(parse_worklist) == verdict(parse_worklist_pydicom)
