"""``pacs-appliance delete`` and ``pacs-appliance modify`` (issue 16.2, 16.3):
the real command against a running daemon (through its loopback secret,
audited as "cli") and with no daemon (on the archive, under the folder lock);
exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys

import requests
from tests.support import REPO
from tests.web.manage_support import (
    AUTH, assert_no_orphans, auth_config, files_on_disk, store_study, url,
)


def cli(daemon, *args: str) -> subprocess.CompletedProcess:
    """The command line on the daemon's config."""
    return subprocess.run([sys.executable, "-m", "appliance", *args, "--config",
                           str(daemon.config_path)], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_delete_and_modify_with_the_daemon_running(make_daemon, tmp_path):
    daemon = make_daemon(**auth_config())
    token = daemon.runtime_file.parent / "pacs-appliance.cli-token"
    assert token.stat().st_mode & 0o777 == 0o600
    study, paths = store_study(daemon, tmp_path / "a", 4, series=2)
    series = daemon.rows("SELECT series_instance_uid FROM series ORDER BY id")[0][0]

    assert cli(daemon, "delete", "1.2.x").returncode == 2
    done = cli(daemon, "delete", study, series, "--reason", "wrong side")
    assert done.returncode == 0, done.stderr
    assert f"deleted series {series}" in done.stdout
    done = cli(daemon, "delete", study, series)  # a second delete: unknown
    assert done.returncode == 1 and "no such series" in done.stderr
    assert len(files_on_disk(daemon)) == 2

    assert cli(daemon, "modify", study, "--sex", "X").returncode == 2
    done = cli(daemon, "modify", study, "--patient-name", "Right^Patient", "--patient-id", "R1",
               "--birth-date", "19910203", "--reason", "DCM 113038")
    assert done.returncode == 0, done.stderr
    new = daemon.rows("SELECT study_instance_uid FROM studies")[0][0]
    assert new != study and new in done.stdout
    assert daemon.rows("SELECT patient_id, patient_name, patient_birth_date FROM patients") == [
        ("R1", "Right^Patient", "19910203")]

    trail = requests.get(url(daemon, "/audit"), auth=AUTH).json()
    assert [(e["User"], e["Action"], e["Level"], e["Reason"]) for e in trail] == [
        ("cli", "modify", "Study", "DCM 113038"), ("cli", "delete", "Series", "wrong side")]
    # The secret is the CLI's alone: a wrong one is refused like no credentials.
    r = requests.delete(url(daemon, f"/dicom-web/studies/{new}"),
                        headers={"Authorization": "Bearer not-the-secret"})
    assert r.status_code == 401
    daemon.stop()
    assert not token.exists()


def test_delete_and_modify_with_no_daemon(make_daemon, tmp_path):
    daemon = make_daemon()
    study, _ = store_study(daemon, tmp_path / "a", 3)
    daemon.stop()
    done = cli(daemon, "modify", study, "--accession", "ACC-9", "--keep-uids")
    assert done.returncode == 0, done.stderr
    assert daemon.rows("SELECT study_instance_uid, accession_number FROM studies") == [
        (study, "ACC-9")]
    done = cli(daemon, "delete", study)
    assert done.returncode == 0, done.stderr
    assert "3 instance(s)" in done.stdout
    assert files_on_disk(daemon) == set()
    assert_no_orphans(daemon)
    rows = daemon.rows("SELECT user, action, uids FROM audit ORDER BY id")
    assert [(u, a) for u, a, _ in rows] == [("cli", "modify"), ("cli", "delete")]
    assert json.loads(rows[1][2]) == {"StudyInstanceUID": study}
