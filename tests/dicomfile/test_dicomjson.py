"""Tests for appliance.dicomfile.dicomjson (Dataset <-> PS3.18 Annex F DICOM JSON)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pydicom.filereader
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from appliance.dicomfile.dicomjson import (
    BULK_URI_PREFIX,
    DEFAULT_MAX_DEPTH,
    dataset_to_json,
    default_bulk_uri,
    deferred_inline_tags,
    guess_pixel_data_vr,
    json_to_dataset,
    parse_bulk_uri,
)

DEFER = 1024
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
VALID_VRS = BINARY_VRS | {
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN",
    "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UR", "US", "UT", "UV",
}  # fmt: skip
DATA_ROOT = Path(pydicom.data.__file__).parent
# Only the files shipped inside pydicom: get_testdata_files() may try to
# download the others, and this machine has no network.
ALL_FILES = sorted(
    str(p) for folder in ("test_files", "charset_files")
    for p in (DATA_ROOT / folder).rglob("*")
    if p.is_file() and p.suffix not in (".py", ".pyc", ".json", ".gz", ".bz2", ".txt")
)


def _id(path: str) -> str:
    return os.path.relpath(path, DATA_ROOT)


def _read(path: str | os.PathLike, **kwargs: Any) -> Dataset:
    """The ingest-time read: header only, large values deferred."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd test data
        return pydicom.dcmread(path, stop_before_pixels=True, defer_size=DEFER, **kwargs)


def _convert(ds: Dataset, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dataset_to_json(ds, **kwargs)


def _full(path: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True)


def _is_deferred(elem: Any) -> bool:
    return isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0


@pytest.fixture
def deferred_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record every deferred read pydicom performs (Dataset.__getitem__ looks
    the function up in pydicom.filereader at call time)."""
    calls: list[int] = []
    original = pydicom.filereader.read_deferred_data_element

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(args[-1].tag))
        return original(*args, **kwargs)

    monkeypatch.setattr(pydicom.filereader, "read_deferred_data_element", spy)
    return calls


def _check_model(obj: dict[str, Any], prefix: tuple[int, ...] = ()) -> None:
    """Structural PS3.18 F.2 checks, recursively, plus our bulk URI format."""
    assert isinstance(obj, dict)
    assert list(obj) == sorted(obj), "F.2.2: attributes in ascending order"
    for key, attribute in obj.items():
        assert re.fullmatch(r"[0-9A-F]{8}", key), key
        tag = int(key, 16)
        assert tag & 0xFFFF != 0, "F.2.2: no group length"
        assert tag >> 16 not in (0x0000, 0x0002), "no command / file meta group"
        assert set(attribute) in ({"vr"}, {"vr", "Value"}, {"vr", "BulkDataURI"}), attribute
        vr = attribute["vr"]
        assert vr in VALID_VRS, vr
        path = prefix + (tag,)
        if "BulkDataURI" in attribute:
            assert parse_bulk_uri(attribute["BulkDataURI"]) == path
            continue
        if vr in BINARY_VRS:
            assert "Value" not in attribute, "binary values are never inline"
        if "Value" not in attribute:
            continue
        values = attribute["Value"]
        assert isinstance(values, list) and values, "empty -> no Value (F.2.5)"
        for index, value in enumerate(values):
            if vr == "SQ":
                _check_model(value, path + (index,))
            elif value is None:
                continue  # F.2.5 empty value in a multi-valued element
            elif vr == "PN":
                assert value and set(value) <= {"Alphabetic", "Ideographic", "Phonetic"}
                assert all(isinstance(v, str) and v for v in value.values())
            elif vr == "AT":
                assert re.fullmatch(r"[0-9A-F]{8}", value)
            elif vr == "IS":
                assert isinstance(value, int | str) and not isinstance(value, bool)
            elif vr == "DS":
                assert isinstance(value, float | str)
            elif vr in ("FL", "FD"):
                assert isinstance(value, float) and math.isfinite(value)
            elif vr in ("SL", "SS", "SV", "UL", "US", "UV"):
                assert type(value) is int
            else:
                assert type(value) is str


def _strip_bulk(obj: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, attribute in obj.items():
        if "BulkDataURI" in attribute:
            continue
        if attribute["vr"] == "SQ" and "Value" in attribute:
            attribute = dict(attribute, Value=[_strip_bulk(i) for i in attribute["Value"]])
        out[key] = attribute
    return out


def _walk(obj: dict[str, Any], prefix: tuple[int, ...] = ()):
    for key, attribute in obj.items():
        path = prefix + (int(key, 16),)
        yield path, attribute
        if attribute["vr"] == "SQ":
            for index, item in enumerate(attribute.get("Value", [])):
                yield from _walk(item, path + (index,))


# --------------------------------------------------------------------------
# Every pydicom test file
# --------------------------------------------------------------------------


def _not_readable(path: str) -> bool:
    try:
        _read(path)
    except Exception:
        return True
    return False


def _force_readable(path: str) -> bool:
    try:
        _read(path, force=True)
    except Exception:
        return False
    return True


NOT_READABLE = [p for p in ALL_FILES if _not_readable(p)]
# Files that are not DICOM at all (force=True still fails on them) are not
# conversion inputs; the archive refuses them before conversion.
FORCED = [p for p in NOT_READABLE if _force_readable(p)]
READABLE = [p for p in ALL_FILES if p not in NOT_READABLE]


@pytest.mark.parametrize("path", READABLE, ids=_id)
def test_every_pydicom_test_file(path: str, deferred_reads: list[int]) -> None:
    ds = _read(path)
    deferred = {int(t) for t, e in ds._dict.items() if _is_deferred(e)}
    deferred_reads.clear()

    out = _convert(ds)

    assert deferred_reads == [], "a deferred value was read"
    assert {int(t) for t, e in ds._dict.items() if _is_deferred(e)} == deferred
    json.dumps(out, allow_nan=False)
    _check_model(out)
    for tag, elem in ds._dict.items():
        key = f"{tag:08X}"
        if tag.element == 0 or tag.group == 2:
            assert key not in out
            continue
        if int(tag) in deferred:
            assert out[key]["BulkDataURI"] == f"bulk/{key}"
        elif out[key]["vr"] in BINARY_VRS and elem.length:
            # (An explicit UN whose VR pydicom knows is converted, as pydicom does.)
            assert "BulkDataURI" in out[key]
    # json_to_dataset is the inverse on the non-bulk part.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = _convert(json_to_dataset(out))
    assert back == _strip_bulk(out)




@pytest.mark.parametrize("path", FORCED, ids=_id)
def test_forced_read_of_odd_files_never_raises(path: str) -> None:
    """Odd but parseable data (force=True reads even text as DICOM) converts."""
    ds = _read(path, force=True)
    out = _convert(ds)
    json.dumps(out, allow_nan=False)
    _check_model(out)


# --------------------------------------------------------------------------
# Deferred values are never read
# --------------------------------------------------------------------------


def test_spy_sees_deferred_reads(deferred_reads: list[int]) -> None:
    """Sanity check of the spy the other tests rely on."""
    ds = _read(get_testdata_file("examples_overlay.dcm"))
    ds[0x00291110]
    assert deferred_reads == [0x00291110]


def test_deferred_values_are_never_read(tmp_path: Path, deferred_reads: list[int]) -> None:
    src = get_testdata_file("examples_overlay.dcm")
    path = tmp_path / "instance.dcm"
    shutil.copy(src, path)
    ds = _read(path)
    deferred = {int(t) for t, e in ds._dict.items() if _is_deferred(e)}
    assert deferred == {0x00291110, 0x00880200, 0x60003000}  # OB, SQ, OW
    path.unlink()  # any deferred read would now fail

    out = _convert(ds)

    assert deferred_reads == []
    assert out["00291110"] == {"vr": "OB", "BulkDataURI": "bulk/00291110"}
    assert out["60003000"] == {"vr": "OW", "BulkDataURI": "bulk/60003000"}
    # PS3.18 F.2.2 has no BulkDataURI for SQ, but reading is not an option.
    assert out["00880200"] == {"vr": "SQ", "BulkDataURI": "bulk/00880200"}
    assert all(_is_deferred(ds._dict[Tag(t)]) for t in deferred), "ds unchanged"
    # Apart from the deferred elements, identical to converting a full read.
    full = _convert(_full(src))
    assert out.keys() == full.keys()
    for key in out:
        if int(key, 16) not in deferred:
            assert out[key] == full[key], key
    # The caller's dataset was not converted in place either.
    assert isinstance(ds._dict[Tag(0x00100010)], RawDataElement)


def test_deferred_inline_tags_lets_the_caller_load_sequences(
    deferred_reads: list[int],
) -> None:
    path = get_testdata_file("test-SR.dcm")
    ds = _read(path)
    assert deferred_inline_tags(ds) == [0x0040A730]  # ContentSequence, 5150 bytes
    assert deferred_reads == []
    assert "BulkDataURI" in _convert(ds)["0040A730"]

    for tag in deferred_inline_tags(ds):  # caller side, while the file exists
        ds[tag]
    assert deferred_reads == [0x0040A730]
    deferred_reads.clear()

    out = _convert(ds)
    assert deferred_reads == []
    assert out == _convert(_full(path))
    assert deferred_inline_tags(ds) == []
    paths = [path for path, _ in _walk(out)]
    assert (0x0040A730, 4, 0x0040A730, 1, 0x0040A160) in paths  # nested TextValue


def _write(tmp_path: Path, ds: Dataset, implicit: bool = False) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "written.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _base() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    return ds


def test_deferred_non_bulk_vr_stays_unread_and_is_listed(tmp_path: Path, deferred_reads) -> None:
    ds = _base()
    ids = [f"ID{i:05d}" for i in range(200)]  # LO, 1599 bytes
    ds.OtherPatientIDs = ids
    ds.PatientComments = "x" * 2000  # LT
    ds.PatientName = "Short^Name"
    path = _write(tmp_path, ds)

    header = _read(path)
    assert deferred_inline_tags(header) == [0x00101000]  # LT may be bulk data
    out = _convert(header)
    assert deferred_reads == []
    assert out["00101000"] == {"vr": "LO", "BulkDataURI": "bulk/00101000"}
    assert out["00104000"] == {"vr": "LT", "BulkDataURI": "bulk/00104000"}
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Short^Name"}]}

    # Read in full, F.2.2 wins for LO (no BulkDataURI allowed) but not for LT.
    full = _convert(_full(str(path)))
    assert full["00101000"] == {"vr": "LO", "Value": ids}
    assert full["00104000"] == {"vr": "LT", "BulkDataURI": "bulk/00104000"}


# --------------------------------------------------------------------------
# Equivalence with pydicom's own conversion, round trips
# --------------------------------------------------------------------------


def _normalise_pydicom(attribute: dict[str, Any]) -> Any:
    """pydicom writes "" where F.2.5 says null, and empty PN groups."""
    values = attribute.get("Value")
    if not values:
        return None
    if attribute["vr"] == "PN":
        values = [{k: v for k, v in (pn or {}).items() if v} or None for pn in values]
    return [None if v == "" else v for v in values]


def _assert_same_as_pydicom(ours: dict[str, Any], theirs: dict[str, Any]) -> int:
    compared = 0
    theirs = {k: v for k, v in theirs.items() if int(k, 16) & 0xFFFF}  # group lengths
    assert ours.keys() == theirs.keys()
    for key, attribute in ours.items():
        if "BulkDataURI" in attribute:
            continue
        assert attribute["vr"] == theirs[key]["vr"], key
        if attribute["vr"] == "SQ":
            items = attribute.get("Value", [])
            assert len(items) == len(theirs[key]["Value"])
            for mine, other in zip(items, theirs[key]["Value"]):
                compared += _assert_same_as_pydicom(mine, other)
        else:
            assert attribute.get("Value") == _normalise_pydicom(theirs[key]), key
            compared += 1
    return compared


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "rtdose.dcm",
        "reportsi.dcm",
        "waveform_ecg.dcm",
    ],
)
def test_equivalent_to_pydicom_to_json_dict(name: str) -> None:
    path = get_testdata_file(name)
    ours = _convert(_read(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _full(path).to_json_dict(1024, lambda elem: "bulk")
    assert _assert_same_as_pydicom(ours, theirs) > 20


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "chrH31.dcm", "chrX1.dcm"]
)
def test_round_trip_equals_dataset_on_non_bulk_elements(name: str) -> None:
    path = get_testdata_file(name) or get_charset_files(name)[0]
    original = _full(path)
    out = _convert(_read(path))
    back = json_to_dataset(out)

    def compare(obj: dict[str, Any], ds_a: Dataset, ds_b: Dataset) -> int:
        count = 0
        for key, attribute in obj.items():
            tag = int(key, 16)
            if "BulkDataURI" in attribute:
                assert tag not in ds_b, "bulk data is absent after json_to_dataset"
                continue
            a, b = ds_a[tag], ds_b[tag]
            assert a.VR == b.VR
            if a.VR == "SQ":
                assert len(a.value) == len(b.value)
                for item, item_a, item_b in zip(attribute.get("Value", []), a.value, b.value):
                    count += compare(item, item_a, item_b)
            else:
                assert a.value == b.value or (a.is_empty and b.is_empty), key
                count += 1
        return count

    assert compare(out, original, back) > 20


# --------------------------------------------------------------------------
# Specific value representations
# --------------------------------------------------------------------------


YAMADA = {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
WANG = {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}


def _charset_file(name: str) -> str:
    return get_charset_files(name)[0]


def test_pn_components_japanese_iso2022() -> None:
    out = _convert(_read(_charset_file("chrH31.dcm")))
    assert out["00100010"] == {"vr": "PN", "Value": [YAMADA]}
    # F.2.5: the empty first value of Specific Character Set is null.
    assert out["00080005"] == {"vr": "CS", "Value": [None, "ISO 2022 IR 87"]}


def test_pn_only_non_empty_groups_and_nulls() -> None:
    ds = Dataset()
    ds.PatientName = "=山田^太郎"
    ds.OtherPatientNames = ["A^B", "", "C^D=^=e^f"]
    ds.ReferringPhysicianName = ""
    out = _convert(ds)
    assert out["00100010"]["Value"] == [{"Ideographic": "山田^太郎"}]  # F.2.2
    assert out["00101001"]["Value"] == [
        {"Alphabetic": "A^B"},
        None,  # F.2.5
        {"Alphabetic": "C^D", "Ideographic": "^", "Phonetic": "e^f"},
    ]
    assert out["00080090"] == {"vr": "PN"}
    assert json_to_dataset(out).PatientName == "=山田^太郎"


def test_utf8_latin1_japanese_text() -> None:
    utf8 = _convert(_read(_charset_file("chrX1.dcm")))  # ISO_IR 192
    assert utf8["00080005"]["Value"] == ["ISO_IR 192"]
    assert utf8["00100010"]["Value"] == [WANG]
    latin1 = _convert(_read(_charset_file("chrFren.dcm")))  # ISO_IR 100
    assert latin1["00080005"]["Value"] == ["ISO_IR 100"]
    assert latin1["00100010"]["Value"] == [{"Alphabetic": "Buc^Jérôme"}]
    german = _convert(_read(_charset_file("chrGerm.dcm")))
    assert german["00100010"]["Value"] == [{"Alphabetic": "Äneas^Rüdiger"}]
    japanese = _convert(_read(_charset_file("chrJapMulti.dcm")))  # ISO 2022 IR 87
    assert japanese["00100010"]["Value"] == [{"Alphabetic": "やまだ^たろう"}]
    assert japanese["001021B0"] == {"vr": "LT", "Value": ["たろう"]}
    # A sequence item with its own Specific Character Set.
    nested = _convert(_read(_charset_file("chrSQEncoding.dcm")))
    item = nested["00321064"]["Value"][0]
    assert item["00100010"]["Value"] == [dict(YAMADA, Alphabetic="ﾔﾏﾀﾞ^ﾀﾛｳ")]


@pytest.mark.parametrize("path", [p for p in get_charset_files() if p.endswith(".dcm")], ids=_id)
def test_every_charset_file_patient_name_matches_pydicom(path: str) -> None:
    out = _convert(_read(path))
    full = _full(path)
    if "PatientName" not in full:  # chrSQEncoding*: the name is in an item
        full = full.RequestedProcedureCodeSequence[0]
        out = out["00321064"]["Value"][0]
    expected = str(full.PatientName)
    groups = out["00100010"]["Value"][0]
    names = [groups.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
    assert "=".join(names).rstrip("=") == expected.rstrip("=")
    json.dumps(out, ensure_ascii=False)


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def test_multi_valued_ds_and_is_numbers() -> None:
    ds = Dataset()
    ds._dict[Tag(0x00200032)] = _raw(0x00200032, "DS", b"1.0\\-2.5\\3e2 ")
    ds._dict[Tag(0x00281050)] = _raw(0x00281050, "DS", b"1.0\\\\40")
    ds._dict[Tag(0x00200013)] = _raw(0x00200013, "IS", b" +7 ")
    ds._dict[Tag(0x00200012)] = _raw(0x00200012, "IS", b"1.0 ")  # integral: pydicom reads 1
    out = _convert(ds)
    assert out["00200032"] == {"vr": "DS", "Value": [1.0, -2.5, 300.0]}
    assert isinstance(out["00200032"]["Value"][0], float)
    assert out["00281050"] == {"vr": "DS", "Value": [1.0, None, 40.0]}  # F.2.5
    assert out["00200013"] == {"vr": "IS", "Value": [7]}
    assert out["00200012"] == {"vr": "IS", "Value": [1]}
    ct = _convert(_read(get_testdata_file("CT_small.dcm")))
    assert ct["00200032"] == {"vr": "DS", "Value": [-158.135803, -179.035797, -75.699997]}


def test_invalid_is_ds_fall_back_to_strings() -> None:
    """Table F.2.3-1 note: a JSON string may keep the original format."""
    ds = Dataset()
    ds._dict[Tag(0x00200013)] = _raw(0x00200013, "IS", b"1A")
    ds._dict[Tag(0x00181030)] = _raw(0x00181030, "DS", b"1.5\\NaN\\1e400\\x ")
    ds._dict[Tag(0x00200011)] = _raw(0x00200011, "IS", b"99999999999999999999")
    out = _convert(ds)
    assert out["00200013"] == {"vr": "IS", "Value": ["1A"]}
    assert out["00181030"] == {"vr": "DS", "Value": [1.5, "NaN", "1e400", "x"]}
    assert out["00200011"] == {"vr": "IS", "Value": [99999999999999999999]}  # exact
    json.dumps(out, allow_nan=False)
    back = json_to_dataset(out)  # invalid numbers do not stop the load
    assert back[0x00200013].value == "1A"
    assert _convert(back) == out


def test_at_values() -> None:
    out = _convert(_read(get_testdata_file("rtdose.dcm")))
    assert out["00280009"] == {"vr": "AT", "Value": ["3004000C"]}
    ds = Dataset()
    ds.add_new(0x00209165, "AT", [0x00209153, 0x0020A164])
    assert _convert(ds)["00209165"] == {"vr": "AT", "Value": ["00209153", "0020A164"]}


def test_other_vrs_and_empty_values() -> None:
    ds = Dataset()
    ds.Rows = 512
    ds.add_new(0x00189219, "FD", [1.5, -2.0])
    ds.StudyDate = "20240102"
    ds.PatientAge = ""
    ds.add_new(0x00420011, "OB", b"")
    ds.ReferencedImageSequence = []
    ds.IconImageSequence = [Dataset()]
    out = _convert(ds)
    assert out["00280010"] == {"vr": "US", "Value": [512]}
    assert out["00189219"] == {"vr": "FD", "Value": [1.5, -2.0]}
    assert out["00080020"] == {"vr": "DA", "Value": ["20240102"]}
    assert out["00101010"] == {"vr": "AS"}  # F.2.5
    assert out["00420011"] == {"vr": "OB"}
    assert out["00081140"] == {"vr": "SQ"}
    assert out["00880200"] == {"vr": "SQ", "Value": [{}]}  # F.2.5: empty item


def test_nested_sequences() -> None:
    out = _convert(_read(get_testdata_file("rtplan.dcm")))
    beams = out["300A00B0"]["Value"]
    assert len(beams) == 1
    control_points = beams[0]["300A0111"]["Value"]
    assert len(control_points) == 2
    positions = control_points[0]["300A011A"]["Value"]  # SQ in SQ in SQ
    jaws = {"vr": "DS", "Value": [-100.0, 100.0]}
    assert positions == [
        {"300A00B8": {"vr": "CS", "Value": ["X"]}, "300A011C": jaws},
        {"300A00B8": {"vr": "CS", "Value": ["Y"]}, "300A011C": jaws},
    ]


def test_private_tags() -> None:
    japanese = _convert(_read(_charset_file("chrJapMulti.dcm")))
    assert japanese["00190010"] == {"vr": "LO", "Value": ["AGFA"]}  # private creator
    assert japanese["00191060"] == {"vr": "US", "Value": [1]}
    # Implicit VR, creator not in pydicom's private dictionary -> UN -> bulk.
    priv = _convert(_read(get_testdata_file("priv_SQ.dcm")))
    assert priv["3F030010"] == {"vr": "LO", "Value": ["aaabbbccc MEDICAL SYSTEMS"]}
    assert priv["3F031001"] == {"vr": "UN", "BulkDataURI": "bulk/3F031001"}


def test_private_tags_implicit_vr_known_and_unknown(tmp_path: Path) -> None:
    ds = _base()
    ds.add_new(0x00090010, "LO", "GEMS_IDEN_01")
    ds.add_new(0x00091001, "LO", "fidelity")  # in pydicom's private dictionary
    ds.add_new(0x00110010, "LO", "ACME 1.0")
    ds.add_new(0x00111001, "LO", "secret")  # unknown creator
    path = _write(tmp_path, ds, implicit=True)
    out = _convert(_read(path))
    assert out["00091001"] == {"vr": "LO", "Value": ["fidelity"]}
    assert out["00110010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
    assert out["00111001"] == {"vr": "UN", "BulkDataURI": "bulk/00111001"}


# --------------------------------------------------------------------------
# Bulk data
# --------------------------------------------------------------------------


def test_bulk_uri_path_for_nested_element() -> None:
    icon = Dataset()
    icon.Rows = 2
    icon.add_new(0x7FE00010, "OB", b"\x00\x01\x02\x03")
    ds = Dataset()
    ds.IconImageSequence = [Dataset(), icon]
    out = _convert(ds)
    item = out["00880200"]["Value"][1]
    assert item["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulk/00880200/1/7FE00010"}
    assert parse_bulk_uri("bulk/00880200/1/7FE00010") == (0x00880200, 1, 0x7FE00010)
    assert item["00280010"] == {"vr": "US", "Value": [2]}

    seen: list[tuple[int, ...]] = []

    def uri(path: tuple[int, ...]) -> str:
        seen.append(path)
        return "https://pacs.example/bulk/" + ".".join(map(str, path))

    custom = _convert(ds, bulk_uri=uri)
    assert seen == [(0x00880200, 1, 0x7FE00010)]
    assert custom["00880200"]["Value"][1]["7FE00010"]["BulkDataURI"].startswith("https://")

    full = _convert(_full(get_testdata_file("examples_overlay.dcm")))
    icon_pixels = full["00880200"]["Value"][0]["7FE00010"]
    assert icon_pixels == {"vr": "OW", "BulkDataURI": "bulk/00880200/0/7FE00010"}


def test_bulk_uri_format_round_trip_and_rejects() -> None:
    for path in [(0x00420011,), (0x0040A730, 2, 0x0040A730, 0, 0x0040A160), (0xFFFFFFFF, 10, 1)]:
        uri = default_bulk_uri(path)
        assert uri.startswith(BULK_URI_PREFIX)
        assert parse_bulk_uri(uri) == path
    assert default_bulk_uri((0x00540016, 0, 0x00181072)) == "bulk/00540016/0/00181072"
    for bad in [
        "bulk/",
        "bulk/0042001",
        "bulk/0042001g",
        "bulk/0042001a",  # canonical form is upper case
        "bulk/00540016/0",
        "bulk/00540016/01/00181072",
        "bulk/00540016/-1/00181072",
        "bulk/00540016//00181072",
        "bulk/../00420011",
        "/bulk/00420011",
        "bulk/" + "/".join(["00540016", "0"] * (DEFAULT_MAX_DEPTH + 1) + ["00181072"]),
    ]:
        with pytest.raises(ValueError):
            parse_bulk_uri(bad)


def test_bulk_threshold() -> None:
    ds = Dataset()
    ds.ImageComments = "y" * 2000  # LT
    ds.StudyDescription = "short"
    ds.add_new(0x00283006, "US", list(range(600)))  # 1200 bytes
    ds.add_new(0x00200032, "DS", [1.5, 2.5, 3.5])
    ds.add_new(0x00181020, "LO", ["v" * 60] * 40)  # LO: F.2.2 allows no BulkDataURI
    out = _convert(ds)
    assert out["00204000"] == {"vr": "LT", "BulkDataURI": "bulk/00204000"}
    assert out["00283006"] == {"vr": "US", "BulkDataURI": "bulk/00283006"}
    assert out["00081030"] == {"vr": "LO", "Value": ["short"]}
    assert out["00200032"] == {"vr": "DS", "Value": [1.5, 2.5, 3.5]}
    assert len(out["00181020"]["Value"]) == 40
    big = _convert(ds, bulk_threshold=10**6)
    assert big["00204000"] == {"vr": "LT", "Value": ["y" * 2000]}
    assert big["00283006"]["Value"] == list(range(600))
    small = _convert(ds, bulk_threshold=8)
    assert "BulkDataURI" in small["00200032"]  # 11 bytes "1.5\2.5\3.5" + pad
    assert "BulkDataURI" not in small["00081030"]


def test_binary_vrs_are_always_bulk() -> None:
    ds = Dataset()
    for tag, vr in [(0x00420011, "OB"), (0x00283006, "OW"), (0x00660016, "OF"),
                    (0x00660040, "OL"), (0x00720075, "OV"), (0x00110011, "UN")]:  # fmt: skip
        ds.add_new(tag, vr, b"\x00\x01\x02\x03\x04\x05\x06\x07")
    ds.add_new(0x00660017, "OD", b"\x00" * 8)
    out = _convert(ds)
    for key, attribute in out.items():
        assert attribute == {"vr": attribute["vr"], "BulkDataURI": f"bulk/{key}"}
    assert {a["vr"] for a in out.values()} == BINARY_VRS


def test_pixel_data_entry() -> None:
    ds = _read(get_testdata_file("CT_small.dcm"))
    assert "7FE00010" not in _convert(ds)
    out = _convert(ds, pixel_data_vr="OW")
    assert out["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk/7FE00010"}
    assert list(out) == sorted(out) and list(out)[-1] == "7FE00010"
    assert _convert(ds, pixel_data_vr="OF")["7FE00008"]["vr"] == "OF"
    assert _convert(ds, pixel_data_vr="OD")["7FE00009"]["vr"] == "OD"
    assert _convert(ds, pixel_data_vr="UN")["7FE00010"]["vr"] == "UN"
    with pytest.raises(ValueError):
        _convert(ds, pixel_data_vr="US")
    # An element already present takes precedence.
    full = _convert(pydicom.dcmread(get_testdata_file("CT_small.dcm")), pixel_data_vr="OB")
    assert full["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk/7FE00010"}


def test_guess_pixel_data_vr() -> None:
    assert guess_pixel_data_vr("1.2.840.10008.1.2.4.50", 8) == "OB"  # JPEG: encapsulated
    assert guess_pixel_data_vr("1.2.840.10008.1.2.5", 16) == "OB"  # RLE
    assert guess_pixel_data_vr("1.2.840.10008.1.2", 8) == "OW"  # implicit VR LE
    assert guess_pixel_data_vr("1.2.840.10008.1.2.1", 16) == "OW"
    assert guess_pixel_data_vr("1.2.840.10008.1.2.1", 8) == "OB"
    assert guess_pixel_data_vr(None, 16) == "OW"
    assert guess_pixel_data_vr(None, None) == "OB"


# --------------------------------------------------------------------------
# Robustness
# --------------------------------------------------------------------------


def test_unconvertible_values_become_bulk() -> None:
    ds = Dataset()
    ds._dict[Tag(0x00280010)] = _raw(0x00280010, "US", b"\x01\x02\x03")  # odd length
    ds._dict[Tag(0x00280009)] = _raw(0x00280009, "AT", b"\x01\x02")  # short AT
    ds.add_new(0x00189219, "FD", [1.0, float("nan")])  # NaN is not a JSON number
    ds.add_new(0x0018605A, "FL", float("inf"))
    ds.PatientID = "kept"
    out = _convert(ds)
    assert out["00280010"] == {"vr": "US", "BulkDataURI": "bulk/00280010"}
    assert out["00280009"] == {"vr": "AT", "BulkDataURI": "bulk/00280009"}
    assert out["00189219"] == {"vr": "FD", "BulkDataURI": "bulk/00189219"}
    assert out["0018605A"] == {"vr": "FL", "BulkDataURI": "bulk/0018605A"}
    assert out["00100020"] == {"vr": "LO", "Value": ["kept"]}
    json.dumps(out, allow_nan=False)


def test_group_length_file_meta_and_command_groups_excluded() -> None:
    ds = Dataset()
    ds.add_new(0x00080000, "UL", 10)
    ds.add_new(0x00000900, "US", 0)
    ds.add_new(0x00020010, "UI", ExplicitVRLittleEndian)
    ds.PatientID = "1"
    assert list(_convert(ds)) == ["00100020"]
    assert "00080000" not in _convert(_read(_charset_file("chrJapMulti.dcm")))


def _nested(levels: int) -> Dataset:
    ds = Dataset()
    ds.CodeValue = "leaf"
    for _ in range(levels):
        parent = Dataset()
        parent.ContentSequence = Sequence([ds])
        ds = parent
    return ds


def test_absurd_nesting_is_cut_to_bulk() -> None:
    out = _convert(_nested(200))
    json.dumps(out)
    depth, node, path = 0, out, ()
    while "Value" in node.get("0040A730", {}):
        node, path, depth = node["0040A730"]["Value"][0], path + (0x0040A730, 0), depth + 1
    assert depth == DEFAULT_MAX_DEPTH
    assert node["0040A730"] == {"vr": "SQ", "BulkDataURI": default_bulk_uri(path + (0x0040A730,))}
    assert parse_bulk_uri(node["0040A730"]["BulkDataURI"]) == path + (0x0040A730,)
    shallow = _convert(_nested(5), max_depth=2)
    assert "BulkDataURI" in shallow["0040A730"]["Value"][0]["0040A730"]["Value"][0]["0040A730"]
    deep_enough = _convert(_nested(5), max_depth=5)
    assert all("BulkDataURI" not in a for _, a in _walk(deep_enough))


# --------------------------------------------------------------------------
# json_to_dataset
# --------------------------------------------------------------------------


def test_json_to_dataset_omits_bulk_and_keeps_values() -> None:
    obj = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00100010": {"vr": "PN", "Value": [WANG]},
        "00200032": {"vr": "DS", "Value": [1.5, None, -2]},
        "00420011": {"vr": "OB", "BulkDataURI": "bulk/00420011"},
        "00880200": {
            "vr": "SQ",
            "Value": [{"00280010": {"vr": "US", "Value": [8]},
                       "7FE00010": {"vr": "OB", "BulkDataURI": "bulk/00880200/0/7FE00010"}}],
        },  # fmt: skip
        "00091001": {"vr": "OB", "InlineBinary": "AAEC"},
        "00020010": {"vr": "UI", "Value": [ExplicitVRLittleEndian]},
    }
    ds = json_to_dataset(obj)
    assert ds.PatientName == "Wang^XiaoDong=王^小東"
    assert 0x00420011 not in ds
    assert 0x7FE00010 not in ds.IconImageSequence[0]
    assert ds.IconImageSequence[0].Rows == 8
    assert ds[0x00091001].value == b"\x00\x01\x02"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert 0x00020010 not in ds
    assert list(ds[0x00200032].value)[0] == 1.5


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"0010001": {"vr": "PN"}},
        {"00100010": {"Value": ["x"]}},
        {"00100010": "x"},
        {"00081140": {"vr": "SQ", "Value": ["not an item"]}},
    ],
)
def test_json_to_dataset_rejects_invalid_input(bad: Any) -> None:
    with pytest.raises(ValueError):
        json_to_dataset(bad)
