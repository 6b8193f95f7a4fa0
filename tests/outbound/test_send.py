"""Sending on demand (issue 13): ``pacs-appliance send`` and the Orthanc-compatible
REST routes, with the task's progress at GET /jobs/{id}."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import apsw
import requests

from tests.outbound.conftest import cli, make_instances
from tests.support import scu_store, wait_for


def test_send_by_cli_and_by_rest(make_daemon, storescp, tmp_path):
    scp = storescp()
    b = make_daemon("b")
    d = make_daemon("a", DicomModalities={"ARCH": [scp.aet, "127.0.0.1", scp.port]},
                    DicomWeb={"Servers": {"B": {"Url": f"http://127.0.0.1:{b.http_port}/dicom-web"}}})
    x = make_instances(tmp_path / "x", 3, study_uid="1.2.826.0.1.3680043.2.1143.13.2")
    y = make_instances(tmp_path / "y", 2, series_uid="1.2.826.0.1.3680043.2.1143.13.3")
    assert scu_store(d.dicom_port, x + y) == [0] * 5
    http = f"http://127.0.0.1:{d.http_port}"
    assert requests.get(f"{http}/modalities", timeout=10).json() == ["ARCH"]
    assert requests.get(f"{http}/dicom-web/servers", timeout=10).json() == ["B"]

    # CLI: a study UID.
    done = cli(d, "send", "--to", "ARCH", "1.2.826.0.1.3680043.2.1143.13.2")
    assert done.returncode == 0 and "3 instance(s) queued for ARCH" in done.stdout, done.stderr
    wait_for(lambda: scp.received() == {p.stem for p in x}, 20, "the study at storescp")
    assert cli(d, "send", "--to", "NOPE", "1.2.3").returncode == 2
    assert cli(d, "send", "--to", "ARCH", "1.2.3.4.5.6").returncode == 1

    # REST: a series UID to the modality, an instance UID over STOW-RS.
    r = requests.post(f"{http}/modalities/ARCH/store", timeout=10,
                      json={"Resources": ["1.2.826.0.1.3680043.2.1143.13.3"]})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["Path"] == f"/jobs/{job['ID']}"

    def finished(path):
        state = requests.get(f"{http}{path}", timeout=10).json()
        return state if state["State"] in ("Success", "Failure") else None
    state = wait_for(lambda: finished(job["Path"]), 20, "the C-STORE job")
    assert state["State"] == "Success" and state["Progress"] == 100
    assert (state["Destination"], state["Instances"], state["Sent"], state["Failed"]) == ("ARCH", 2, 2, 0)
    assert scp.received() == {p.stem for p in x + y}

    r = requests.post(f"{http}/dicom-web/servers/B/stow", timeout=10, json={"Resources": [x[0].stem]})
    assert r.status_code == 200, r.text
    state = wait_for(lambda: finished(r.json()["Path"]), 20, "the STOW-RS job")
    assert state["State"] == "Success" and state["Sent"] == 1
    assert b.rows("SELECT sop_instance_uid FROM instances") == [(x[0].stem,)]

    assert requests.post(f"{http}/modalities/ARCH/store", timeout=10,
                         json={"Resources": ["1.2.3.4.5.6"]}).status_code == 404
    assert requests.post(f"{http}/modalities/NOPE/store", timeout=10,
                         json={"Resources": [x[0].stem]}).status_code == 404
    assert requests.post(f"{http}/modalities/ARCH/store", timeout=10, json={}).status_code == 400
    assert requests.get(f"{http}/jobs/999999", timeout=10).status_code == 404
    # Orthanc's job list: the ids, or each job with ?expand; its timestamps' form (UTC).
    ids = requests.get(f"{http}/jobs", timeout=10).json()
    assert job["ID"] in ids and r.json()["ID"] in ids and len(ids) == 3  # the CLI's task too
    listed = {j["ID"]: j for j in requests.get(f"{http}/jobs?expand", timeout=10).json()}
    assert listed.keys() == set(ids) and listed[job["ID"]]["State"] == "Success"
    created = datetime.strptime(listed[job["ID"]]["CreationTime"], "%Y%m%dT%H%M%S.%f")
    assert abs(created.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_deleted_instance_is_dropped_from_the_queue(make_daemon, storescp, tmp_path):
    scp = storescp(start=False)
    d = make_daemon(DicomModalities={"ARCH": [scp.aet, "127.0.0.1", scp.port]})
    files = make_instances(tmp_path / "a", 2)
    assert scu_store(d.dicom_port, files) == [0, 0]
    done = cli(d, "send", "--to", "ARCH", *[p.stem for p in files])
    assert done.returncode == 0, done.stderr
    task = done.stdout.split()[1].rstrip(":")
    wait_for(lambda: d.rows("SELECT min(attempts) FROM send_items")[0][0] >= 1, 20, "an attempt")
    # A delete removes the index row (the instance's own row is enough here), the daemon
    # running: SQLite lets this second writer in.
    conn = apsw.Connection(str(d.index_file))
    conn.setbusytimeout(10_000)
    conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (files[0].stem,))
    conn.close()
    scp.start()
    wait_for(lambda: scp.received() == {files[1].stem}, 20, "the remaining instance")
    http = f"http://127.0.0.1:{d.http_port}"
    state = wait_for(lambda: (s := requests.get(f"{http}/jobs/{task}", timeout=10).json())["State"]
                     in ("Success", "Failure") and s, 20, "the job")
    assert (state["State"], state["Sent"], state["Dropped"]) == ("Failure", 1, 1)
    assert f"instance {files[0].stem} was deleted before it was sent" in d.log()
    summary = cli(d, "queue", "list")
    assert "1 sent, 1 dropped" in summary.stdout, summary.stdout


def test_a_synchronous_send_answers_once_delivered_or_failed(make_daemon, storescp, tmp_path):
    """Orthanc's ``"Synchronous": true``: the answer comes when every instance is at
    the destination; with the destination down, a 502 as soon as the first attempt
    failed, and the task stays queued until it is delivered."""
    scp = storescp(start=False)
    d = make_daemon(DicomModalities={"ARCH": [scp.aet, "127.0.0.1", scp.port]})
    files = make_instances(tmp_path / "a", 4, study_uid="1.2.826.0.1.3680043.2.1143.13.9")
    assert scu_store(d.dicom_port, files) == [0] * 4
    http = f"http://127.0.0.1:{d.http_port}"

    r = requests.post(f"{http}/modalities/ARCH/store", timeout=30,
                      json={"Resources": ["1.2.826.0.1.3680043.2.1143.13.9"], "Synchronous": True})
    assert r.status_code == 502, r.text
    failed = r.json()
    assert failed["State"] == "Running" and failed["Pending"] == 4 and failed["Path"]
    assert f"cannot connect to 127.0.0.1:{scp.port}" in failed["Message"], failed

    scp.start()
    r = requests.post(f"{http}/modalities/ARCH/store", timeout=30,
                      json={"Resources": [p.stem for p in files[:2]], "Asynchronous": False})
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["State"], done["Sent"], done["Instances"]) == ("Success", 2, 2)
    # Answered only once delivered: storescp has them the moment the answer arrives.
    assert {p.stem for p in files[:2]} <= scp.received()
    # The first task, retried with its backoff, gets there too.
    wait_for(lambda: requests.get(f"{http}{failed['Path']}", timeout=10).json()["State"] == "Success",
             30, "the failed task delivered")
    assert scp.received() == {p.stem for p in files}
