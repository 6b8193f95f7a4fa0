"""Q/R C-FIND answers and identifiers without a daemon: the fast path's answer bytes are
what pydicom (stock pynetdicom) writes for the same answer, and identifiers parse into
the search model as PS3.4 C.4.1 says."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from appliance.dicom.qr_find import (
    FindError, Key, Query, answer_bytes, answer_charset, answer_dataset, answer_values,
    parse_identifier,
)
from appliance.dicom.status import FindStatus
from appliance.query.model import Level, MatchKind, Row, Search
from appliance.worklist.encoded import Headers

STUDY = Query(Level.STUDY, Search(Level.STUDY), (
    Key(0x00080020, "DA", "indexed"), Key(0x00080054, "AE", "aet"),
    Key(0x00080061, "CS", "computed"), Key(0x00100010, "PN", "indexed"),
    Key(0x00100020, "LO", "indexed"), Key(0x00101010, "AS", "metadata"),
    Key(0x00201208, "IS", "computed"), Key(0x00280010, "US", "indexed"),
    Key(0x00321060, "LO", "empty"), Key(0x00400275, "SQ", "empty")))


def _row(name: str, charset: str | None) -> Row:
    return Row({0x00080020: "20240110", 0x00080061: "US,SR,US", 0x00100010: name,
                0x00100020: "ID1", 0x00201208: 3, 0x00280010: 480},
               {0x00101010: '{"vr":"AS","Value":["054Y"]}'}, charset=charset)


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("name, stored, expected", [
    ("Doe^John", "ISO_IR 100", "ISO_IR 100"),
    ("Doe^John", None, None),
    ("Müller^Jürgen", "ISO_IR 100", "ISO_IR 100"),
    ("Müller^Jürgen", None, "ISO_IR 192"),            # no stored set: UTF-8, not lost
    ("Παπαδόπουλος^Γιώργος", "ISO_IR 192", "ISO_IR 192"),
    ("Παπαδόπουλος^Γιώργος", "ISO_IR 100", "ISO_IR 192"),  # Latin-1 cannot hold it
    ("Yamada^Tarou=山田^太郎", "ISO_IR 192", "ISO_IR 192"),
])
def test_answer_bytes_are_what_pydicom_writes(implicit, name, stored, expected):
    elements = answer_values(STUDY, _row(name, stored), "ORTHANC")
    charset = answer_charset(elements, stored)
    assert charset == expected
    data = answer_bytes(elements, charset, Headers(implicit))
    assert data is not None
    assert data == encode(answer_dataset(elements, charset), implicit, True)
    decoded = answer_dataset(elements, charset)
    assert str(decoded.PatientName) == name
    assert list(decoded.ModalitiesInStudy) == ["SR", "US"]
    assert decoded.PatientAge == "054Y" and decoded.RetrieveAETitle == "ORTHANC"


def test_iso_2022_answers_keep_their_set_and_are_left_to_pydicom():
    elements = answer_values(STUDY, _row("Yamada^Tarou=山田^太郎", "\\ISO 2022 IR 87"), "X")
    charset = answer_charset(elements, "\\ISO 2022 IR 87")
    assert charset == "\\ISO 2022 IR 87"
    assert answer_bytes(elements, charset, Headers(True)) is None
    encoded = encode(answer_dataset(elements, charset), True, True)
    assert b"\x1b$B" in encoded  # JIS X 0208 escape: written in the stored set


def _identifier(**keys) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_hierarchical_study_root_series_level():
    query = parse_identifier(_identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3",
                                         Modality="US\\CT", SeriesInstanceUID="",
                                         PatientName="DOE*", SOPInstanceUID=""),
                             Level.STUDY, fold_pn=True)
    search = query.search
    assert search.level is Level.SERIES and search.study_uid == "1.2.3"
    by_tag = {m.tag: m for m in search.matches}
    assert by_tag[0x00080060].values == ("US", "CT")
    assert by_tag[0x00100010].fold_case  # patient keys are the study's in Study Root
    assert 0x0020000D not in by_tag       # the upper unique key is the study_uid condition
    assert {k.tag: k.source for k in query.keys}[0x00080018] == "empty"  # lower level


@pytest.mark.parametrize("top, keys, offending", [
    (Level.STUDY, dict(QueryRetrieveLevel="SERIES"), 0x0020000D),
    (Level.STUDY, dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2"), 0x0020000E),
    (Level.PATIENT, dict(QueryRetrieveLevel="STUDY", PatientID="A*"), 0x00100020),
    (Level.PATIENT, dict(QueryRetrieveLevel="SERIES", PatientID="A", StudyInstanceUID="1\\2"),
     0x0020000D),
    (Level.STUDY, dict(QueryRetrieveLevel="PATIENT"), 0x00080052),
    (Level.STUDY, dict(), 0x00080052),
])
def test_hierarchy_violations_are_a900(top, keys, offending):
    with pytest.raises(FindError) as e:
        parse_identifier(_identifier(**keys), top, fold_pn=True)
    assert e.value.status is FindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert e.value.tag == offending


def test_ranges_lists_and_bad_values():
    query = parse_identifier(_identifier(QueryRetrieveLevel="STUDY", StudyDate="20240101-",
                                         StudyInstanceUID="1.2\\1.3", AccessionNumber="*",
                                         NumberOfStudyRelatedInstances="5"),
                             Level.STUDY, fold_pn=True)
    by_tag = {m.tag: m for m in query.search.matches}
    assert by_tag[0x00080020].kind is MatchKind.RANGE and by_tag[0x00080020].values == ("20240101", "")
    assert by_tag[0x0020000D].kind is MatchKind.EXACT and by_tag[0x0020000D].values == ("1.2", "1.3")
    assert 0x00080050 not in by_tag and 0x00201208 not in by_tag  # universal; return key only
    with pytest.raises(FindError) as e:
        parse_identifier(_identifier(QueryRetrieveLevel="STUDY", StudyDate="2024"),
                         Level.STUDY, fold_pn=True)
    assert e.value.status is FindStatus.UNABLE_TO_PROCESS and e.value.tag == 0x00080020
