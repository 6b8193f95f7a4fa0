"""appliance.dicomfile.patch against pydicom: on every bundled file it patches,
the result read back by pydicom is the original data set with exactly the
replaced values changed (nothing else, pixels included); what it cannot
patch it declines (None) rather than guess."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid

from appliance.dicomfile import patch
from tests.support import PYDICOM_FILES, new_dataset

NEW = {"PatientName": "Right^Patient", "PatientID": "RIGHT1", "PatientBirthDate": "19910203",
       "PatientSex": "M", "AccessionNumber": "ACC-R"}


def _patched(data: bytes, values: dict[str, str]) -> bytes | None:
    done = patch.patch(data[:256 << 10], {tag_for_keyword(k): v for k, v in values.items()},
                       values["SOPInstanceUID"])
    if done is None:
        return None
    start, rest_at = done
    return start + data[rest_at:]


def _uids() -> dict[str, str]:
    return {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
            "SOPInstanceUID": generate_uid()}


def _elements(ds: pydicom.Dataset) -> dict:
    return {e.tag: (e.VR, e.value) for e in ds if e.tag.element != 0}


PATCHED = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm",
           "SC_rgb_rle.dcm", "examples_ybr_color.dcm", "test-SR.dcm", "rtplan.dcm",
           "waveform_ecg.dcm", "liver_1frame.dcm"]


@pytest.mark.parametrize("name", PATCHED)
def test_patched_files_differ_only_by_the_values_replaced(name):
    data = (PYDICOM_FILES / name).read_bytes()
    values = {**NEW, **_uids()}
    out = _patched(data, values)
    assert out is not None, name
    before = pydicom.dcmread(PYDICOM_FILES / name)
    after = pydicom.dcmread(pydicom.filebase.DicomBytesIO(out))
    for keyword, value in values.items():
        assert str(after[keyword].value) == value
    expected = _elements(before)
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        expected[tag] = (after[tag].VR, after[tag].value)
    assert _elements(after) == expected
    assert after.file_meta.MediaStorageSOPInstanceUID == values["SOPInstanceUID"]
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "image_dfl.dcm", "no_meta.dcm"])
def test_what_it_does_not_handle_it_declines(name):
    assert _patched((PYDICOM_FILES / name).read_bytes(), {**NEW, **_uids()}) is None


def test_non_ascii_text_only_into_a_utf8_data_set(tmp_path):
    values = {**NEW, "PatientName": "Müller^Jürgen", **_uids()}
    for charset, handled in (("ISO_IR 192", True), ("ISO_IR 100", False)):
        ds = new_dataset("1.2.840.10008.5.1.4.1.1.7", charset=charset)
        ds.PatientName, ds.StudyInstanceUID, ds.SeriesInstanceUID = "Doe", "1.2", "1.2.3"
        path = tmp_path / f"{charset}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out = _patched(path.read_bytes(), values)
        assert (out is not None) is handled
        if handled:
            after = pydicom.dcmread(pydicom.filebase.DicomBytesIO(out))
            assert str(after.PatientName) == "Müller^Jürgen"


def test_a_header_longer_than_the_head_is_declined():
    data = (PYDICOM_FILES / "CT_small.dcm").read_bytes()
    done = patch.patch(data[:400], {tag_for_keyword("PatientName"): "X"}, generate_uid())
    assert done is None
