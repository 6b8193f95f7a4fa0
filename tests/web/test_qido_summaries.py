"""QIDO-RS computed attributes (PS3.4 C.3.4) and attributes of the first
instance, now kept on the study and series rows (schema v3): right as a study
grows over several associations, when an instance is stored again, and on an
index file of the previous schema (v2) that the daemon migrates at start."""

from __future__ import annotations

import dataclasses

import requests

from appliance.query.keys import COMPUTED, INDEXED
from appliance.query.model import Level
from appliance.store.index import QIDO_KEPT
from appliance.web.qido import _CONSTANT, ALL_EXTRAS, DEFAULTS
from tests.store import BODY_PART, TIMEZONE, create_v2_index, record
from tests.web import Study, store, write_studies

SERIES_COUNT, STUDY_INSTANCES, SERIES_INSTANCES = "00201206", "00201208", "00201209"
MODALITIES = "00080061"


def get(daemon, path: str) -> list[dict]:
    """A QIDO-RS search on the daemon, answered 200."""
    r = requests.get(f"http://127.0.0.1:{daemon.http_port}/dicom-web{path}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def values(result: dict, tag: str):
    return result.get(tag, {}).get("Value")


def study_summary(daemon, uid: str) -> tuple:
    """(NumberOfStudyRelatedSeries, ...Instances, ModalitiesInStudy) of one study."""
    (result,) = get(daemon, f"/studies?StudyInstanceUID={uid}")
    return values(result, SERIES_COUNT), values(result, STUDY_INSTANCES), values(result, MODALITIES)


def series_counts(daemon, uid: str) -> list[int]:
    """NumberOfSeriesRelatedInstances of each series of a study, in series order."""
    return [values(s, SERIES_INSTANCES)[0] for s in get(daemon, f"/studies/{uid}/series")]


def test_counts_follow_stores_into_an_existing_study(make_daemon, tmp_path):
    daemon = make_daemon(OverwriteInstances=True)
    first = Study("PAT9", "Roe^Ann", "19800101", "F", "20240105", "101500", "ACC9", "Liver",
                  [("US", 2)])
    files = write_studies(tmp_path / "first", [first])
    store(daemon.dicom_port, files)
    assert study_summary(daemon, first.uid) == ([1], [2], ["US"])
    # More series of the same study, in another association.
    more = dataclasses.replace(first, series=[("SR", 1), ("OT", 1)], series_uids=[], sop_uids=[])
    store(daemon.dicom_port, write_studies(tmp_path / "more", [more]))
    assert study_summary(daemon, first.uid) == ([3], [4], ["OT", "SR", "US"])
    assert sorted(series_counts(daemon, first.uid)) == [1, 1, 2]
    # An instance stored again replaces itself: nothing counted twice.
    store(daemon.dicom_port, files[:1])
    assert study_summary(daemon, first.uid) == ([3], [4], ["OT", "SR", "US"])
    assert sorted(series_counts(daemon, first.uid)) == [1, 1, 2]


def test_a_v2_index_is_migrated_with_its_counts_and_attributes(make_daemon, tmp_path):
    study = "1.2.826.0.1.3680043.8.498.1"
    create_v2_index(tmp_path / "d" / "index", [
        record(study, f"{study}.1", f"{study}.1.1", timezone="-0500", body_part="LIVER"),
        record(study, f"{study}.1", f"{study}.1.2"),
        record(study, f"{study}.2", f"{study}.2.1", modality="SR", series_number=2),
    ])
    daemon = make_daemon("d")
    assert "index schema migrated to version 3" in daemon.log()
    assert study_summary(daemon, study) == ([2], [3], ["SR", "US"])
    (result,) = get(daemon, f"/studies?StudyInstanceUID={study}")
    assert values(result, TIMEZONE) == ["-0500"]  # from the first instance, as before
    series = get(daemon, f"/studies/{study}/series?includefield=all")
    assert [values(s, SERIES_INSTANCES) for s in series] == [[2], [1]]
    assert [values(s, BODY_PART) for s in series] == [["LIVER"], ["ABDOMEN"]]
    # The migrated study keeps counting.
    more = Study("PAT1", "Doe^Jane", "19800101", "F", "20240110", "093000", "ACC1", "Abdomen",
                 [("OT", 1)], uid=study)
    store(daemon.dicom_port, write_studies(tmp_path / "more", [more]))
    assert study_summary(daemon, study) == ([3], [4], ["OT", "SR", "US"])


def test_attributes_returned_by_default_or_for_all_are_kept_on_the_rows():
    """What a study or series search returns without includefield naming it is
    read from the row, not parsed out of an instance's whole metadata."""
    for level, kept in ((Level.STUDY, "study"), (Level.SERIES, "series")):
        returned = {*DEFAULTS[level], *ALL_EXTRAS[level]}
        if level is Level.SERIES:
            returned |= set(DEFAULTS[Level.STUDY])  # a search across studies returns both
        from_metadata = returned - set(INDEXED) - set(COMPUTED) - _CONSTANT
        assert from_metadata <= set(QIDO_KEPT[kept]), level
