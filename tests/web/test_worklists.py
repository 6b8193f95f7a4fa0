"""The REST API of Orthanc's Worklists plugin, end to end: HTTP in, .wl files in the
watched folder, C-FIND answers out."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import requests

from tests.support import run
from tests.worklist.helpers import find, mwl_query, poll, start_wl_daemon

AUTH = ("clinic", "s3cret-pass")
SPS = {"Modality": "US", "ScheduledStationAETitle": "US1", "ScheduledProcedureStepStartDate": "20240105",
       "ScheduledProcedureStepStartTime": "0930"}


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    daemon = start_wl_daemon(tmp_path_factory.mktemp("rest"), AuthenticationEnabled=True,
                             RegisteredUsers={AUTH[0]: AUTH[1]})
    daemon.folder = Path(daemon.config["Worklists"]["Database"])
    yield daemon
    daemon.stop()


def call(d, method: str, path: str, body=None, *, raw: bytes | None = None, auth=AUTH):
    r = requests.request(method, f"http://127.0.0.1:{d.http_port}{path}", auth=auth, timeout=10,
                         data=raw if raw is not None else None if body is None else json.dumps(body))
    assert r.headers["Content-Type"].startswith("application/json"), r.text
    return r.status_code, r.json()


def answered(d, accession: str) -> list[str]:
    return [str(a.PatientName) for a in find(d.dicom_port, mwl_query(AccessionNumber=accession,
                                                                      PatientName=""))[1]]


def test_create_list_get_put_delete(d):
    tags = {"PatientName": "Ζαχαρίας^Γιάννης", "PatientID": "R1", "AccessionNumber": "R-ACC",
            "ScheduledProcedureStepSequence": [SPS]}
    status, created = call(d, "POST", "/worklists/create", {"Tags": tags})
    assert status == 200 and created == {"ID": created["ID"], "Path": f"/worklists/{created['ID']}"}
    wid = created["ID"]
    assert (d.folder / f"{wid}.wl").is_file()
    poll(lambda: answered(d, "R-ACC") == ["Ζαχαρίας^Γιάννης"])  # the watcher picked it up

    status, listed = call(d, "GET", "/worklists")
    mine = [w for w in listed if w["ID"] == wid]
    assert status == 200 and len(mine) == 1
    assert mine[0]["Tags"]["PatientName"] == "Ζαχαρίας^Γιάννης"
    assert mine[0]["Tags"]["SpecificCharacterSet"] == "ISO_IR 192"  # the plugin's default
    assert mine[0]["Tags"]["ScheduledProcedureStepSequence"][0]["Modality"] == "US"
    assert mine[0]["Tags"]["StudyInstanceUID"]  # SetStudyInstanceUidIfMissing

    status, one = call(d, "GET", f"/worklists/{wid}?format=Short")
    assert status == 200 and one["ID"] == wid and one["Tags"]["0010,0020"] == "R1"
    status, full = call(d, "GET", f"/worklists/{wid}?format=Full")
    assert full["Tags"]["0010,0020"] == {"Name": "PatientID", "Type": "String", "Value": "R1"}

    tags["PatientName"] = "DOE^JANE"
    status, put = call(d, "PUT", f"/worklists/{wid}", {"Tags": tags})
    assert status == 200 and put["ID"] == wid
    poll(lambda: answered(d, "R-ACC") == ["DOE^JANE"])

    status, body = call(d, "DELETE", f"/worklists/{wid}")
    assert status == 200 and body == {}
    poll(lambda: answered(d, "R-ACC") == [])
    assert call(d, "GET", f"/worklists/{wid}")[0] == 404
    assert call(d, "DELETE", f"/worklists/{wid}")[0] == 404


def test_put_creates_with_a_chosen_id_and_force_by_default(d):
    status, body = call(d, "PUT", "/worklists/room-2-slot-9", {"Tags": {"PatientID": "R2", "AccessionNumber": "R2-ACC"}})
    assert status == 200 and body["ID"] == "room-2-slot-9"  # PUT: Force defaults to true
    assert (d.folder / "room-2-slot-9.wl").is_file()
    status, body = call(d, "PUT", "/worklists/room-2-slot-9",
                        {"Tags": {"PatientID": "R2"}, "Force": False})
    assert status == 400 and "ScheduledProcedureStepSequence" in body["Message"]


def test_curl_create_then_findscu_finds_it(d, tmp_path):
    body = json.dumps({"Tags": {"PatientName": "Dupré^Hélène", "PatientID": "R3",
                                "AccessionNumber": "R3-ACC", "ScheduledProcedureStepSequence": [SPS]}})
    r = run(["curl", "-s", "-u", f"{AUTH[0]}:{AUTH[1]}", "-X", "POST", "--data-binary", body,
             f"http://127.0.0.1:{d.http_port}/worklists/create"])
    assert r.returncode == 0 and json.loads(r.stdout)["ID"]
    out = tmp_path / "out"
    out.mkdir()
    poll(lambda: answered(d, "R3-ACC"))
    r = run(["findscu", "-W", "-X", "-od", str(out), "-aec", "ORTHANC", "-k", "AccessionNumber=R3-ACC",
             "-k", "PatientName", "-k", "(0040,0100)[0].Modality=US", "127.0.0.1", str(d.dicom_port)])
    assert r.returncode == 0
    (answer,) = out.iterdir()
    assert str(pydicom.dcmread(answer).PatientName) == "Dupré^Hélène"


@pytest.mark.parametrize(("body", "message"), [
    ({}, "'Tags' field is missing or not a JSON object"),
    ({"Tags": []}, "'Tags' field is missing or not a JSON object"),
    ({"Tags": {"PatientID": "X"}}, "'Tags' is missing a 'ScheduledProcedureStepSequence'"),
    ({"Tags": {"ScheduledProcedureStepSequence": [{"ScheduledProcedureStepStartDate": "20240105"}]}},
     "'ScheduledProcedureStepSequence' is missing a 'Modality'"),
    ({"Tags": {"ScheduledProcedureStepSequence": [{"Modality": "US"}]}},
     "'ScheduledProcedureStepSequence' is missing a 'ScheduledProcedureStepStartDate'"),
    ({"Tags": {"PatientNme": "X", "ScheduledProcedureStepSequence": [SPS]}}, "PatientNme: unknown DICOM keyword"),
    ({"Tags": {"ScheduledProcedureStepSequence": [dict(SPS, ScheduledProcedureStepStartDate="2024-01-05")]}},
     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate: Invalid value for VR DA"),
    ({"Tags": {"PatientName": "Ζαχαρίας", "SpecificCharacterSet": "ISO_IR 100",
               "ScheduledProcedureStepSequence": [SPS]}}, "cannot be written in character set ISO_IR 100"),
    ({"Tags": {"ScheduledProcedureStepSequence": {"Modality": "US"}}}, "a sequence is a list of objects"),
    ({"Tags": {"PatientID": 12, "ScheduledProcedureStepSequence": [SPS]}, "Force": "yes"},
     "'Force' must be true or false"),
])
def test_validation_errors_are_400_with_the_reason(d, body, message):
    before = sorted(p.name for p in d.folder.iterdir())
    status, error = call(d, "POST", "/worklists/create", body)
    assert status == 400 and message in error["Message"], error
    assert sorted(p.name for p in d.folder.iterdir()) == before  # nothing written


def test_force_skips_the_scheduled_step_check(d):
    status, body = call(d, "POST", "/worklists/create", {"Tags": {"PatientID": "R4"}, "Force": True})
    assert status == 200 and (d.folder / f"{body['ID']}.wl").is_file()


def test_bad_requests(d):
    assert call(d, "POST", "/worklists/create", raw=b"{not json")[0] == 400
    assert call(d, "GET", "/worklists?format=Pretty")[0] == 400
    assert call(d, "GET", "/worklists/.hidden")[0] == 400
    assert call(d, "GET", "/worklists/%2e%2e")[0] in (400, 404)
    assert call(d, "GET", "/worklists/no-such-item")[0] == 404
    assert call(d, "POST", "/worklists/create", {"Tags": {}}, auth=None)[0] == 401  # behind auth


def test_disabled_worklists_answer_404(make_daemon):
    daemon = make_daemon()
    r = requests.get(f"http://127.0.0.1:{daemon.http_port}/worklists", timeout=10)
    assert r.status_code == 404 and "disabled" in r.json()["Message"]
