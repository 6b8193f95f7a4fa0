"""C-STORE parses an object's header while its pixel data is still arriving
(appliance.store.archive, IncomingFile.on_header): what it stores must be what a
parse of the finished file gives, and the finished file is still checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from appliance.store.archive import Origin, header_uids, instance_record
from appliance.dicomfile.header import read_header
from tests.dicom.test_scp import US_IMAGE
from tests.support import encode, meta_file
from tests.support import scu_store

EARLY_WINDOW = 64 << 10  # appliance.store.blobs._HEADER_AT


def ultrasound(**extra) -> Dataset:
    """A 640x480 RGB ultrasound image (0.9 MB) with a Latin-1 name and a sequence."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = US_IMAGE
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in "abc")
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "Müller^Jürgen", "E1", "20261127", "US"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D4000", "SRT", "Abdomen"
    ds.AnatomicRegionSequence = Sequence([code])
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 480, 640, 3, 0
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "RGB", 8, 8, 7
    ds.PixelRepresentation = 0
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.random.default_rng(7).integers(0, 255, 640 * 480 * 3, np.uint8).tobytes()
    return ds


def stored_row(daemon, sop_instance_uid: str) -> tuple:
    return daemon.rows(
        """SELECT p.patient_name, st.study_date, i.rows, i.columns, i.specific_character_set,
                  i.file_size, i.metadata
           FROM instances i JOIN series se ON se.id = i.series_pk
           JOIN studies st ON st.id = se.study_pk JOIN patients p ON p.id = st.patient_pk
           WHERE i.sop_instance_uid = ?""", (sop_instance_uid,))[0]


def parsed_row(path) -> tuple:
    header = read_header(path)
    r = instance_record(header, header_uids(header), path.stat().st_size, Origin("DICOM"))
    return (r.patient_name, r.study_date, r.rows, r.columns, r.specific_character_set,
            r.file_size, r.metadata)


@pytest.mark.parametrize("extra", [
    {},
    # A header longer than the early window: parsed once the object is whole.
    {"ImageComments": "x" * 9000, "OverlayData": bytes(2 * EARLY_WINDOW)},
], ids=["header in the window", "header past the window"])
def test_stored_record_is_a_parse_of_the_stored_file(daemon, chunked_send, tmp_path, extra):
    ds = ultrasound(**{k: v for k, v in extra.items() if k != "OverlayData"})
    if "OverlayData" in extra:
        ds.add_new(0x60003000, "OW", extra["OverlayData"])
    path = meta_file(tmp_path / "us.dcm", encode(ds), US_IMAGE, ds.SOPInstanceUID)
    assert path.stat().st_size > EARLY_WINDOW
    assert scu_store(daemon.dicom_port, [path]) == [0]
    stored = daemon.stored_path(ds.SOPInstanceUID)
    assert stored.read_bytes()[-1000:] == path.read_bytes()[-1000:]
    row = stored_row(daemon, ds.SOPInstanceUID)
    assert row == parsed_row(stored)
    meta = json.loads(row[-1])
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]
    assert meta["00082218"]["Value"][0]["00080104"]["Value"] == ["Abdomen"]


def test_pixel_data_cut_short_after_the_window_is_refused(daemon, chunked_send, tmp_path):
    ds = ultrasound()
    whole = meta_file(tmp_path / "whole.dcm", encode(ds), US_IMAGE, ds.SOPInstanceUID)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-5000])
    assert scu_store(daemon.dicom_port, [cut]) == [0xC000]
    assert "truncated DICOM object: Pixel Data needs 921600 bytes" in daemon.log()
    assert daemon.stored_path(ds.SOPInstanceUID) is None
    assert daemon.incoming_files() == []
    assert scu_store(daemon.dicom_port, [whole]) == [0]


def test_mismatched_sop_instance_is_still_caught(daemon, chunked_send, tmp_path):
    ds = ultrasound()
    path = meta_file(tmp_path / "us.dcm", encode(ds), US_IMAGE, generate_uid())
    # The command names the file meta's instance, the dataset another one.
    assert scu_store(daemon.dicom_port, [path]) == [0xC001]
    assert daemon.rows("SELECT count(*) FROM instances") == [(0,)]
