"""QIDO-RS end to end: the real daemon, studies stored with DCMTK's storescu,
searched with dicomweb-client, requests and curl."""

from __future__ import annotations

import json

import pytest
import requests
from dicomweb_client import DICOMwebClient

from pydicom.uid import generate_uid

from tests.support import new_dataset, run, scu_store
from tests.web import sample_studies, start_daemon, store, write_studies

PATIENT_ID, PATIENT_NAME, ACCESSION = "00100020", "00100010", "00080050"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITIES, RETRIEVE_URL = "00080061", "00081190"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One daemon holding the five sample studies, for the whole module."""
    root = tmp_path_factory.mktemp("qido")
    daemon = start_daemon(root / "d")
    studies = sample_studies()
    store(daemon.dicom_port, write_studies(root / "files", studies))
    yield daemon, studies
    daemon.stop()


@pytest.fixture(scope="module")
def daemon(archive):
    return archive[0]


@pytest.fixture(scope="module")
def studies(archive):
    return archive[1]


@pytest.fixture(scope="module")
def client(daemon):
    return DICOMwebClient(f"http://127.0.0.1:{daemon.http_port}/dicom-web")


def get(daemon, path: str, **kw) -> requests.Response:
    """A raw GET on the daemon's HTTP port."""
    return requests.get(f"http://127.0.0.1:{daemon.http_port}{path}", timeout=10, **kw)


def values(result: dict, tag: str):
    """The Value array of an attribute (None when absent or empty)."""
    return result.get(tag, {}).get("Value")


def uids(results: list[dict], tag: str = STUDY_UID) -> list[str]:
    return [values(r, tag)[0] for r in results]


def study_uids(studies, *indexes) -> set[str]:
    return {studies[i].uid for i in indexes}


# -- matching ----------------------------------------------------------------


def test_patient_id_by_keyword_and_by_tag(client, studies):
    by_keyword = client.search_for_studies(search_filters={"PatientID": "PAT001"})
    by_tag = client.search_for_studies(search_filters={"00100020": "PAT001"})
    assert set(uids(by_keyword)) == set(uids(by_tag)) == study_uids(studies, 0, 3)


def test_default_study_attributes_and_computed_ones(client, daemon, studies):
    (result,) = client.search_for_studies(search_filters={"AccessionNumber": "ACC001"})
    a = studies[0]
    assert values(result, STUDY_UID) == [a.uid]
    assert values(result, PATIENT_NAME) == [{"Alphabetic": "Doe^John"}]
    assert values(result, PATIENT_ID) == ["PAT001"]
    assert values(result, "00100030") == ["19700101"] and values(result, "00100040") == ["M"]
    assert values(result, "00080020") == ["20240110"] and values(result, "00080030") == ["093000"]
    assert values(result, "00080090") == [{"Alphabetic": "House^Gregory"}]
    assert values(result, "00200010") == ["001"]
    assert values(result, "00081030") == ["Abdomen US"]
    assert values(result, "00080056") == ["ONLINE"]
    assert values(result, MODALITIES) == ["SR", "US"]
    assert result["00201206"] == {"vr": "IS", "Value": [2]}
    assert result["00201208"] == {"vr": "IS", "Value": [4]}
    # dicomweb-client sends "Host: 127.0.0.1" without the port; URLs follow the Host header.
    assert values(result, RETRIEVE_URL) == [f"http://127.0.0.1/dicom-web/studies/{a.uid}"]
    assert list(result) == sorted(result)  # PS3.18 F.2: ascending tags
    # Series/instance attributes are not study attributes.
    assert SERIES_UID not in result and SOP_UID not in result


def test_computed_attributes_of_every_study(client, studies):
    results = {values(r, STUDY_UID)[0]: r for r in client.search_for_studies()}
    assert set(results) == {s.uid for s in studies}
    for s in studies:
        r = results[s.uid]
        assert values(r, MODALITIES) == sorted(s.modalities)
        assert values(r, "00201206") == [len(s.series)]
        assert values(r, "00201208") == [s.instance_count]


def test_patient_name_is_case_insensitive_including_non_ascii(client, studies):
    def find(pattern):
        return set(uids(client.search_for_studies(search_filters={"PatientName": pattern})))

    assert find("doe*") == find("DOE*") == study_uids(studies, 0, 2, 3)
    assert find("DOE^JOHN") == study_uids(studies, 0, 3)
    assert find("doe") == set()  # single value matching: the whole name
    assert find("müller*") == find("MÜLLER^JÜRGEN") == study_uids(studies, 1)
    assert find("M?LLER*") == study_uids(studies, 1)  # ? is one character, not one byte
    assert find("*brien*") == study_uids(studies, 4)  # the quote in O'Brien is plain text
    assert find("*") == {s.uid for s in studies}


def test_wildcard_characters_of_sql_are_literals(client, studies):
    def find(key, value):
        return set(uids(client.search_for_studies(search_filters={key: value})))

    assert find("PatientID", "PAT[4]_%") == study_uids(studies, 4)
    assert find("PatientID", "PAT[4]*") == study_uids(studies, 4)
    assert find("PatientID", "PAT_*") == set()     # "_" is no wildcard in DICOM
    assert find("PatientID", "PAT%") == set()      # nor "%"
    assert find("PatientID", "PAT?0?") == study_uids(studies, 0, 1, 2, 3)
    assert find("AccessionNumber", "ACC?5") == study_uids(studies, 4)


def test_other_text_is_case_sensitive_by_default(client, studies):
    def find(key, value):
        return set(uids(client.search_for_studies(search_filters={key: value})))

    assert find("AccessionNumber", "ACC001") == study_uids(studies, 0)
    assert find("AccessionNumber", "acc001") == set()  # DicomWeb.QidoCaseSensitive: true
    assert find("StudyDescription", "Thyroid*") == study_uids(studies, 1, 3)
    assert find("StudyDescription", "thyroid*") == set()


def test_date_and_time_ranges(client, studies):
    def find(key, value):
        return set(uids(client.search_for_studies(search_filters={key: value})))

    assert find("StudyDate", "20240110") == study_uids(studies, 0, 4)
    assert find("StudyDate", "20240101-") == study_uids(studies, 0, 1, 3, 4)
    assert find("StudyDate", "-20231231") == study_uids(studies, 2)
    assert find("StudyDate", "20240101-20240228") == study_uids(studies, 0, 1, 4)
    assert find("StudyTime", "-0930") == study_uids(studies, 0, 3)  # 09:30:00 included
    assert find("StudyTime", "1200-2359") == study_uids(studies, 1, 2, 4)
    assert find("PatientBirthDate", "19800101-19891231") == study_uids(studies, 4)


def test_uid_lists(client, studies):
    a, b = studies[0].uid, studies[2].uid
    for separator in (",", "\\"):
        found = client.search_for_studies(search_filters={"StudyInstanceUID": f"{a}{separator}{b}"})
        assert set(uids(found)) == {a, b}


def test_modalities_in_study_and_modality_at_study_level(client, studies):
    def find(key, value):
        return set(uids(client.search_for_studies(search_filters={key: value})))

    assert find("ModalitiesInStudy", "SR") == study_uids(studies, 0)
    assert find("ModalitiesInStudy", "OT") == study_uids(studies, 2, 4)
    assert find("ModalitiesInStudy", "SR\\OT") == find("ModalitiesInStudy", "SR,OT") == \
        study_uids(studies, 0, 2, 4)
    # A series attribute in a study search: studies having such a series.
    assert find("Modality", "OT") == study_uids(studies, 2, 4)


def test_study_computed_keys_match_at_lower_levels_and_sop_classes_in_study(client, studies):
    """ModalitiesInStudy asked of series and instances means their study's
    (a 500 once); SOPClassesInStudy matches like it, a UID list."""
    series = client.search_for_series(search_filters={"ModalitiesInStudy": "SR"})
    assert set(uids(series, SERIES_UID)) == set(studies[0].series_uids)
    instances = client.search_for_instances(search_filters={"ModalitiesInStudy": "SR"})
    assert set(uids(instances, SOP_UID)) == {u for uids_ in studies[0].sop_uids for u in uids_}
    sr = "1.2.840.10008.5.1.4.1.1.88.11"
    found = client.search_for_studies(search_filters={"SOPClassesInStudy": sr},
                                      fields=["SOPClassesInStudy"])
    assert set(uids(found)) == study_uids(studies, 0)
    assert sr in values(found[0], "00080062")


def test_attributes_that_are_not_index_columns_match_in_metadata(client, studies):
    def find(key, value):
        return set(uids(client.search_for_studies(search_filters={key: value})))

    everything = {s.uid for s in studies}
    assert find("Manufacturer", "Web*") == everything
    assert find("BodyPartExamined", "ABDOMEN") == everything
    assert find("BodyPartExamined", "abdomen") == set()
    assert find("PerformedProcedureStepStartDate", "20240215") == study_uids(studies, 1)
    assert find("PerformedProcedureStepStartDate", "20240201-20240301") == study_uids(studies, 1, 3)
    assert find("00081090", "*") == everything  # universal matching on any attribute
    series = client.search_for_series(search_filters={"SeriesDescription": "SR*"})
    assert uids(series, SERIES_UID) == [studies[0].series_uids[1]]


# -- levels ------------------------------------------------------------------


def test_series_of_a_study(client, studies):
    a = studies[0]
    series = client.search_for_series(a.uid)
    assert uids(series, SERIES_UID) == a.series_uids  # in SeriesNumber order
    assert [values(s, "00080060") for s in series] == [["US"], ["SR"]]
    assert [values(s, "00201209") for s in series] == [[3], [1]]
    assert [values(s, "00200011") for s in series] == [[1], [2]]
    assert values(series[0], "00400244") == ["20240110"]  # from the stored metadata
    assert values(series[1], RETRIEVE_URL)[0].endswith(
        f"/dicom-web/studies/{a.uid}/series/{a.series_uids[1]}")
    # Inside a study, study attributes are not repeated (PS3.18 10.6.3.3.2).
    assert PATIENT_ID not in series[0] and MODALITIES not in series[0]


def test_all_series_carry_study_attributes(client, studies):
    series = client.search_for_series(search_filters={"Modality": "OT"})
    assert len(series) == 2
    for s in series:
        assert values(s, PATIENT_ID) in (["PAT003"], ["PAT[4]_%"])
        assert MODALITIES in s and "00201206" in s and STUDY_UID in s


def test_instances_of_a_series_of_a_study_and_of_all(client, studies):
    a = studies[0]
    instances = client.search_for_instances(a.uid, a.series_uids[0])
    assert uids(instances, SOP_UID) == a.sop_uids[0]  # InstanceNumber order
    first = instances[0]
    assert values(first, "00080016") == ["1.2.840.10008.5.1.4.1.1.6.1"]
    assert values(first, "00200013") == [1]
    assert values(first, "00280010") == [4] and values(first, "00280011") == [6]
    assert values(first, "00280100") == [8]  # BitsAllocated, from the metadata
    assert "00280008" not in first  # NumberOfFrames unknown: left out
    assert values(first, RETRIEVE_URL)[0].endswith(
        f"/studies/{a.uid}/series/{a.series_uids[0]}/instances/{a.sop_uids[0][0]}")
    assert SERIES_UID not in first and PATIENT_ID not in first

    in_study = client.search_for_instances(a.uid)
    assert uids(in_study, SOP_UID) == a.sop_uids[0] + a.sop_uids[1]
    assert "00280010" not in in_study[-1]  # the SR has no Rows
    assert values(in_study[-1], "00080060") == ["SR"] and PATIENT_ID not in in_study[-1]

    everywhere = client.search_for_instances(search_filters={"PatientID": "PAT003"})
    assert uids(everywhere, SOP_UID) == studies[2].sop_uids[0]
    assert values(everywhere[0], PATIENT_ID) == ["PAT003"]
    assert values(everywhere[0], MODALITIES) == ["OT"]


def test_instance_keys_in_a_study_search(client, studies):
    sop = studies[1].sop_uids[0][1]
    found = client.search_for_studies(search_filters={"SOPInstanceUID": sop})
    assert uids(found) == [studies[1].uid]
    assert SOP_UID not in found[0]  # instance attributes are not returned


# -- includefield, paging ----------------------------------------------------


def test_includefield_keywords_tags_lists_and_levels(daemon, studies):
    r = get(daemon, "/dicom-web/studies?PatientID=PAT002&includefield=00080070,BodyPartExamined"
                    "&includefield=SeriesDescription&includefield=IssuerOfPatientID")
    assert r.status_code == 200
    (result,) = r.json()
    assert values(result, "00080070") == ["Web Tests"]     # Manufacturer, from metadata
    assert values(result, "00180015") == ["ABDOMEN"]
    assert "0008103E" not in result  # a series attribute in a study search: not returned
    assert "00100021" not in result  # absent from the objects: left out


def test_includefield_all(client, studies):
    (instance,) = client.search_for_instances(search_filters={"PatientID": "PAT003"},
                                              fields=["all"])
    assert values(instance, "00080008") == ["ORIGINAL", "PRIMARY"]  # ImageType
    assert values(instance, "00080070") == ["Web Tests"]
    assert "7FE00010" not in instance  # no bulk data references in a search
    (series,) = client.search_for_series(studies[2].uid, fields=["all"])
    assert values(series, "00180015") == ["ABDOMEN"] and values(series, "00080070") == ["Web Tests"]


def test_limit_and_offset_page_through_a_stable_order(client, daemon, studies):
    everything = uids(client.search_for_studies())
    assert len(everything) == len(studies)
    pages = [uids(client.search_for_studies(limit=2, offset=offset)) for offset in (0, 2, 4, 6)]
    assert [len(p) for p in pages] == [2, 2, 1, 0]
    assert sum(pages, []) == everything
    assert uids(client.search_for_studies(limit=2, get_remaining=True)) == everything
    r = get(daemon, "/dicom-web/studies?limit=3&offset=1")
    assert uids(r.json()) == everything[1:4] and "Warning" not in r.headers


def test_empty_result_is_200_and_an_empty_array(daemon, client):
    r = get(daemon, "/dicom-web/studies?PatientID=NOBODY")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/dicom+json"
    assert r.content == b"[]"
    assert client.search_for_series("1.2.3.4.5.6") == []


def test_fuzzymatching_is_accepted_with_a_warning(client, daemon, studies):
    r = get(daemon, "/dicom-web/studies?PatientName=doe*&fuzzymatching=true")
    assert r.status_code == 200 and len(r.json()) == 3
    assert r.headers["Warning"] == (
        f'299 http://127.0.0.1:{daemon.http_port}/dicom-web "The fuzzymatching parameter is '
        'not supported. Only literal matching has been performed."')
    assert "Warning" not in get(daemon, "/dicom-web/studies?fuzzymatching=false").headers
    assert len(client.search_for_studies(fuzzymatching=True,
                                         search_filters={"PatientName": "doe*"})) == 3


# -- URLs --------------------------------------------------------------------


def test_retrieve_url_follows_the_loopback_proxy_headers(daemon, studies):
    path = f"/dicom-web/studies?StudyInstanceUID={studies[0].uid}"
    direct = get(daemon, path)
    assert values(direct.json()[0], RETRIEVE_URL) == [
        f"http://127.0.0.1:{daemon.http_port}/dicom-web/studies/{studies[0].uid}"]
    forwarded = get(daemon, path, headers={"X-Forwarded-Proto": "https",
                                           "X-Forwarded-Host": "pacs.clinic.example"})
    assert values(forwarded.json()[0], RETRIEVE_URL) == [
        f"https://pacs.clinic.example/dicom-web/studies/{studies[0].uid}"]
    rfc7239 = get(daemon, path, headers={"Forwarded": 'for=10.0.0.9;proto=https;host="emr.example:8443"'})
    assert values(rfc7239.json()[0], RETRIEVE_URL) == [
        f"https://emr.example:8443/dicom-web/studies/{studies[0].uid}"]
    # A Host that is not a host name does not get into the URL.
    odd = run(["curl", "-s", "-H", "Host: evil.example/x?", f"http://127.0.0.1:{daemon.http_port}{path}"])
    url = values(json.loads(odd.stdout)[0], RETRIEVE_URL)[0]
    assert url.startswith(f"http://127.0.0.1:{daemon.http_port}/dicom-web/studies/")


# -- refusals ----------------------------------------------------------------


@pytest.mark.parametrize("query, words", [
    ("Foo=1", "not a DICOM keyword"),
    ("0010002=1", "not a DICOM keyword"),
    ("=1", "not a DICOM keyword"),              # pydicom has a keyword "" (300A,0782)
    ("0040A370.00400009=1", "inside sequences"),
    ("limit=-1", "limit"),
    ("limit=0", "limit"),
    ("limit=abc", "limit"),
    ("limit=100001", "limit"),
    ("limit=1&limit=2", "twice"),
    ("limit=%C2%B2", "limit"),                   # a superscript 2 is no ASCII digit
    ("offset=-5", "offset"),
    ("offset=1e3", "offset"),
    ("offset=99999999999999999999", "offset"),
    ("StudyInstanceUID=1.2.abc", "not a valid UID"),
    ("StudyInstanceUID=1.2.3,", "not a valid UID"),
    ("StudyDate=2024*", "DA value or range"),
    ("StudyDate=20241301x", "DA value or range"),
    ("StudyDate=-", "DA value or range"),
    ("StudyDate=%D9%A2%D9%A0%D9%A2%D9%A4%D9%A0%D9%A1%D9%A0%D9%A1", "DA value or range"),
    ("StudyTime=25:00", "TM value or range"),
    ("PatientWeight=70", "DS attributes"),
    ("00091001=x", "private or unknown"),
    ("NumberOfStudyRelatedSeries=2", "computed"),
    ("PatientID=A&00100020=B", "given twice"),
    ("PatientID=a%00b", "control characters"),
    ("SeriesNumber=one", "SeriesNumber"),
    ("fuzzymatching=maybe", "fuzzymatching"),
    ("includefield=NoSuchKeyword", "includefield"),
])
def test_bad_queries_are_400_with_a_message(daemon, query, words):
    r = get(daemon, f"/dicom-web/studies?{query}")
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["HttpStatus"] == 400 and words in body["Message"]


@pytest.mark.parametrize("path", [
    "/dicom-web/studies/1.2.x/series",
    "/dicom-web/studies/%2e%2e/series",
    "/dicom-web/studies/..%2F..%2Fetc/instances",
    "/dicom-web/studies/1.2.3/series/%2Fetc%2Fpasswd/instances",
    "/dicom-web/studies/" + "1" * 65 + "/series",
])
def test_malformed_uids_in_paths_are_400(daemon, path):
    r = run(["curl", "-s", "--path-as-is", "-w", "\n%{http_code}",
             f"http://127.0.0.1:{daemon.http_port}{path}"])
    body, status = r.stdout.rsplit("\n", 1)
    assert status == "400" and "not a valid UID" in json.loads(body)["Message"]


def test_unacceptable_media_type_is_406(daemon):
    xml_only = get(daemon, "/dicom-web/studies", headers={"Accept": "application/dicom+xml"})
    assert xml_only.status_code == 406 and xml_only.json()["HttpStatus"] == 406
    multipart = get(daemon, "/dicom-web/studies",
                    headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert multipart.status_code == 406
    refused_json = get(daemon, "/dicom-web/studies",
                       headers={"Accept": "application/dicom+json;q=0, application/dicom+xml"})
    assert refused_json.status_code == 406
    for ok in ("application/dicom+xml, application/json;q=0.5", "*/*", "application/*", ""):
        assert get(daemon, "/dicom-web/studies", headers={"Accept": ok}).status_code == 200
    # PS3.18 8.3.3.1: the accept query parameter overrides the header.
    assert get(daemon, "/dicom-web/studies?accept=application/dicom%2Bjson",
               headers={"Accept": "application/dicom+xml"}).status_code == 200
    assert get(daemon, "/dicom-web/studies?accept=text/html").status_code == 406


# -- configuration variants --------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A daemon with the other matching options and an explicit public host."""
    root = tmp_path_factory.mktemp("qido-tuned")
    daemon = start_daemon(root / "d", CaseSensitivePN=True, LimitFindResults=2,
                          DicomWeb={"QidoCaseSensitive": False, "Host": "pacs.example.org:8443",
                                    "Ssl": True, "Root": "/dicomweb/"})
    studies = sample_studies()
    store(daemon.dicom_port, write_studies(root / "files", studies))
    yield daemon, studies
    daemon.stop()


def test_case_options_are_honoured(tuned):
    daemon, studies = tuned

    def find(query):
        return set(uids(get(daemon, f"/dicomweb/studies?{query}").json()))

    assert find("AccessionNumber=acc001") == study_uids(studies, 0)   # QidoCaseSensitive false
    assert find("StudyDescription=THYROID*") == study_uids(studies, 1, 3)
    assert find("PatientName=doe*") == study_uids(studies, 2)          # CaseSensitivePN true
    assert find("PatientName=Doe*") == study_uids(studies, 0, 3)


def test_configured_host_and_result_cap(tuned):
    daemon, studies = tuned
    r = get(daemon, "/dicomweb/studies", headers={"X-Forwarded-Host": "ignored.example"})
    results = r.json()
    assert len(results) == 2  # LimitFindResults without a limit parameter
    assert r.headers["Warning"] == ('299 https://pacs.example.org:8443/dicomweb '
                                    '"There are 3 additional results that can be requested"')
    assert values(results[0], RETRIEVE_URL)[0].startswith("https://pacs.example.org:8443/dicomweb/studies/")
    explicit = get(daemon, "/dicomweb/studies?limit=10")
    assert len(explicit.json()) == 5 and "Warning" not in explicit.headers


def test_orderby_newest_first_pages_by_date_and_time(daemon, studies):
    # The web UI's study list: StudyDate then StudyTime descending (two studies share
    # 20240110 and are told apart by their times), paged with limit/offset.
    newest = ["ACC004", "ACC002", "ACC*5", "ACC001", "ACC003"]
    r = get(daemon, "/dicom-web/studies?orderby=-StudyDate")
    assert r.status_code == 200
    assert [values(s, ACCESSION)[0] for s in r.json()] == newest
    pages = [get(daemon, f"/dicom-web/studies?orderby=-StudyDate,-StudyTime&limit=2&offset={o}").json()
             for o in (0, 2, 4)]
    assert [values(s, ACCESSION)[0] for page in pages for s in page] == newest
    matched = get(daemon, "/dicom-web/studies?orderby=-StudyDate&PatientName=doe*").json()
    assert [values(s, ACCESSION)[0] for s in matched] == ["ACC004", "ACC001", "ACC003"]
    # Any other order, or at another level, is refused rather than ignored.
    for bad in ("/dicom-web/studies?orderby=PatientName", "/dicom-web/studies?orderby=StudyDate",
                "/dicom-web/series?orderby=-StudyDate",
                "/dicom-web/studies?orderby=-StudyDate&orderby=-StudyDate"):
        r = get(daemon, bad)
        assert r.status_code == 400 and "orderby" in r.json()["Message"], bad


def test_an_attribute_stored_with_another_vr_matches_as_text(tmp_path):
    """A modality wrote PerformingPhysicianName (PN) as LO: in that instance's
    metadata its values are plain strings, not PN objects. A search on it matches
    them as text and searches every other instance as before (the long fuzz
    campaign found such a search failing for everyone with SQLite's "malformed
    JSON")."""
    d = start_daemon(tmp_path / "d")
    try:
        files, uids_by_name = [], {}
        for name, vr in (("Smith^Anne", "LO"), ("Smith^Bob", "PN"), ("Jones^Carl", "PN")):
            ds = new_dataset("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR: no pixels needed
            ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "VR-1", generate_uid(), generate_uid()
            ds.Modality = "SR"
            ds.add_new(0x00081050, vr, name)
            files.append(tmp_path / f"{vr}-{len(files)}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
            uids_by_name[name] = ds.SOPInstanceUID
        assert scu_store(d.dicom_port, files) == [0, 0, 0]
        for query, names in (("Smith*", ["Smith^Anne", "Smith^Bob"]), ("Jones^Carl", ["Jones^Carl"])):
            r = get(d, f"/dicom-web/instances?PerformingPhysicianName={query}")
            assert r.status_code == 200, r.text
            assert sorted(uids(r.json(), SOP_UID)) == sorted(uids_by_name[n] for n in names)
    finally:
        d.stop()
