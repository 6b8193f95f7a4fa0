"""systemd integration: sd_notify protocol with a socket the test owns, journal detection."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from appliance.logs import journal_connected
from appliance.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def receive_until(sock, wanted: str, deadline_s: float = 20.0) -> list[str]:
    """Every field received until one equals ``wanted`` (fails at the deadline)."""
    seen: list[str] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            continue
        fields = data.split("\n")
        seen.extend(fields)
        if wanted in fields:
            return seen
    raise AssertionError(f"{wanted} not received; got {seen}")


def test_ready_watchdog_reload_stop(make_daemon, notify_socket):
    path, sock = notify_socket
    d = make_daemon(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    seen = receive_until(sock, "READY=1")
    # READY comes only after the ports are bound: the runtime file names them.
    assert d.dicom_port and d.http_port
    assert any(f.startswith("STATUS=") for f in seen)
    seen = receive_until(sock, "WATCHDOG=1")
    receive_until(sock, "WATCHDOG=1")  # it keeps pinging (every 0.2 s here)
    d.proc.send_signal(signal.SIGHUP)
    seen = receive_until(sock, "RELOADING=1")
    assert any(f.startswith("MONOTONIC_USEC=") for f in seen)
    receive_until(sock, "READY=1")
    assert "users, DICOM access rules and worklist options reloaded" in d.log()
    d.proc.send_signal(signal.SIGTERM)
    receive_until(sock, "STOPPING=1")
    assert d.proc.wait(20) == 0


def test_no_watchdog_for_another_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier.watchdog_period() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.watchdog_period() == 15.0


def test_silent_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready() is False and n.watchdog() is False


def test_journal_stream_detection(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal_connected(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not journal_connected(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journal_connected(stream)


def _status_of(port: int, user: str, password: str) -> int:
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/system")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_sighup_reloads_users(make_daemon, notify_socket):
    import json

    path, sock = notify_socket
    d = make_daemon(env={"NOTIFY_SOCKET": str(path)}, AuthenticationEnabled=True,
                    RegisteredUsers={"emr": "first"})
    assert _status_of(d.http_port, "emr", "first") == 200
    d.config["RegisteredUsers"] = {"emr": "second"}
    d.config_path.write_text(json.dumps(d.config))
    d.proc.send_signal(signal.SIGHUP)
    receive_until(sock, "RELOADING=1")
    receive_until(sock, "READY=1")
    assert _status_of(d.http_port, "emr", "first") == 401
    assert _status_of(d.http_port, "emr", "second") == 200
