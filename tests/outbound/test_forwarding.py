"""Forwarding rules through the durable queue (issue 13): to a DCMTK storescp, to a
second daemon over STOW-RS, across a destination outage and daemon crashes."""

from __future__ import annotations

import json

import random
import time

import requests
from pydicom.uid import generate_uid

from tests.outbound.conftest import cli, make_instances, queue_json
from tests.support import scu_store, wait_for


def _modality(scp) -> dict:
    return {"ARCH": {"AET": scp.aet, "Host": "127.0.0.1", "Port": scp.port}}


def test_instance_rule_forwards_each_stored_instance(make_daemon, storescp, tmp_path):
    scp = storescp()
    d = make_daemon(DicomModalities=_modality(scp),
                    Forwarding={"Rules": [{"Destination": "ARCH", "Trigger": "Instance",
                                           "Modalities": ["US"]}]})
    us = make_instances(tmp_path / "us", 5)
    ct = make_instances(tmp_path / "ct", 2, modality="CT")  # filtered out by the rule
    assert scu_store(d.dicom_port, us + ct) == [0] * 7
    wanted = {p.stem for p in us}
    wait_for(lambda: scp.received() == wanted, 20, "the 5 US instances at storescp")
    summary = {r["destination"]: r for r in queue_json(d)["destinations"]}
    assert summary["ARCH"]["sent"] == 5 and summary["ARCH"]["pending"] == 0
    assert "ARCH: sent 5 instance(s)" in d.log() or "ARCH: sent " in d.log()
    metrics = requests.get(f"http://127.0.0.1:{d.http_port}/metrics", timeout=10).text
    assert 'pacs_outbound_queue_depth{destination="ARCH"} 0' in metrics
    assert 'pacs_outbound_sent_total{destination="ARCH"} 5' in metrics
    page = requests.get(f"http://127.0.0.1:{d.http_port}/status.html", timeout=10).text
    assert "Send to ARCH" in page and "5 sent since start" in page
    status = cli(d, "status")
    assert "send to ARCH: 0 queued" in status.stdout, status.stdout
    # The CT series was never queued (the rule filtered it as it was stored), so it
    # cannot arrive later: the queue holds the 5 US items only, all sent.
    assert d.rows("SELECT state, count(*) FROM send_items GROUP BY state") == [("sent", 5)]
    assert scp.received() == wanted


def test_destination_down_then_up_backs_off_then_delivers(make_daemon, storescp, tmp_path):
    scp = storescp(start=False)
    d = make_daemon(DicomModalities=_modality(scp),
                    Forwarding={"Rules": [{"Destination": "ARCH"}], "MaxRetrySeconds": 60})
    study = generate_uid()
    files = make_instances(tmp_path / "a", 3, study_uid=study)
    assert scu_store(d.dicom_port, files) == [0] * 3

    # Backoff 1, 2, then 4 s: the next attempt is 4 s away once the third failed.
    wait_for(lambda: d.rows("SELECT min(attempts) FROM send_items")[0][0] >= 3, 20,
             "three failed attempts")
    # One more instance of the study arrives meanwhile: due at once, but held
    # behind the first (order per study), as the two others are.
    late = make_instances(tmp_path / "b", 1, study_uid=study)
    assert scu_store(d.dicom_port, late) == [0]
    listed = json.loads(cli(d, "queue", "list", "--items", "--json").stdout)
    row = {r["destination"]: r for r in listed["destinations"]}["ARCH"]
    assert row["pending"] == 4 and row["failing"] == 3 and row["attempts"] >= 3
    first, *held = sorted(listed["items"], key=lambda i: i["id"])
    assert [i["held_by"] for i in held] == [first["id"]] * 3 and row["held"] == 3
    # The next attempt shown is the first one's, not the late one's own "now".
    assert row["next_attempt"] == first["next_attempt"] > held[-1]["next_attempt"]
    # Nothing listens there: said as such, not as an "aborted" association.
    assert row["last_error"].startswith(f"cannot connect to 127.0.0.1:{scp.port}: no TCP connection"), row
    assert row["next_attempt"] > row["oldest"]  # backing off
    shown = cli(d, "queue", "list", "--items")
    assert shown.returncode == 0 and "failing" in shown.stdout and "next in" in shown.stdout, shown.stdout
    assert "not sent, retried later" in d.log()
    scp.start()
    wait_for(lambda: scp.received() == {p.stem for p in files + late}, 20, "delivery once up")


def test_sigkill_while_forwarding_loses_nothing(make_daemon, storescp, tmp_path):
    """200 instances queued while the destination is down; then it comes up and the
    daemon is SIGKILLed at random moments of the forwarding, three times."""
    scp = storescp(start=False)
    d = make_daemon(DicomModalities=_modality(scp),
                    Forwarding={"Rules": [{"Destination": "ARCH"}], "MaxRetrySeconds": 1})
    files = make_instances(tmp_path / "a", 200)
    assert scu_store(d.dicom_port, files) == [0] * 200
    wanted = {p.stem for p in files}
    scp.start()
    rng = random.Random(13)
    for _ in range(3):
        time.sleep(rng.uniform(0.05, 0.6))
        d.kill()
        d.start()
    wait_for(lambda: scp.received() == wanted, 40, "all 200 at storescp after the crashes")
    wait_for(lambda: d.rows("SELECT state, count(*) FROM send_items GROUP BY state")
             == [("sent", 200)], 20, "the queue settled")
    assert "was deleted" not in d.log()


def test_stable_study_to_a_second_daemon_over_stow_across_restart(make_daemon, tmp_path):
    b = make_daemon("b")
    a = make_daemon("a", StableAge=1,
                    DicomWeb={"Servers": {"B": [f"http://127.0.0.1:{b.http_port}/dicom-web/"]}},
                    Forwarding={"Rules": [{"Destination": "B", "Trigger": "StableStudy",
                                           "CallingAets": ["US01"]}]})
    study = "1.2.826.0.1.3680043.2.1143.13.1"
    first = make_instances(tmp_path / "1", 3, study_uid=study)
    assert scu_store(a.dicom_port, first, aet="US01") == [0] * 3
    assert a.rows("SELECT count(*) FROM stable_waiting") == [(3,)]
    a.kill()  # before the study is stable: the debounce is on disk only
    a.start()

    def at_b() -> int:
        return b.rows("SELECT count(*) FROM instances")[0][0]
    wait_for(lambda: at_b() == 3, 20, "the stable study at B")
    late = make_instances(tmp_path / "2", 2, study_uid=study)
    assert scu_store(a.dicom_port, late, aet="US01") == [0] * 2
    other = make_instances(tmp_path / "3", 1)
    assert scu_store(a.dicom_port, other, aet="OTHER") == [0]  # not from US01: not forwarded
    wait_for(lambda: at_b() == 5, 20, "the late instances at B")
    # Nothing left to send (no pending item, no study waiting to be stable), so nothing
    # can arrive at B later: what B has is final.
    wait_for(lambda: a.rows("SELECT count(*) FROM send_items WHERE state = 'pending'") == [(0,)]
             and a.rows("SELECT count(*) FROM stable_waiting") == [(0,)], 20, "the queue settled")
    assert at_b() == 5
    sent = a.rows("SELECT count(*), count(DISTINCT sop_instance_uid) FROM send_items "
                  "WHERE state = 'sent'")
    assert sent == [(5, 5)]  # neither lost nor doubled by the restart
