"""Orthanc-compatible /system and /statistics, and how the HTTP server answers
what it cannot serve: unknown routes, wrong methods, oversized request heads,
an internal error."""

from __future__ import annotations

import socket

import apsw
import pytest
import requests

from tests.support import run
from tests.web import sample_studies, start_daemon, write_studies

# Orthanc 1.10.1's /system fields (OrthancRestSystem.cpp), plus our own version.
ORTHANC_SYSTEM_FIELDS = {
    "ApiVersion", "CheckRevisions", "DatabaseBackendPlugin", "DatabaseVersion", "DicomAet",
    "DicomPort", "HttpPort", "IsHttpServerSecure", "Name", "PluginsEnabled",
    "StorageAreaPlugin", "Version",
}
ORTHANC_STATISTICS_FIELDS = {
    "CountInstances", "CountPatients", "CountSeries", "CountStudies", "TotalDiskSize",
    "TotalDiskSizeMB", "TotalUncompressedSize", "TotalUncompressedSizeMB",
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A daemon holding the sample studies, with a name and AE title of its own."""
    root = tmp_path_factory.mktemp("admin")
    daemon = start_daemon(root / "d", Name="Clinic PACS", DicomAet="CLINICPACS")
    studies = sample_studies()
    store_files = write_studies(root / "files", studies)
    done = run(["storescu", "-aec", "CLINICPACS", "127.0.0.1", str(daemon.dicom_port),
                *map(str, store_files)])
    assert done.returncode == 0, done.stderr
    yield daemon, studies
    daemon.stop()


@pytest.fixture(scope="module")
def daemon(archive):
    return archive[0]


def url(daemon, path: str) -> str:
    return f"http://127.0.0.1:{daemon.http_port}{path}"


def test_system_has_orthancs_fields_and_the_bound_ports(daemon):
    r = requests.get(url(daemon, "/system"), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    system = r.json()
    assert set(system) == ORTHANC_SYSTEM_FIELDS | {"PacsApplianceVersion"}
    # The config asks for port 0: these are the ports the OS gave.
    assert system["DicomPort"] == daemon.dicom_port != 0
    assert system["HttpPort"] == daemon.http_port != 0
    assert system["DicomAet"] == "CLINICPACS" and system["Name"] == "Clinic PACS"
    assert system["IsHttpServerSecure"] is True  # loopback only
    assert system["Version"] == "1.10.1" and system["ApiVersion"] == 16
    assert system["PluginsEnabled"] is False
    assert system["StorageAreaPlugin"] is None and system["DatabaseBackendPlugin"] is None
    assert isinstance(system["DatabaseVersion"], int) and system["CheckRevisions"] is False


def test_statistics_count_what_was_stored(daemon, archive):
    studies = archive[1]
    statistics = requests.get(url(daemon, "/statistics"), timeout=10).json()
    assert set(statistics) == ORTHANC_STATISTICS_FIELDS
    assert statistics["CountPatients"] == len({s.patient_id for s in studies}) == 4
    assert statistics["CountStudies"] == len(studies)
    assert statistics["CountSeries"] == sum(len(s.series) for s in studies)
    assert statistics["CountInstances"] == sum(s.instance_count for s in studies)
    (size,) = daemon.rows("SELECT sum(file_size) FROM instances")[0]
    stored = sum(p.stat().st_size for p in daemon.storage.glob("??/*.dcm"))
    # Orthanc's types: byte counts as strings, MiB as numbers.
    assert statistics["TotalDiskSize"] == statistics["TotalUncompressedSize"] == str(size) == str(stored)
    assert statistics["TotalDiskSizeMB"] == statistics["TotalUncompressedSizeMB"] == size // 2**20


def test_unknown_routes_and_methods_get_json_errors(daemon):
    missing = requests.get(url(daemon, "/no/such/thing"), timeout=10)
    assert missing.status_code == 404 and missing.json()["HttpStatus"] == 404
    post = requests.post(url(daemon, "/system"), data=b"x", timeout=10)
    assert post.status_code == 405 and post.json()["HttpStatus"] == 405
    assert "GET" in post.headers["Allow"]
    head = requests.head(url(daemon, "/statistics"), timeout=10)
    assert head.status_code == 200


def _raw(port: int, head: bytes) -> bytes:
    """Send a raw request head, return everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("head", [
    b"GET /system HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /dicom-web/studies?PatientID=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /system HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n",
    b"GET /system HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
])
def test_oversized_or_garbled_request_heads_are_400(daemon, head):
    answer = _raw(daemon.http_port, head)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    # The server carries on, and logs a line, not a traceback.
    assert requests.get(url(daemon, "/system"), timeout=10).status_code == 200
    log = daemon.log()
    assert "HTTP request refused (400)" in log
    assert "http_exceptions" not in log  # no aiohttp traceback


def test_an_internal_error_is_a_bare_500_and_a_log_line(daemon, archive):
    """A corrupt index row (metadata that is not JSON) must not show the client
    a traceback: 500 with a JSON body, and the method and path in the log."""
    sop = archive[1][2].sop_uids[0][0]
    conn = apsw.Connection(str(daemon.index_file))
    conn.setbusytimeout(10_000)
    (original,) = conn.execute("SELECT metadata FROM instances WHERE sop_instance_uid = ?",
                               (sop,)).fetchone()
    try:
        with conn:
            conn.execute("UPDATE instances SET metadata = '{not json' WHERE sop_instance_uid = ?",
                         (sop,))
        r = requests.get(url(daemon, f"/dicom-web/instances?SOPInstanceUID={sop}"), timeout=10)
        assert r.status_code == 500
        assert r.json() == {"HttpStatus": 500, "Message": "internal error (logged)"}
        assert "Traceback" not in r.text
        assert "GET /dicom-web/instances: unexpected error" in daemon.log()
    finally:
        with conn:
            conn.execute("UPDATE instances SET metadata = ? WHERE sop_instance_uid = ?",
                         (original, sop))
        conn.close()
    assert requests.get(url(daemon, f"/dicom-web/instances?SOPInstanceUID={sop}"),
                        timeout=10).status_code == 200
