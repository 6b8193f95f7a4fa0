"""``pacs-appliance import PATH...`` (issue 14.4) and the ``POST /instances`` it
uses while the daemon runs: nested folders, a DICOMDIR, non-DICOM and cut
files, duplicates, with the daemon running and stopped, and with HTTP
authentication."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import requests
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from appliance.passwords import hash_password
from tests.support import Daemon, base_config, new_dataset

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
EXIT_SKIPPED = 4


def _image(path: Path, study: str, series: str, patient: str = "P1") -> str:
    """A small, whole US image written as a Part-10 file; its SOP Instance UID."""
    ds = new_dataset(US_IMAGE)
    ds.PatientName, ds.PatientID = "DOE^JANE", patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "US"
    # What pydicom's FileSet needs for the DICOMDIR's STUDY and SERIES records.
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240105", "093000", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(64))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


def _tree(root: Path) -> dict[str, Path]:
    """Two studies in nested folders, a non-DICOM file, a cut file and a copy of
    one image elsewhere (a duplicate). Returns {sop uid: path} of the good ones."""
    study1, study2 = generate_uid(), generate_uid()
    series1, series2 = generate_uid(), generate_uid()
    good = {}
    for i in range(3):
        p = root / "a" / "b" / "c" / f"img{i}.dcm"
        good[_image(p, study1, series1)] = p
    for i in range(2):
        p = root / "x" / f"IMG{i}"
        good[_image(p, study2, series2, patient="P2")] = p
    (root / "notes.txt").write_text("not an image\n")
    whole = next(iter(good.values())).read_bytes()
    (root / "x" / "cut.dcm").write_bytes(whole[: len(whole) - 40])
    shutil.copy(next(iter(good.values())), root / "copy-of-img0.dcm")
    return good


def test_import_follows_quotas_and_overwrite_instances(tmp_path):
    """The one ingest path: MaximumStorageSize (Reject) refuses what does not fit, and
    with OverwriteInstances a second import replaces rather than counts duplicates."""
    study, series = generate_uid(), generate_uid()
    for i in range(4):
        p = tmp_path / "src" / f"{i}.dcm"
        _image(p, study, series)
        ds = pydicom.dcmread(p)
        ds.Rows = ds.Columns = 640  # 410 kB each: two fit in MaximumStorageSize 1 MB
        ds.PixelData = bytes(640 * 640)
        ds.save_as(p, enforce_file_format=True)
    quota = tmp_path / "quota.json"
    quota.write_text(json.dumps(base_config(
        tmp_path / "quota", MaximumStorageSize=1, MaximumStorageMode="Reject")))
    code, summary, err = _import(quota, tmp_path / "src")
    assert code == EXIT_SKIPPED, err
    assert summary["stored"] == 2 and len(summary["skipped"]) == 2
    assert all("MaximumStorageSize" in s["reason"] for s in summary["skipped"])
    overwrite = tmp_path / "overwrite.json"
    overwrite.write_text(json.dumps(base_config(tmp_path / "overwrite", OverwriteInstances=True)))
    for _ in range(2):
        code, summary, err = _import(overwrite, tmp_path / "src")
        assert code == 0, err
        assert summary["stored"] == 4 and summary["duplicates"] == 0  # the second: replaced


def _import(config: Path, *paths, env: dict | None = None, json_out: bool = True):
    """Run the CLI; (exit code, summary JSON or text, stderr)."""
    cmd = [sys.executable, "-m", "appliance", "import", "--config", str(config), *map(str, paths)]
    if json_out:
        cmd.append("--json")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL)
    out = json.loads(done.stdout) if json_out and done.stdout.strip() else done.stdout
    return done.returncode, out, done.stderr


def _stored_uids(d: Daemon) -> set[str]:
    return {r[0] for r in d.rows("SELECT sop_instance_uid FROM instances")}


def _skipped(summary: dict) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}


def _check_tree_summary(summary: dict, good: dict) -> None:
    assert summary["files"] == len(good) + 3       # + notes.txt, cut.dcm, the copy
    assert summary["stored"] == len(good)
    assert summary["duplicates"] == 1               # the copy under another name
    skipped = _skipped(summary)
    assert set(skipped) == {"notes.txt", "cut.dcm"}
    assert "not a DICOM" in skipped["notes.txt"]
    assert "truncated" in skipped["cut.dcm"] or "cut" in skipped["cut.dcm"]


def test_import_with_the_daemon_stopped(tmp_path):
    d = Daemon(tmp_path / "d", base_config(tmp_path / "d"))
    d.start()
    d.stop()
    good = _tree(tmp_path / "src")
    code, summary, err = _import(d.config_path, tmp_path / "src")
    assert code == EXIT_SKIPPED, err
    assert "daemon stopped" in summary["where"]
    _check_tree_summary(summary, good)
    # Stored byte for byte, through the store contract (rows and files).
    d.start()
    assert _stored_uids(d) == set(good)
    for uid, path in good.items():
        assert d.stored_path(uid).read_bytes() == path.read_bytes()
    d.stop()
    # Again: everything is a duplicate now, and nothing is stored twice.
    code, summary, _ = _import(d.config_path, tmp_path / "src" / "a")
    assert code == 0 and summary["duplicates"] == 3 and summary["stored"] == 0
    assert len(d.rows("SELECT 1 FROM instances")) == len(good)


def test_import_into_the_running_daemon(make_daemon, tmp_path):
    d = make_daemon()
    good = _tree(tmp_path / "src")
    code, summary, err = _import(d.config_path, tmp_path / "src")
    assert code == EXIT_SKIPPED, err
    assert f"HTTP port {d.http_port}" in summary["where"]
    _check_tree_summary(summary, good)
    assert _stored_uids(d) == set(good)
    for uid, path in good.items():
        assert d.stored_path(uid).read_bytes() == path.read_bytes()
    # QIDO sees them at once (the daemon stored them itself).
    studies = requests.get(f"http://127.0.0.1:{d.http_port}/dicom-web/studies", timeout=10).json()
    assert len(studies) == 2
    # The daemon shows the run (status, status page, the UI's System page).
    (run,) = requests.get(f"http://127.0.0.1:{d.http_port}/status", timeout=10).json()["imports"]
    assert run["total"] == summary["files"] and run["stored"] == len(good)
    assert run["duplicates"] == summary["duplicates"]
    assert run["done"] == run["stored"] + run["duplicates"] + run["refused"]
    assert run["refused"] >= 1  # the cut file (the non-DICOM one is never sent)
    # The human summary: counts and the reasons of the skipped files.
    code, text, _ = _import(d.config_path, tmp_path / "src", json_out=False)
    assert code == EXIT_SKIPPED
    assert "0 instance(s) stored, 6 duplicate(s)" in text
    assert "notes.txt" in text and "skipped (1): not a DICOM Part-10 file" in text
    runs = requests.get(f"http://127.0.0.1:{d.http_port}/status", timeout=10).json()["imports"]
    assert sorted(r["duplicates"] for r in runs) == sorted([summary["duplicates"], 6])
    page = requests.get(f"http://127.0.0.1:{d.http_port}/status.html", timeout=10).text
    assert "import: " in page and "6 already here" in page


def test_import_a_dicomdir(make_daemon, tmp_path):
    study = generate_uid()
    series = generate_uid()
    fs = FileSet()
    uids = []
    for i in range(3):
        p = tmp_path / "made" / f"{i}.dcm"
        uids.append(_image(p, study, series))
        fs.add(pydicom.dcmread(p))
    fs.write(tmp_path / "cd")
    dicomdir = tmp_path / "cd" / "DICOMDIR"
    assert dicomdir.exists()
    # A file the DICOMDIR lists that the media lost: reported, the rest imported.
    listed = sorted(p for p in (tmp_path / "cd").rglob("*") if p.is_file() and p.name != "DICOMDIR")
    listed[-1].unlink()
    d = make_daemon()
    code, summary, err = _import(d.config_path, dicomdir)
    assert code == EXIT_SKIPPED, err
    assert summary["dicomdirs"] == 1 and summary["stored"] == 2
    assert [s["reason"] for s in summary["skipped"]] == ["listed in the DICOMDIR but missing"]
    assert len(_stored_uids(d) & set(uids)) == 2


def test_dicomdir_file_ids_match_without_case(tmp_path):
    """A CD mounted with lower-case names still resolves the DICOMDIR's upper-case IDs."""
    from appliance.ops.importer import collect

    fs = FileSet()
    p = tmp_path / "one.dcm"
    _image(p, generate_uid(), generate_uid())
    fs.add(pydicom.dcmread(p))
    fs.write(tmp_path / "cd")
    for path in sorted((tmp_path / "cd").rglob("*"), key=lambda q: -len(q.parts)):
        if path.name != "DICOMDIR":
            path.rename(path.with_name(path.name.lower()))
    found = collect([tmp_path / "cd" / "DICOMDIR"])
    assert found.problems == [] and len(found.files) == 1
    assert found.files[0].name == "im000000"


def test_import_with_http_authentication(make_daemon, tmp_path):
    d = make_daemon(AuthenticationEnabled=True,
                    RegisteredUsers={"admin": hash_password("s3cret", 10000)})
    good = _tree(tmp_path / "src")
    src = tmp_path / "src" / "a"
    # A hashed password cannot be sent: the command says how to give it.
    code, _, err = _import(d.config_path, src)
    assert code == 1 and "PACS_APPLIANCE_PASSWORD" in err
    code, _, err = _import(d.config_path, src, env={"PACS_APPLIANCE_PASSWORD": "wrong"})
    assert code == 1 and "401" in err
    code, summary, err = _import(d.config_path, src, env={"PACS_APPLIANCE_PASSWORD": "s3cret"})
    assert code == 0, err
    assert summary["stored"] == 3
    assert _stored_uids(d) == {u for u, p in good.items() if "a" in p.parts}


def test_post_instances(make_daemon, tmp_path):
    """Orthanc's POST /instances: one file per request, its result as Orthanc names it."""
    d = make_daemon()
    study, series = generate_uid(), generate_uid()
    uid = _image(tmp_path / "i.dcm", study, series)
    url = f"http://127.0.0.1:{d.http_port}/instances"
    body = (tmp_path / "i.dcm").read_bytes()
    r = requests.post(url, data=body, timeout=10)
    assert r.status_code == 200
    assert r.json()["Status"] == "Success" and r.json()["ParentStudy"] == study
    assert r.json()["ID"] == uid
    r = requests.post(url, data=body, timeout=10)
    assert r.status_code == 200 and r.json()["Status"] == "AlreadyStored"
    r = requests.post(url, data=b"hello", timeout=10)
    assert r.status_code == 400 and r.json()["Status"] == "Invalid"
    assert len(d.rows("SELECT 1 FROM instances")) == 1
    outcomes = d.rows("SELECT source FROM instances")
    assert outcomes == [("REST",)]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only():
    from appliance.ops.importer import Progress

    tty = _Terminal()
    bar = Progress(10, tty)
    bar.update(5, 5_000_000)
    bar.update(6, 6_000_000)  # within 0.2 s of the last: not redrawn
    bar.update(10, 10_000_000, final=True)
    text = tty.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "] 5/10 files, 5.0 MB" in text and "] 10/10 files" in text
    assert "[" + "#" * 15 + "." * 15 + "]" in text
    piped = io.StringIO()
    Progress(10, piped).update(10, 1, final=True)
    assert piped.getvalue() == ""
