"""The study ZIP (issue 16.1): ``GET /dicom-web/studies/{uid}`` with
``Accept: application/zip`` (or ``?accept=``) streams every stored file of
the study, byte for byte, in a ZIP any tool reads."""

from __future__ import annotations

import io
import subprocess
import zipfile

import requests
from pydicom.uid import generate_uid

from tests.web import sample_studies, store, write_studies
from tests.web.manage_support import AUTH, auth_config, url


def test_zip_of_a_study_holds_the_stored_files(make_daemon, tmp_path):
    daemon = make_daemon(**auth_config())
    studies = sample_studies()
    store(daemon.dicom_port, write_studies(tmp_path / "files", studies))
    doe = studies[0]
    study_url = url(daemon, f"/dicom-web/studies/{doe.uid}")
    assert requests.get(study_url, headers={"Accept": "application/zip"}).status_code == 401
    r = requests.get(study_url, headers={"Accept": "application/zip"}, auth=AUTH, stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/zip"
    assert r.headers["Content-Disposition"] == f'attachment; filename="{doe.uid}.zip"'
    body = r.raw.read()
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert z.testzip() is None
        names = z.namelist()
        expected = {f"{series}/{sop}.dcm" for series, sops in zip(doe.series_uids, doe.sop_uids)
                    for sop in sops}
        assert set(names) == expected and len(names) == doe.instance_count
        for name in names:
            sop = name.split("/")[1].removesuffix(".dcm")
            assert z.read(name) == daemon.stored_path(sop).read_bytes()
    # Info-ZIP's unzip (what a clinic's Linux desktop has) reads it too.
    archive = tmp_path / "study.zip"
    archive.write_bytes(body)
    done = subprocess.run(["unzip", "-tq", str(archive)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    # A download link: ?accept= (PS3.18 8.3.3.1), one series.
    series = doe.series_uids[0]
    r = requests.get(f"{study_url}/series/{series}", params={"accept": "application/zip"},
                     auth=AUTH)
    assert r.status_code == 200 and f'filename="{series}.zip"' in r.headers["Content-Disposition"]
    assert len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 3
    # Without application/zip first, the same URL is still WADO-RS multipart.
    r = requests.get(study_url, headers={"Accept": "multipart/related; type=application/dicom"},
                     auth=AUTH)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("multipart/related")
    r = requests.get(url(daemon, f"/dicom-web/studies/{generate_uid()}"),
                     headers={"Accept": "application/zip"}, auth=AUTH)
    assert r.status_code == 404
