"""``pacs-appliance worklist {add,list,remove,import}`` as a real subprocess, and the daemon
answering what it wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pydicom
import pytest

from tests.support import base_config, run
from tests.worklist.helpers import find, mwl_query, poll, start_wl_daemon


def cli(*args: str, cwd: Path | None = None):
    return run([sys.executable, "-m", "appliance", "worklist", *args], cwd=cwd)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(base_config(
        tmp_path, Worklists={"Enable": True, "Database": str(tmp_path / "wl")})))
    return path


def test_add_list_remove(config, tmp_path):
    out = cli("add", "--config", str(config), "--patient-name", "Ζαχαρίας^Γιάννης", "--patient-id", "P1",
              "--birth-date", "19800101", "--sex", "f", "--accession", "ACC1", "--procedure", "Abdomen",
              "--procedure-id", "RP1", "--date", "20240105", "--time", "0930", "--station-aet", "US1",
              "--physician", "WHO^DR", "--id", "slot-1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "slot-1"
    ds = pydicom.dcmread(tmp_path / "wl" / "slot-1.wl")
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Ζαχαρίας^Γιάννης"
    assert ds.PatientSex == "F" and ds.RequestedProcedureDescription == "Abdomen"
    step = ds.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate,
            step.ScheduledProcedureStepStartTime) == ("US", "US1", "20240105", "0930")
    assert "StudyInstanceUID" in ds
    # no --id, no --date: a UUID and today
    out = cli("add", "--config", str(config), "--patient-id", "P2", "--accession", "ACC2")
    assert out.returncode == 0 and len(out.stdout.strip()) == 36

    listed = cli("list", "--config", str(config))
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "DATE", "TIME", "MOD"]
    assert any(line.startswith("slot-1 ") and "Ζαχαρίας^Γιάννης" in line and "ACC1" in line
               for line in lines)
    as_json = json.loads(cli("list", "--config", str(config), "--json").stdout)
    assert {w["Tags"]["PatientID"] for w in as_json} == {"P1", "P2"}

    assert cli("remove", "--config", str(config), "slot-1").returncode == 0
    assert not (tmp_path / "wl" / "slot-1.wl").exists()
    missing = cli("remove", "--config", str(config), "slot-1")
    assert missing.returncode == 1 and "no such worklist item" in missing.stderr


def test_add_refuses_bad_values(config, tmp_path):
    out = cli("add", "--config", str(config), "--patient-id", "P1", "--date", "05/01/2024")
    assert out.returncode == 1
    assert "ScheduledProcedureStepStartDate: Invalid value for VR DA" in out.stderr
    out = cli("add", "--config", str(config), "--patient-id", "P1", "--id", "../escape")
    assert out.returncode == 1 and "not a valid worklist ID" in out.stderr
    assert not (tmp_path / "wl").exists() or not list((tmp_path / "wl").iterdir())


def test_no_worklist_folder_configured(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(base_config(tmp_path)))
    out = cli("list", "--config", str(path))
    assert out.returncode == 2 and "Worklists.Database is not set" in out.stderr


CSV = """PatientName,PatientID,PatientBirthDate,PatientSex,AccessionNumber,RequestedProcedureDescription,\
ScheduledProcedureStepStartDate,ScheduledProcedureStepStartTime,Modality,ScheduledStationAETitle,ID
Dupré^Hélène,C1,19700101,F,CACC1,Thyroid,20240105,0900,US,US1,row-1
Yamada^Tarou,C2,,M,CACC2,Abdomen,20240105,0930,US,US2,row-2

"""


def test_import_csv_all_or_nothing(config, tmp_path):
    good = tmp_path / "day.csv"
    good.write_text(CSV, encoding="utf-8")
    out = cli("import", "--config", str(config), str(good))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["row-1", "row-2"] and "2 worklist item(s) written" in out.stderr
    assert str(pydicom.dcmread(tmp_path / "wl" / "row-1.wl").PatientName) == "Dupré^Hélène"
    assert cli("import", "--config", str(config), str(good)).returncode == 0  # same IDs: replaced
    assert len(list((tmp_path / "wl").iterdir())) == 2

    bad = tmp_path / "bad.csv"
    bad.write_text(CSV.replace("row-2", "row-3").replace("20240105,0930", "2024-01-05,0930"))
    out = cli("import", "--config", str(config), str(bad))
    assert out.returncode == 1
    assert "line 3: ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate" in out.stderr
    assert "nothing written" in out.stderr
    assert not (tmp_path / "wl" / "row-3.wl").exists()
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("Name,PatientID\nx,y\n")
    out = cli("import", "--config", str(config), str(unknown))
    assert out.returncode == 1 and "column 'Name': not a DICOM keyword" in out.stderr


def test_daemon_answers_what_the_cli_writes(tmp_path):
    d = start_wl_daemon(tmp_path / "d")
    try:
        out = cli("add", "--config", str(d.config_path), "--patient-name", "山田^太郎",
                  "--patient-id", "CLI1", "--accession", "CLI-ACC", "--station-aet", "US1")
        assert out.returncode == 0, out.stderr
        answers = poll(lambda: find(d.dicom_port, mwl_query(AccessionNumber="CLI-ACC", PatientName="",
                                                             sps_Modality="US"))[1])
        assert str(answers[0].PatientName) == "山田^太郎"
        assert cli("remove", "--config", str(d.config_path), out.stdout.strip()).returncode == 0
        poll(lambda: not find(d.dicom_port, mwl_query(AccessionNumber="CLI-ACC"))[1])
    finally:
        d.stop()
