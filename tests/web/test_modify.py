"""POST /studies/{StudyInstanceUID}/modify end to end (issue 16.3): status
codes, the corrected patient seen through QIDO-RS and WADO-RS (new UIDs, or
the same with KeepUIDs), the audit trail, and crash safety under SIGKILL
(exactly one of the old and the new study visible, no orphan file)."""

from __future__ import annotations

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.web.manage_support import (
    AUTH, USER, assert_no_orphans, auth_config, files_on_disk, kill_during, store_study, url,
)

FIX = {"PatientName": "Right^Patient", "PatientID": "RIGHT1", "PatientBirthDate": "19910203",
       "PatientSex": "M", "AccessionNumber": "ACC-R"}


def _modify(daemon, study: str, body, **kw) -> requests.Response:
    return requests.post(url(daemon, f"/studies/{study}/modify"), json=body, **kw)


def _qido(daemon, **params) -> list[dict]:
    r = requests.get(url(daemon, "/dicom-web/studies"), params=params, auth=AUTH)
    assert r.status_code in (200, 204)
    return r.json() if r.status_code == 200 else []


def test_status_codes(make_daemon, tmp_path):
    daemon = make_daemon(**auth_config())
    study, _ = store_study(daemon, tmp_path / "a", 2)
    assert _modify(daemon, study, {"Replace": FIX}).status_code == 401
    for bad in ({}, {"Replace": {}}, {"Replace": {"PatientName": 3}},
                {"Replace": {"PatientBirthDate": "1991-02-03"}}, {"Replace": {"PatientSex": "X"}},
                {"Replace": {"StudyDescription": "x"}}, {"Replace": FIX, "Remove": ["PatientName"]},
                {"Replace": FIX, "KeepUIDs": "yes"}, {"Replace": FIX, "Reason": 113038},
                [FIX], {"Replace": {"AccessionNumber": "A" * 17}}):
        r = _modify(daemon, study, bad, auth=AUTH)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["HttpStatus"] == 400
    r = requests.post(url(daemon, f"/studies/{study}/modify"), data=b"{not json", auth=AUTH)
    assert r.status_code == 400
    assert _modify(daemon, "1.2.x", {"Replace": FIX}, auth=AUTH).status_code == 400
    assert _modify(daemon, generate_uid(), {"Replace": FIX}, auth=AUTH).status_code == 404
    # Nothing was changed by any of these.
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in _qido(daemon)] == ["Wrong^Patient"]
    assert requests.get(url(daemon, "/audit"), auth=AUTH).json() == []


@pytest.mark.parametrize("keep_uids", [False, True])
def test_fix_patient(make_daemon, tmp_path, keep_uids):
    daemon = make_daemon(**auth_config())
    study, paths = store_study(daemon, tmp_path / "a", 6, series=2)
    other, _ = store_study(daemon, tmp_path / "b", 1, name="Other^One", pid="OTHER")
    old_sops = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    r = _modify(daemon, study, {"Replace": FIX, "Reason": "DCM 113038", "KeepUIDs": keep_uids},
                auth=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    new = body["StudyInstanceUID"]
    assert body["Instances"] == 6 and (new == study) is keep_uids

    (found,) = _qido(daemon, PatientName="right*")
    assert found["0020000D"]["Value"] == [new]
    assert found["00100020"]["Value"] == ["RIGHT1"]
    assert found["00080050"]["Value"] == ["ACC-R"]
    assert found["00201206"]["Value"] == [2] and found["00201208"]["Value"] == [6]
    assert _qido(daemon, PatientID="WRONG1") == []
    if not keep_uids:
        assert requests.get(url(daemon, f"/dicom-web/studies/{study}/metadata"),
                            auth=AUTH).status_code == 404
    metadata = requests.get(url(daemon, f"/dicom-web/studies/{new}/metadata"), auth=AUTH).json()
    assert len(metadata) == 6
    assert {m["00100010"]["Value"][0]["Alphabetic"] for m in metadata} == {"Right^Patient"}
    assert {m["00100030"]["Value"][0] for m in metadata} == {"19910203"}
    assert ({m["00080018"]["Value"][0] for m in metadata} == old_sops) is keep_uids
    # The files themselves carry the fix (what a viewer or a PACS receiving them reads).
    sop = metadata[0]["00080018"]["Value"][0]
    stored = pydicom.dcmread(daemon.stored_path(sop))
    assert (stored.PatientName, stored.PatientID, stored.PatientSex) == ("Right^Patient", "RIGHT1", "M")
    assert stored.file_meta.MediaStorageSOPInstanceUID == sop
    assert len(files_on_disk(daemon)) == 7
    assert_no_orphans(daemon)
    assert len(_qido(daemon, StudyInstanceUID=other)) == 1  # another study: untouched

    (entry,) = requests.get(url(daemon, "/audit"), auth=AUTH).json()
    assert (entry["Action"], entry["Level"], entry["User"], entry["Instances"], entry["Reason"]) == (
        "modify", "Study", USER, 6, "DCM 113038")
    assert entry["UIDs"] == {"StudyInstanceUID": study, "NewStudyInstanceUID": new}
    log = daemon.log()
    assert f"{USER}: audit: modify study {study} -> {new}" in log
    assert "Right^Patient" not in log and "RIGHT1" not in log and "Wrong^Patient" not in log


def test_sigkill_during_a_fix_leaves_exactly_one_study(make_daemon, tmp_path):
    """Killed at two moments of a 100-instance fix (about a second here):
    after a restart exactly one study is there, whole, under one patient, and
    the files on disk are exactly those indexed; then the fix goes through."""
    daemon = make_daemon()
    study, _ = store_study(daemon, tmp_path / "a", 100, series=3)

    def one_study() -> tuple[str, str]:
        rows = daemon.rows("SELECT st.study_instance_uid, st.number_of_instances, p.patient_id "
                           "FROM studies st JOIN patients p ON p.id = st.patient_pk")
        assert len(rows) == 1, rows
        uid, count, patient = rows[0]
        assert count == 100 and daemon.rows("SELECT count(*) FROM instances") == [(100,)]
        assert (uid == study) == (patient == "WRONG1")
        assert_no_orphans(daemon)
        return uid, patient

    for delay in (0.3, 0.9):
        kill_during(daemon, lambda: _modify(daemon, study, {"Replace": FIX}, timeout=60), delay)
        daemon.start()
        uid, patient = one_study()
        if patient == "RIGHT1":
            return  # the fix was through before the kill: nothing left to try
    assert _modify(daemon, study, {"Replace": FIX}).status_code == 200
    assert one_study()[1] == "RIGHT1"
