"""PS3.4 C.2.2.2 matching of worklist queries: pure unit tests (no daemon, no files)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from appliance.worklist.matching import (
    QueryError,
    answer,
    answer_charset,
    attrs_from_dataset,
    combined_date_time_match,
    compile_query,
    range_match,
    restrict_to_station,
    single_value_match,
    uid_list_match,
    universal_match,
    wildcard_match,
)
from tests.worklist.helpers import mwl_query, worklist_dataset

# Some queries below hold deliberately invalid values: pydicom warns when they are set.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SPS = 0x00400100
ITEM = attrs_from_dataset(worklist_dataset(
    patient_name="Müller^Zoë", study_uid="1.2.3.4", station=["AA32", "AA33"],
    date="20240105", time_="093000"))


def matches(item=ITEM, **keys) -> bool:
    return compile_query(attrs_from_dataset(mwl_query(**keys))).matches(item)


def test_universal_matching_c2223():
    assert universal_match("PN", ()) and universal_match("DA", ("*",)) and universal_match("SQ", ({},))
    assert not universal_match("PN", ("A*",))
    # every key empty: matches, whatever the item holds or lacks
    assert matches(PatientName="", PatientID="", sps_Modality="", sps_ScheduledStationAETitle="")
    assert matches(PatientName="*", sps_ScheduledProcedureStepStartDate="*")  # scanners send "*" for dates
    bare = attrs_from_dataset(worklist_dataset(with_sps=False))
    assert matches(bare, PatientName="", sps_Modality="")


def test_single_value_matching_c2221():
    test = single_value_match(0x00100020, "LO", "P1")
    assert test(ITEM)
    assert not single_value_match(0x00100020, "LO", "P2")(ITEM)
    assert single_value_match(0x00100020, "LO", " P1 ")(ITEM)  # padding is not significant
    assert matches(sps_Modality="US") and not matches(sps_Modality="CT")
    assert not matches(sps_Modality="us")  # case-sensitive but for PN
    assert matches(PatientName="müller^zoë") and matches(PatientName="MÜLLER^ZOË")
    assert matches(sps_ScheduledProcedureStepStartTime="0930")  # 0930 is 093000
    assert not matches(AccessionNumber="A1", PatientID="P2")  # every key must match


def test_multi_valued_item_attribute_matches_any_value():
    assert matches(sps_ScheduledStationAETitle="AA33")
    assert matches(sps_ScheduledStationAETitle="AA32")
    assert not matches(sps_ScheduledStationAETitle="AA34")
    assert matches(sps_ScheduledStationAETitle="AA3?")


def test_uid_list_matching_c2222():
    assert uid_list_match(0x0020000D, ("1.2.3.5", "1.2.3.4"))(ITEM)
    assert not uid_list_match(0x0020000D, ("1.2.3.5",))(ITEM)
    assert matches(StudyInstanceUID=["9.9", "1.2.3.4"])
    assert not matches(StudyInstanceUID="1.2.3")  # no prefix matching on UIDs


def test_wildcard_matching_c2224():
    assert wildcard_match(0x00100010, "PN", "mül*")(ITEM)
    assert wildcard_match(0x00100010, "PN", "M?LLER^Z?Ë")(ITEM)  # "?" is one character, even ü
    assert not wildcard_match(0x00100010, "PN", "M?LER*")(ITEM)
    assert matches(PatientID="P*") and matches(PatientID="?1") and not matches(PatientID="?")
    assert matches(PatientName="*^Zoë") and not matches(PatientName="*^Zoe")
    # a wildcard character is literal on a VR without wildcards (UI)
    assert not matches(StudyInstanceUID="1.2.*")


def test_range_matching_c2225():
    date = 0x00400002
    item_sps = ITEM[SPS][1][0]
    for text, expected in [("20240101-20240131", True), ("20240105-20240105", True),
                           ("-20240105", True), ("20240106-", False), ("-20240104", False),
                           ("20240105-", True), ("2024.01.01-2024.01.31", True)]:
        assert range_match(date, "DA", text)(item_sps) is expected, text
    time = 0x00400003
    assert range_match(time, "TM", "0900-1000")(item_sps)
    assert range_match(time, "TM", "-0930")(item_sps)  # "0930" covers the whole minute
    assert not range_match(time, "TM", "0931-")(item_sps)
    assert matches(sps_ScheduledProcedureStepStartDate="20240101-20240110")
    assert not matches(sps_ScheduledProcedureStepStartDate="20240201-")


def test_date_and_time_combined_as_one_range_c2225():
    sps = ITEM[SPS][1][0]  # 2024-01-05 09:30
    tag_d, tag_t = 0x00400002, 0x00400003
    # 4 Jan 10:00 -> 5 Jan 09:00: the moment is outside (09:30 > 09:00 on the last day)...
    assert not combined_date_time_match(tag_d, tag_t, "20240104-20240105", "1000-0900")(sps)
    # ...but 4 Jan 10:00 -> 6 Jan 09:00 contains it, though 09:30 is not "between 10 and 9"
    assert combined_date_time_match(tag_d, tag_t, "20240104-20240106", "1000-0900")(sps)
    assert combined_date_time_match(tag_d, tag_t, "20240105", "0900-1000")(sps)
    assert not combined_date_time_match(tag_d, tag_t, "20240105", "1000-1100")(sps)
    assert combined_date_time_match(tag_d, tag_t, "20240105-", "0930-")(sps)
    assert not combined_date_time_match(tag_d, tag_t, "-20240105", "-0929")(sps)
    # an item without a time covers its whole day
    no_time = attrs_from_dataset(worklist_dataset(time_=None))[SPS][1][0]
    assert combined_date_time_match(tag_d, tag_t, "20240105", "1500-1600")(no_time)
    # through compile_query: both keys of the SPS item are combined
    assert matches(sps_ScheduledProcedureStepStartDate="20240104-20240106",
                   sps_ScheduledProcedureStepStartTime="1000-0900")
    assert not matches(sps_ScheduledProcedureStepStartDate="20240105",
                       sps_ScheduledProcedureStepStartTime="1000-1100")


def test_sequence_matching_c2226():
    two_steps = worklist_dataset()
    second = Dataset()
    second.Modality = "CT"
    second.ScheduledStationAETitle = "CT1"
    second.ScheduledProcedureStepStartDate = "20240106"
    two_steps.ScheduledProcedureStepSequence.append(second)
    item = attrs_from_dataset(two_steps)
    # matches when one item of the sequence matches all the keys of the query's item
    assert matches(item, sps_Modality="CT", sps_ScheduledStationAETitle="CT1")
    assert not matches(item, sps_Modality="CT", sps_ScheduledStationAETitle="US1")
    query = compile_query(attrs_from_dataset(mwl_query(sps_Modality="CT", sps_ScheduledStationAETitle="")))
    rsp = answer(query, item, "ISO_IR 192")
    assert len(rsp.ScheduledProcedureStepSequence) == 1  # only the matching step is returned
    assert rsp.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT1"
    # a universal sequence key returns every step, whole
    whole = answer(compile_query(attrs_from_dataset(mwl_query(sps=False, ScheduledProcedureStepSequence=[]))),
                   item, None)
    assert [s.Modality for s in whole.ScheduledProcedureStepSequence] == ["US", "CT"]
    assert "ScheduledPerformingPhysicianName" in whole.ScheduledProcedureStepSequence[0]


def test_answer_holds_only_the_requested_keys_and_empty_ones():
    query = compile_query(attrs_from_dataset(mwl_query(
        PatientName="", PatientID="P1", IssuerOfPatientID="", sps_Modality="",
        sps_ScheduledProcedureStepLocation="")))
    rsp = answer(query, ITEM, answer_charset(ITEM))
    assert [e.keyword for e in rsp] == ["SpecificCharacterSet", "PatientName", "PatientID",
                                       "IssuerOfPatientID", "ScheduledProcedureStepSequence"]
    assert rsp.PatientName == "Müller^Zoë" and rsp["IssuerOfPatientID"].is_empty
    step = rsp.ScheduledProcedureStepSequence[0]
    assert [e.keyword for e in step] == ["Modality", "ScheduledProcedureStepLocation"]
    assert step["ScheduledProcedureStepLocation"].is_empty


@pytest.mark.parametrize(("charset", "name", "expected"), [
    ("ISO_IR 192", "Ζαχαρίας^山田", "ISO_IR 192"),
    ("ISO_IR 100", "Müller^Zoë", "ISO_IR 100"),  # answered in its own character set
    (None, "DOE^JANE", None),
    ("ISO_IR 101", "Dvořák^Zoë", "ISO_IR 101"),
])
def test_answer_character_set_never_loses_a_character(charset, name, expected):
    item = attrs_from_dataset(worklist_dataset(charset=charset, patient_name=name))
    assert answer_charset(item) == expected
    query = compile_query(attrs_from_dataset(mwl_query(PatientName="")))
    rsp = answer(query, item, answer_charset(item))
    assert str(rsp.PatientName) == name


def test_answer_character_set_of_code_extensions_is_utf8():
    ds = worklist_dataset(charset=["", "ISO 2022 IR 87"], patient_name="Yamada^Tarou=山田^太郎")
    assert answer_charset(attrs_from_dataset(ds)) == "ISO_IR 192"


def test_filter_issuer_aet_restricts_to_the_calling_station():
    for query in (mwl_query(sps=False, PatientName=""), mwl_query(sps_ScheduledStationAETitle=""),
                  mwl_query(sps_ScheduledStationAETitle="*")):
        restricted = restrict_to_station(attrs_from_dataset(query), "AA33")
        assert compile_query(restricted).matches(ITEM)
        assert not compile_query(restrict_to_station(attrs_from_dataset(query), "US9")).matches(ITEM)
    # a station asked for explicitly is kept
    asked = restrict_to_station(attrs_from_dataset(mwl_query(sps_ScheduledStationAETitle="AA32")), "X")
    assert compile_query(asked).matches(ITEM)


@pytest.mark.parametrize("keys", [
    {"sps": False, "ScheduledProcedureStepSequence": [Dataset(), Dataset()]},
    {"sps_ScheduledProcedureStepStartDate": "yesterday"},
    {"sps_ScheduledProcedureStepStartDate": "2024-01-05-2024-01-06"},
    {"sps_ScheduledProcedureStepStartTime": "25h"},
    {"sps_ScheduledProcedureStepStartDate": "-"},
])
def test_malformed_queries_are_refused_with_the_offending_tag(keys):
    with pytest.raises(QueryError) as e:
        compile_query(attrs_from_dataset(mwl_query(**keys)))
    assert e.value.tag in (0x00400100, 0x00400002, 0x00400003)


def test_items_without_the_attribute_do_not_match_a_constraint():
    bare = attrs_from_dataset(worklist_dataset(with_sps=False))
    assert not matches(bare, sps_Modality="US")
    assert not matches(attrs_from_dataset(worklist_dataset(time_=None)),
                       sps_ScheduledProcedureStepStartTime="0930")
