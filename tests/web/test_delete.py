"""DELETE {DicomWeb.Root}/studies/{study}[/series/{series}[/instances/{instance}]]
end to end (issue 16.2): status codes, a series delete leaving the rest of its
study right in QIDO, the audit trail and its log line, the quota totals, and
crash safety under SIGKILL (whole or gone, no orphan file after restart)."""

from __future__ import annotations

import pytest
import requests
from pydicom.uid import generate_uid

from tests.support import scu_store
from tests.web import sample_studies, store, write_studies
from tests.web.manage_support import (
    AUTH, USER, assert_no_orphans, auth_config, files_on_disk, kill_during, store_study, url,
    write_study,
)


@pytest.fixture
def loaded(make_daemon, tmp_path):
    daemon = make_daemon(**auth_config())
    studies = sample_studies()
    store(daemon.dicom_port, write_studies(tmp_path / "files", studies))
    return daemon, studies


def _study_attrs(daemon, uid: str) -> dict | None:
    r = requests.get(url(daemon, "/dicom-web/studies"), auth=AUTH,
                     params={"StudyInstanceUID": uid})
    r.raise_for_status()
    found = r.json() if r.status_code == 200 else []
    return found[0] if found else None


def test_status_codes_and_a_series_delete(loaded):
    daemon, studies = loaded
    doe = studies[0]  # US x3 + SR x1
    base = url(daemon, f"/dicom-web/studies/{doe.uid}")
    us_series, sr_series = doe.series_uids
    before = len(files_on_disk(daemon))
    assert requests.delete(f"{base}/series/{us_series}").status_code == 401
    assert requests.delete(f"{base}/series/{us_series}", auth=("alice", "wrong")).status_code == 401
    assert requests.delete(url(daemon, "/dicom-web/studies/1.2.x"), auth=AUTH).status_code == 400
    assert requests.delete(f"{base}/series/{us_series}/instances/1..2", auth=AUTH).status_code == 400
    assert requests.delete(url(daemon, f"/dicom-web/studies/{generate_uid()}"),
                           auth=AUTH).status_code == 404
    # A series that exists, under the wrong study: not found, nothing deleted.
    other = url(daemon, f"/dicom-web/studies/{studies[1].uid}/series/{us_series}")
    assert requests.delete(other, auth=AUTH).status_code == 404
    assert len(files_on_disk(daemon)) == before

    r = requests.delete(f"{base}/series/{us_series}", auth=AUTH, params={"reason": "wrong probe"})
    assert r.status_code == 204 and r.content == b""
    assert requests.delete(f"{base}/series/{us_series}", auth=AUTH).status_code == 404
    assert len(files_on_disk(daemon)) == before - 3
    # The rest of the study stays, and its summaries say so.
    attrs = _study_attrs(daemon, doe.uid)
    assert attrs["00201206"]["Value"] == [1]   # NumberOfStudyRelatedSeries
    assert attrs["00201208"]["Value"] == [1]   # NumberOfStudyRelatedInstances
    assert attrs["00080061"]["Value"] == ["SR"]  # ModalitiesInStudy
    assert requests.get(f"{base}/series/{us_series}/metadata", auth=AUTH).status_code == 404

    sr = doe.sop_uids[1][0]
    assert requests.delete(f"{base}/series/{sr_series}/instances/{sr}", auth=AUTH).status_code == 204
    assert _study_attrs(daemon, doe.uid) is None  # its last instance: the study went too
    # The same patient's other study is untouched.
    assert _study_attrs(daemon, studies[3].uid)["00201208"]["Value"] == [1]

    knee = studies[4]
    assert requests.delete(url(daemon, f"/dicom-web/studies/{knee.uid}"), auth=AUTH).status_code == 204
    assert requests.get(url(daemon, f"/dicom-web/studies/{knee.uid}/metadata"),
                        auth=AUTH).status_code == 404
    assert requests.delete(url(daemon, f"/dicom-web/studies/{knee.uid}"), auth=AUTH).status_code == 404
    assert_no_orphans(daemon)
    assert daemon.rows("SELECT count(*) FROM patients WHERE patient_id = ?", (knee.patient_id,)) == [(0,)]

    trail = requests.get(url(daemon, "/audit"), auth=AUTH).json()
    assert [(e["Action"], e["Level"], e["Instances"], e["User"]) for e in trail] == [
        ("delete", "Study", 3, USER), ("delete", "Instance", 1, USER), ("delete", "Series", 3, USER)]
    assert trail[2]["UIDs"] == {"StudyInstanceUID": doe.uid, "SeriesInstanceUID": us_series}
    assert trail[2]["Reason"] == "wrong probe" and trail[2]["Time"].endswith("Z")
    assert requests.get(url(daemon, "/audit"), auth=AUTH, params={"limit": 1}).json() == trail[:1]
    assert requests.get(url(daemon, "/audit")).status_code == 401
    log = daemon.log()
    assert f"{USER}: audit: delete series StudyInstanceUID={doe.uid}" in log
    assert doe.patient_name not in log and doe.patient_id not in log


def test_quota_counts_follow_a_delete(make_daemon, tmp_path):
    """MaximumPatientCount 1, Reject: a second patient is refused until the
    first is deleted; then it is accepted (the totals followed the delete)."""
    daemon = make_daemon(MaximumPatientCount=1, MaximumStorageMode="Reject")
    first, _ = store_study(daemon, tmp_path / "a", 2, pid="P1")
    _, second = write_study(tmp_path / "b", 1, pid="P2")
    assert scu_store(daemon.dicom_port, second) == [0xA700]
    assert requests.delete(url(daemon, f"/dicom-web/studies/{first}")).status_code == 204
    assert scu_store(daemon.dicom_port, second) == [0]
    (entry,) = requests.get(url(daemon, "/audit")).json()
    assert entry["User"] == "anonymous"  # authentication off


def test_sigkill_during_a_delete_leaves_all_or_nothing(make_daemon, tmp_path):
    """Killed early in and during a 100-instance delete (about 0.05-0.3 s
    here): after a restart the study is whole or gone, and the files
    on disk are exactly those indexed."""
    daemon = make_daemon()
    for n, delay in enumerate((0.01, 0.08)):
        study, _ = store_study(daemon, tmp_path / str(n), 100, series=2)
        assert len(files_on_disk(daemon)) == 100
        kill_during(daemon, lambda: requests.delete(url(daemon, f"/dicom-web/studies/{study}"),
                                                    timeout=30), delay)
        daemon.start()
        indexed = daemon.rows("SELECT count(*) FROM instances")[0][0]
        assert indexed in (0, 100), (delay, indexed)
        assert_no_orphans(daemon)
        # Whatever the kill left, the delete can be done (again): then all is gone.
        status = requests.delete(url(daemon, f"/dicom-web/studies/{study}")).status_code
        assert status == (204 if indexed else 404)
        assert files_on_disk(daemon) == set()
        assert daemon.rows("SELECT count(*) FROM studies") == [(0,)]
