"""STOW-RS over HTTPS (issue 13): a second daemon behind a real nginx TLS proxy whose
certificate comes from a private CA made here, with Basic credentials in both of
Orthanc's DicomWeb.Servers forms. Trust follows Orthanc's HttpsVerifyPeers and
HttpsCACertificates: untrusted, the attempts fail with the TLS error and back off;
once the config names the CA (restart), the queue delivers byte-exact."""

from __future__ import annotations

import requests

from tests.outbound.conftest import free_port, make_instances, queue_json
from tests.support import run, scu_store, site_config, start_nginx, wait_for

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _private_ca(folder):
    """(CA certificate, server certificate, server key): a clinic's private CA and a
    certificate it issued for localhost / 127.0.0.1 (with the extensions Python's strict
    verification wants)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, crt, ext = (folder / n for n in (
        "ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "server.ext"))
    for cmd in (
        ["openssl", "req", "-x509", *_EC, "-days", "1", "-subj", "/CN=Test Clinic CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", str(ca_key), "-out", str(ca)],
        ["openssl", "req", "-new", *_EC, "-subj", "/CN=localhost", "-keyout", str(key),
         "-out", str(csr)],
    ):
        done = run(cmd)
        assert done.returncode == 0, done.stderr
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    done = run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(crt)])
    assert done.returncode == 0, done.stderr
    return ca, crt, key


def test_stow_over_https_with_a_private_ca(make_daemon, tmp_path):
    ca, crt, key = _private_ca(tmp_path / "pki")
    b = make_daemon("b", AuthenticationEnabled=True, RegisteredUsers={"fwd": "s3cret"})
    port = free_port()
    nginx = start_nginx(tmp_path / "nginx", site_config(port, b.http_port, crt, key), port)
    try:
        url = f"https://localhost:{port}/dicom-web/"
        a = make_daemon("a", DicomWeb={"Servers": {
            "CLOUD": [url, "fwd", "s3cret"],  # Orthanc's list form
            "CLOUD2": {"Url": url, "Username": "fwd", "Password": "s3cret",  # object form
                       "HttpHeaders": {"X-Clinic": "test"}}}},
            Forwarding={"Rules": [{"Destination": "CLOUD", "CallingAets": ["US01"]}],
                        "MaxRetrySeconds": 1})
        ruled = make_instances(tmp_path / "ruled", 3)
        asked = make_instances(tmp_path / "asked", 2)
        assert scu_store(a.dicom_port, ruled, aet="US01") == [0] * 3
        assert scu_store(a.dicom_port, asked, aet="OTHER") == [0] * 2

        # The CA is not among the system's: every attempt fails, backs off, stays queued.
        wait_for(lambda: a.rows("SELECT min(attempts) FROM send_items")[0][0] >= 2, 30,
                 "two failed attempts")
        row = {r["destination"]: r for r in queue_json(a)["destinations"]}["CLOUD"]
        assert (row["pending"], row["failing"], row["sent"]) == (3, 3, 0), row
        assert row["next_attempt"] > row["oldest"] and "CERTIFICATE_VERIFY_FAILED" in row["last_error"]
        # One WARNING per failed attempt: the destination, its URL and the TLS error.
        warnings = [line for line in a.log().splitlines()
                    if " WARNING " in line and "CLOUD: " in line and "not sent, retried later" in line]
        assert len(warnings) >= 2, a.log()[-2000:]
        assert all(url in w and "certificate verify failed" in w for w in warnings), warnings
        assert b.rows("SELECT count(*) FROM instances") == [(0,)]

        # The config trusts the CA (a path relative to the config file's folder): delivered.
        (a.root / "clinic-ca.pem").write_bytes(ca.read_bytes())
        a.stop()
        a.config["HttpsCACertificates"] = "clinic-ca.pem"
        a.start()
        wait_for(lambda: b.rows("SELECT count(*) FROM instances") == [(3,)], 30,
                 "the ruled instances at B")
        for path in ruled:
            assert b.stored_path(path.stem).read_bytes() == a.stored_path(path.stem).read_bytes()

        # On demand, to the object form's entry.
        r = requests.post(f"http://127.0.0.1:{a.http_port}/dicom-web/servers/CLOUD2/stow",
                          json={"Resources": [p.stem for p in asked]}, timeout=10)
        assert r.status_code == 200, r.text
        state = wait_for(lambda: (s := requests.get(f"http://127.0.0.1:{a.http_port}{r.json()['Path']}",
                                                    timeout=10).json())["State"] in ("Success", "Failure") and s,
                         30, "the STOW-RS job")
        assert (state["State"], state["Sent"]) == ("Success", 2), state
        for path in asked:
            assert b.stored_path(path.stem).read_bytes() == a.stored_path(path.stem).read_bytes()
        assert a.rows("SELECT destination, state, count(*) FROM send_items GROUP BY 1, 2") == [
            ("CLOUD", "sent", 3), ("CLOUD2", "sent", 2)]
    finally:
        nginx.terminate()
        nginx.wait(10)
