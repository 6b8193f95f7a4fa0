"""The shipped nginx site in front of the real daemon: HTTPS, streaming both ways,
forwarded scheme and host in the URLs the daemon writes."""

from __future__ import annotations

import re
import socket

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from tests.support import new_dataset, run, site_config, start_nginx

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxy(tmp_path, make_daemon):
    """(https base URL, CA file, daemon) with nginx running the shipped site."""
    daemon = make_daemon()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    out = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
               "-keyout", str(key), "-out", str(cert)])
    assert out.returncode == 0, out.stderr
    port = free_port()
    proc = start_nginx(tmp_path / "nginx", site_config(port, daemon.http_port, cert, key), port)
    try:
        yield f"https://localhost:{port}", cert, daemon
    finally:
        proc.terminate()
        proc.wait(10)


def big_cine(frames: int = 55):
    """A 640x480 RGB US cine of ``frames`` frames (55 frames: about 50 MB)."""
    ds = new_dataset(US_MULTIFRAME)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "NGINX1", "Proxy^Test", "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns, ds.NumberOfFrames = 480, 640, frames
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    rng = np.random.default_rng(7)
    ds.PixelData = rng.integers(0, 256, 480 * 640 * 3 * frames, dtype=np.uint8).tobytes()
    return ds


def test_stow_and_wado_through_https_proxy(proxy):
    base, cert, daemon = proxy
    session = requests.Session()
    # Not the environment's CA bundle (requests lets $REQUESTS_CA_BUNDLE win
    # over session.verify): this test's self-signed certificate.
    session.trust_env = False
    session.verify = str(cert)
    client = DICOMwebClient(url=f"{base}/dicom-web", session=session)
    ds = big_cine()
    assert len(ds.PixelData) > 50_000_000
    answer = client.store_instances([ds])
    # The daemon wrote the URL the EMR used: https and nginx's host:port.
    retrieve_url = answer.ReferencedSOPSequence[0].RetrieveURL
    assert retrieve_url.startswith(f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/"), retrieve_url
    assert answer.RetrieveURL.startswith("https://")

    stored = daemon.stored_path(ds.SOPInstanceUID)
    response = session.get(retrieve_url, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert response.status_code == 200
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["Content-Type"]).group(1)
    part = response.content.split(b"--" + boundary.encode())[1]
    body = part.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n")
    assert body == stored.read_bytes()  # byte-exact, 50 MB through the proxy
    got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got.PixelData == ds.PixelData
    assert pydicom.dcmread(stored).PixelData == ds.PixelData  # a valid Part-10 file on disk


def test_web_ui_through_https_proxy(proxy):
    # The UI's page and files come through the shipped site like any other route;
    # the page's own URLs are absolute paths, so they stay on the proxy's origin.
    base, cert, _ = proxy
    session = requests.Session()
    session.trust_env = False
    session.verify = str(cert)
    page = session.get(base + "/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert '"dicomWebRoot": "/dicom-web"' in page.text
    src = re.search(r'src="(/ui/app\.js\?v=[0-9a-f]+)"', page.text).group(1)
    script = session.get(base + src)
    assert script.status_code == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert "immutable" in script.headers["Cache-Control"]
    assert session.get(base + "/status").json()["name"]
