"""Status and metrics end to end: GET /metrics (Prometheus text, parsed), the status
page, ``pacs-appliance status`` and the scheduled backups they report."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from appliance import __version__
from tests.ops import cli, image, status_json
from tests.support import Daemon, base_config, scu_store

AUTH = "Basic " + base64.b64encode(b"ops:s3cret").decode()

# The text exposition format, line by line (prometheus.io/docs/instrumenting/exposition_formats).
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_VALUE = r"(?:[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)|NaN|[+-]Inf)"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? ({_VALUE})")
HELP = re.compile(rf"# HELP ({_NAME}) .*")
TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Parse the exposition format strictly; every sample's family declared before it."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples = []
    for line in text.splitlines():
        if m := HELP.fullmatch(line):
            continue
        if m := TYPE.fullmatch(line):
            assert m.group(1) not in types, f"TYPE twice: {line}"
            types[m.group(1)] = m.group(2)
            continue
        m = SAMPLE.fullmatch(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"no TYPE before {name}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples.append(Sample(name, labels, float(m.group(3))))
    return samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def get(daemon: Daemon, path: str, auth: str | None = AUTH) -> tuple[int, dict, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}{path}",
                                 headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("status")
    (root / "worklists").mkdir()
    d = Daemon(root / "d", base_config(
        root / "d", AuthenticationEnabled=True, RegisteredUsers={"ops": "s3cret"}, Name="Clinic <US>",
        Worklists={"Enable": True, "Database": str(root / "worklists")},
        # A scheduled backup every 1.8 s, to a mirror that is not there yet: it fails.
        Backups={"IntervalHours": 0.0005, "Keep": 2, "StorageMirror": str(root / "usb")},
        DiskMonitor={"IntervalSeconds": 1})).start()
    files = [image(root / "in", "S1", number=i) for i in range(4)]
    assert scu_store(d.dicom_port, files) == [0] * 4
    yield d
    d.stop()


def _wait(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def test_metrics(daemon):
    status, _, _ = get(daemon, "/metrics", auth=None)
    assert status == 401  # behind the same authentication as everything else
    bad = daemon.root / "bad.dcm"
    ds = pydicom.dcmread(image(daemon.root / "bad", "S2"))
    del ds.StudyInstanceUID
    ds.save_as(bad, enforce_file_format=True)
    assert scu_store(daemon.dicom_port, [bad]) == [0xC000]

    def fresh():
        code, headers, text = get(daemon, "/metrics")
        assert code == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = parse_metrics(text)
        return samples if value(samples, "pacs_instances") == 4 else None

    samples = _wait(fresh, "counts in /metrics")
    assert value(samples, "pacs_patients") == 1
    assert value(samples, "pacs_stored_bytes") > 4 * 64 * 64
    assert value(samples, "pacs_instances_received_total", source="DICOM") == 4
    assert value(samples, "pacs_instances_failed_total", source="DICOM", reason="Invalid") == 1
    assert value(samples, "pacs_dicom_associations_open") == 0
    assert value(samples, "pacs_worklist_items") == 0
    assert value(samples, "pacs_storage_accepting") == 1
    storage = [s for s in samples if s.name == "pacs_disk_free_bytes" and "storage" in s.labels["roles"]]
    assert len(storage) == 1 and storage[0].value > 0
    assert value(samples, "pacs_info", version=__version__) == 1
    assert value(samples, "pacs_storage_growth_bytes_per_day") > 0
    # The request latency histogram: cumulative buckets, +Inf equals the count.
    buckets = [s for s in samples if s.name == "pacs_http_request_duration_seconds_bucket"
               and s.labels["service"] == "metrics"]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
    assert counts[-1] == value(samples, "pacs_http_request_duration_seconds_count", service="metrics")
    assert value(samples, "pacs_http_requests_total", service="metrics", code="2xx") >= 1


def test_scheduled_backups_and_status(daemon):
    index_dir = Path(daemon.config["IndexDirectory"])
    # The mirror is missing: the scheduled backup fails, and says so everywhere.
    state = _wait(lambda: status_json(daemon)["backups"]["last_attempt"], "a scheduled backup")
    assert state["ok"] is False and state["trigger"] == "scheduled"
    assert "the storage mirror failed" in state["message"]
    out = cli(daemon.config_path, "status")
    assert out.returncode == 0, out.stderr
    assert re.search(r"last backup: .* FAILED: index backed up as backup-\S+, but the storage "
                     r"mirror failed: storage mirror .*usb does not exist", out.stdout)
    assert re.search(r"last error: \S+ \S+ backup \(scheduled\): index backed up as", out.stdout)
    _, _, text = get(daemon, "/metrics")
    assert value(parse_metrics(text), "pacs_backup_last_result") == 0

    (daemon.root.parent / "usb").mkdir()  # the disk is plugged in: the next one works
    snap = _wait(lambda: (s := status_json(daemon))["backups"]["last_attempt"]["ok"] and s,
                 "a good scheduled backup")
    backups = sorted(p.name for p in (index_dir / "backups").glob("backup-*"))
    assert 1 <= len(backups) <= 2  # Keep 2
    assert snap["backups"]["next"] > snap["backups"]["last_success"]["time"]
    assert any((daemon.root.parent / "usb").rglob("*.dcm"))

    out = cli(daemon.config_path, "status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(rf"pacs-appliance \S+ \(Clinic <US>\): running, pid {daemon.proc.pid}, up .*",
                        lines[0])
    text = out.stdout
    assert f"DICOM: AE title ORTHANC, port {daemon.dicom_port}, 0 association(s) open" in text
    assert f"HTTP: port {daemon.http_port} (localhost only)" in text
    assert "stored: 1 patients, 4 studies, 4 series, 4 instances" in text
    assert "since start: 4 received (DICOM 4), 1 failed" in text
    assert re.search(r"disk storage\+index\S*: \d+% used, .* free of ", text)
    assert re.search(r"growth: \S+ \S+/day, full in \d+ days", text)
    assert "new objects: accepted" in text
    assert re.search(r"last backup: .* OK: \d+ instances, index ", text)
    assert re.search(r"next backup: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text)

    out = cli(daemon.config_path, "status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["pid"] == daemon.proc.pid


def test_status_page(daemon):
    # / is the web UI (tests/ui); the text page moved to /status.html.
    assert get(daemon, "/status.html", auth=None)[0] == 401
    code, headers, page = get(daemon, "/status.html")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "<h1>Clinic &lt;US&gt;</h1>" in page  # escaped
    assert "<th>Stored</th><td>1 patients" in page and "<th>Last backup</th>" in page
    assert get(daemon, "/status", auth=None)[0] == 401
    code, headers, body = get(daemon, "/status")
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    snap = json.loads(body)
    assert snap["name"] == "Clinic <US>" and snap["counts"]["patients"] == 1


def test_status_when_not_running(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(base_config(tmp_path)))
    out = cli(config, "status")
    assert out.returncode == 3
    assert out.stderr.strip() == (f"pacs-appliance: status: not running (no live daemon for "
                                  f"{tmp_path / 'index'})")
