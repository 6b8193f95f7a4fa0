"""HTTP access control end to end: Basic authentication with Orthanc's plain
passwords and our PBKDF2 hashes (made with the real CLI), the loopback-only
rule, and forwarded headers from peers that are not the local proxy."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from requests import HTTPError

from tests.support import REPO, run
from tests.web import sample_studies, start_daemon, store, write_studies

CHALLENGE = 'Basic realm="pacs-appliance"'
SLOW_ITERATIONS = 1_000_000
USERS = {"plain": "Plain-Secret-1", "hashed": "hashed pässword", "slow": "slow-one"}


def hash_password(password: str, *args: str) -> subprocess.CompletedProcess:
    """``pacs-appliance hash-password`` with the password on stdin."""
    return subprocess.run([sys.executable, "-m", "appliance", "hash-password", *args],
                          input=password + "\n", capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def lan_address() -> str | None:
    """A non-loopback address of this machine (the source of a 'LAN' peer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # TEST-NET-1: no packet is sent for UDP connect
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


LAN = lan_address()
needs_lan = pytest.mark.skipif(LAN is None, reason="this machine has no non-loopback IPv4 address")


@pytest.fixture(scope="module")
def lan_daemon(tmp_path_factory):
    """Remote access allowed, authentication on, users of every kind."""
    root = tmp_path_factory.mktemp("auth")
    hashed = hash_password(USERS["hashed"])  # default iterations (600,000)
    slow = hash_password(USERS["slow"], "--iterations", str(SLOW_ITERATIONS))
    assert hashed.returncode == 0 and slow.returncode == 0, hashed.stderr + slow.stderr
    users = {"plain": USERS["plain"], "hashed": hashed.stdout.strip(), "slow": slow.stdout.strip()}
    daemon = start_daemon(root / "d", RemoteAccessAllowed=True, AuthenticationEnabled=True,
                          RegisteredUsers=users,
                          # Debian's stock dicomweb.json: must not end up in URLs.
                          DicomWeb={"Host": "localhost", "Ssl": False})
    study = sample_studies()[:1]
    store(daemon.dicom_port, write_studies(root / "files", study))
    yield daemon, study[0]
    daemon.stop()


@pytest.fixture(scope="module")
def clinic_daemon(tmp_path_factory):
    """DESIGN.md's clinic orthanc.json: loopback only, authentication on."""
    root = tmp_path_factory.mktemp("clinic")
    daemon = start_daemon(root / "d", RemoteAccessAllowed=False, AuthenticationEnabled=True,
                          RegisteredUsers={"orthanc": "change-this-password"})
    yield daemon
    daemon.stop()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get(daemon, path: str, authorization: str | None = None, **headers) -> requests.Response:
    if authorization:
        headers["Authorization"] = authorization
    return requests.get(f"http://127.0.0.1:{daemon.http_port}{path}", headers=headers, timeout=30)


def curl_from_lan(daemon, path: str, *args: str) -> tuple[int, str]:
    """curl with a non-loopback source address to the loopback listener."""
    done = run(["curl", "-s", "--interface", LAN, "-w", "\n%{http_code}", *args,
                f"http://127.0.0.1:{daemon.http_port}{path}"])
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), body


# -- the CLI -----------------------------------------------------------------


def test_hash_password_prints_a_salted_pbkdf2_hash():
    first, second = hash_password("s3cret", "--iterations", "10000"), hash_password("s3cret", "--iterations", "10000")
    assert first.returncode == 0, first.stderr
    m = re.fullmatch(r"pbkdf2_sha256\$10000\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)\n", first.stdout)
    assert m, first.stdout
    salt, digest = (base64.b64decode(g) for g in m.groups())
    assert digest == hashlib.pbkdf2_hmac("sha256", b"s3cret", salt, 10000)
    assert first.stdout != second.stdout  # a new salt each time
    assert "s3cret" not in first.stdout + first.stderr


@pytest.mark.parametrize("password, args, message", [
    ("x", ["--iterations", "5"], "iterations"),
    ("x", ["--iterations", "99999999999"], "iterations"),
    ("", [], "empty password"),
])
def test_hash_password_refuses_bad_input(password, args, message):
    done = hash_password(password, *args)
    assert done.returncode != 0 and message in done.stderr and done.stdout == ""


# -- Basic authentication ----------------------------------------------------


@pytest.mark.parametrize("path", ["/system", "/statistics", "/dicom-web/studies",
                                  "/dicom-web/studies/1.2.3/series", "/no/such/route"])
def test_no_credentials_is_401_with_a_challenge(lan_daemon, path):
    r = get(lan_daemon[0], path)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == CHALLENGE
    assert r.json() == {"HttpStatus": 401, "Message": "authentication required"}


def test_plain_password_as_orthanc_has_it(lan_daemon):
    daemon, study = lan_daemon
    assert get(daemon, "/system", basic("plain", USERS["plain"])).status_code == 200
    r = get(daemon, "/dicom-web/studies", basic("plain", USERS["plain"]))
    assert [s["0020000D"]["Value"][0] for s in r.json()] == [study.uid]


def test_hashed_password_made_by_the_cli(lan_daemon):
    daemon, _ = lan_daemon
    assert get(daemon, "/statistics", basic("hashed", USERS["hashed"])).status_code == 200
    assert get(daemon, "/statistics", basic("hashed", USERS["hashed"] + "x")).status_code == 401
    stored = daemon.config["RegisteredUsers"]["hashed"]
    assert get(daemon, "/statistics", basic("hashed", stored)).status_code == 401


@pytest.mark.parametrize("authorization", [
    basic("plain", "Plain-Secret-2"),            # same length, last character differs
    basic("plain", "Plain-Secret-1x"),           # longer
    basic("plain", "Plain"),                     # prefix
    basic("plain", ""),
    basic("Plain", USERS["plain"]),              # user names are case-sensitive
    basic("hashed", USERS["plain"]),             # another user's password
    basic("nobody", USERS["plain"]),             # unknown user
    basic("", ""),
    "Basic " + base64.b64encode(b"plain" + USERS["plain"].encode()).decode(),  # no colon
    "Basic !!!not-base64!!!",
    "Bearer " + base64.b64encode(f"plain:{USERS['plain']}".encode()).decode(),
    "Basic",
])
def test_wrong_credentials_are_401(lan_daemon, authorization):
    r = get(lan_daemon[0], "/system", authorization)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == CHALLENGE


def test_a_verified_hash_is_not_recomputed_per_request(lan_daemon):
    daemon, _ = lan_daemon
    good = basic("slow", USERS["slow"])
    started = time.monotonic()
    assert get(daemon, "/system", good).status_code == 200
    first = time.monotonic() - started  # 1,000,000 PBKDF2 iterations
    for _ in range(3):
        started = time.monotonic()
        assert get(daemon, "/system", good).status_code == 200
        assert time.monotonic() - started < first / 4
    # Only successes are remembered: a wrong password pays the full price.
    started = time.monotonic()
    assert get(daemon, "/system", basic("slow", "slow-two")).status_code == 401
    assert time.monotonic() - started > first / 4


def test_a_malformed_hash_on_reload_keeps_the_users_in_force(tmp_path):
    """A bad hash stops start-up (tests/test_cli.py); sent by SIGHUP it is refused
    and the users already loaded keep working."""
    daemon = start_daemon(tmp_path / "d", RemoteAccessAllowed=True, AuthenticationEnabled=True,
                          RegisteredUsers={"plain": USERS["plain"]})
    try:
        assert get(daemon, "/system", basic("plain", USERS["plain"])).status_code == 200
        config = json.loads(daemon.config_path.read_text())
        config["RegisteredUsers"]["broken"] = "pbkdf2_sha256$many$salt$hash"
        daemon.config_path.write_text(json.dumps(config))
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration not reloaded" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "RegisteredUsers.broken: unusable password hash" in daemon.log()
        assert get(daemon, "/system", basic("plain", USERS["plain"])).status_code == 200
        assert get(daemon, "/system", basic("broken", "pbkdf2_sha256$many$salt$hash")).status_code == 401
        assert USERS["plain"] not in daemon.log()
    finally:
        daemon.stop()


def test_dicomweb_client_with_basic_auth(lan_daemon):
    daemon, study = lan_daemon
    base = f"http://127.0.0.1:{daemon.http_port}/dicom-web"
    client = DICOMwebClient(base, session=create_session_from_user_pass("hashed", USERS["hashed"]))
    (found,) = client.search_for_studies(search_filters={"PatientID": "PAT001"})
    assert found["0020000D"]["Value"] == [study.uid]
    with pytest.raises(HTTPError) as refused:
        DICOMwebClient(base).search_for_studies()
    assert refused.value.response.status_code == 401


# -- URLs and peers ----------------------------------------------------------


def test_stock_loopback_host_setting_does_not_reach_urls(lan_daemon):
    daemon, study = lan_daemon
    r = get(daemon, "/dicom-web/studies", basic("plain", USERS["plain"]))
    assert r.json()[0]["00081190"]["Value"] == [
        f"http://127.0.0.1:{daemon.http_port}/dicom-web/studies/{study.uid}"]


@needs_lan
def test_lan_peer_with_remote_access(lan_daemon):
    daemon, study = lan_daemon
    status, _ = curl_from_lan(daemon, "/system")
    assert status == 401
    status, body = curl_from_lan(daemon, "/dicom-web/studies", "-u", f"plain:{USERS['plain']}",
                                 "-H", "X-Forwarded-Host: evil.example", "-H", "X-Forwarded-Proto: https",
                                 "-H", "Forwarded: host=evil.example;proto=https")
    assert status == 200
    # Forwarded headers count only from the loopback proxy.
    assert json.loads(body)[0]["00081190"]["Value"] == [
        f"http://127.0.0.1:{daemon.http_port}/dicom-web/studies/{study.uid}"]
    from_proxy = get(daemon, "/dicom-web/studies", basic("plain", USERS["plain"]),
                     **{"X-Forwarded-Host": "pacs.example", "X-Forwarded-Proto": "https"})
    assert from_proxy.json()[0]["00081190"]["Value"] == [
        f"https://pacs.example/dicom-web/studies/{study.uid}"]


def test_clinic_config_just_works_on_loopback(clinic_daemon):
    assert get(clinic_daemon, "/system").status_code == 401
    ok = get(clinic_daemon, "/system", basic("orthanc", "change-this-password"))
    assert ok.status_code == 200 and ok.json()["IsHttpServerSecure"] is True
    assert get(clinic_daemon, "/dicom-web/studies",
               basic("orthanc", "change-this-password")).json() == []


@needs_lan
def test_loopback_only_refuses_a_lan_peer_that_gets_through(clinic_daemon):
    """RemoteAccessAllowed false binds 127.0.0.1, yet a packet from this
    machine's LAN address to 127.0.0.1 still arrives: refused, credentials
    or not."""
    status, body = curl_from_lan(clinic_daemon, "/system", "-u", "orthanc:change-this-password")
    assert status == 403 and json.loads(body)["HttpStatus"] == 403
    status, _ = curl_from_lan(clinic_daemon, "/dicom-web/studies")
    assert status == 403
    assert f"{LAN}: HTTP GET /system refused: RemoteAccessAllowed is false" in clinic_daemon.log()
