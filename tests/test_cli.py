"""The command line, run as a real subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance import __version__
from tests.support import run

CLINIC = """{ "Name": "Clinic Orthanc", "StorageDirectory": "/var/lib/orthanc/db", "IndexDirectory": "/var/lib/orthanc/db",
  "TemporaryDirectory": "/var/lib/orthanc/tmp", "AuthenticationEnabled": true,
  "RegisteredUsers": {"orthanc": "change-this-password"}, "RemoteAccessAllowed": false,
  "HttpPort": 8042, "DicomAet": "ORTHANC", "DicomPort": 4242, "DicomCheckCalledAet": true,
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/"},
  "Worklists": {"Enable": true, "Database": "/var/lib/orthanc/worklists"},
  "Plugins": ["/usr/share/orthanc/plugins"], "ConcurrentJobs": 2, "StorageCompression": false }"""


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "appliance", *args], cwd=cwd)


def test_version():
    out = cli("version")
    assert out.returncode == 0 and out.stdout.strip() == f"pacs-appliance {__version__}"


def test_console_script_installed():
    exe = Path(sys.executable).parent / "pacs-appliance"
    out = run([str(exe), "version"])
    assert out.returncode == 0 and __version__ in out.stdout


def test_check_config_clinic_file(tmp_path):
    cfg = tmp_path / "orthanc.json"
    cfg.write_text(CLINIC)
    out = cli("check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "2 Orthanc keys ignored" in out.stdout


@pytest.mark.parametrize("text, error", [
    ('{ "DicomPort": "abc" }', 'DicomPort: expected 0-65535, got "abc"'),
    ('{ "RegisteredUsers": { "emr": "pbkdf2_sha256$many$c2FsdA==$aGFzaA==" } }',
     "RegisteredUsers.emr: unusable password hash: "
     "iterations must be a number 10000-10000000, got 'many'"),
], ids=["wrong type", "malformed password hash"])
def test_config_error_is_one_line_exit_2(tmp_path, text, error):
    cfg = tmp_path / "config.json"
    cfg.write_text(text)
    for command in ("check-config", "serve"):
        out = cli(command, "--config", str(cfg))
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [f"pacs-appliance: {cfg}: {error}"]
        assert "Traceback" not in out.stderr


def test_missing_config_file(tmp_path):
    out = cli("check-config", "--config", str(tmp_path / "nope.json"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_serve_on_embedded_defaults(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runtime = tmp_path / "pacs-data" / "index" / "pacs-appliance.runtime.json"
    try:
        deadline = time.monotonic() + 30
        while not runtime.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        info = json.loads(runtime.read_text())
        assert (info["dicom_port"], info["http_port"]) == (4242, 8042)
        assert run(["echoscu", "127.0.0.1", "4242"]).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    first = out.splitlines()[0]
    assert "EMBEDDED DEFAULTS" in first and str(tmp_path / "pacs-data") in first
    assert (tmp_path / "pacs-data" / "storage").is_dir()
