"""The .deb: build it, check it with lintian, install it with apt on this machine,
run the installed daemon as its service user, upgrade, remove and purge it.

These tests change the machine (a system user, /etc/pacs-appliance,
/var/lib/pacs-appliance), as a real install does; CI runs them as root on a
machine of its own. They refuse to run over a real installation.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.parse
from pathlib import Path

import pydicom
import pytest

from appliance.dicom.transport import VERIFIED_PYNETDICOM
from tests.synthetic import generate_singles
from tests.support import REPO, run

PACKAGE = "pacs-appliance"
STATE = Path("/var/lib/pacs-appliance")
CONF = Path("/etc/pacs-appliance/config.json")
MARKER = STATE / ".installed-by-tests"
SUDO = [] if os.geteuid() == 0 else ["sudo", "-n"]


def root(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command as root (through sudo when the tests are not root)."""
    return run([*SUDO, *cmd], timeout=kw.pop("timeout", 600), **kw)


def apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return root(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q", *args], cwd=cwd)


def installed_version() -> str | None:
    out = run(["dpkg-query", "-W", "-f", "${Status} ${Version}", PACKAGE])
    if out.returncode != 0 or "install ok installed" not in out.stdout:
        return None
    return out.stdout.split()[-1]


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    """The package built from this checkout with dpkg-buildpackage."""
    build = tmp_path_factory.mktemp("deb")
    src = build / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", "results", "pacs-data"))
    out = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, timeout=1500)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    (path,) = build.glob(f"{PACKAGE}_*.deb")
    return path


@pytest.fixture(scope="module")
def installed(deb):
    """The package installed with apt from a clean slate; purged afterwards."""
    ours = root(["test", "-e", str(MARKER)]).returncode == 0
    if (installed_version() is not None or root(["test", "-e", str(STATE)]).returncode == 0) \
            and not ours:
        pytest.fail(f"{PACKAGE} is installed (or {STATE} exists) and not by these tests: "
                    "refusing to disturb a real installation")
    _purge_everything()
    out = apt("install", f"./{deb.name}", cwd=deb.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    root(["touch", str(MARKER)])
    yield out.stdout + out.stderr
    _purge_everything()


def _purge_everything() -> None:
    if installed_version() is not None:
        apt("purge", PACKAGE)
    root(["rm", "-rf", str(STATE), str(CONF.parent)])


def _pins() -> dict[str, str]:
    """{normalised name: version} of debian/requirements.txt, checking that every
    requirement is an exact pin with at least one hash."""
    pins = {}
    for requirement in re.split(r"(?<!\\)\n(?=\S)",
                                (REPO / "debian" / "requirements.txt").read_text()):
        if requirement.startswith("#") or not requirement.strip():
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+) \\\n\s+--hash=sha256:[0-9a-f]{64}", requirement)
        assert match, f"not an exact pin with a hash: {requirement[:80]!r}"
        pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def test_package_requirements_are_hash_pinned_and_as_pyproject_says():
    """No build needed: the .deb installs debian/requirements.txt, every line an exact
    pin with hashes, pynetdicom the version the fast path was verified with, and every
    dependency pyproject.toml declares is there."""
    pins = _pins()
    assert pins["pynetdicom"] == VERIFIED_PYNETDICOM
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["systemd"]
    for dependency in declared:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", dependency).group(0)).lower()
        assert name in pins, f"{dependency} is not in debian/requirements.txt"


def test_lintian_finds_no_errors(deb):
    out = run(["lintian", "--no-tag-display-limit", str(deb)], timeout=600)
    errors = [line for line in out.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], errors[:20]


def test_installed_files_user_and_config(installed):
    user = pwd.getpwnam("pacs-appliance")
    assert user.pw_uid < 1000 and user.pw_dir == str(STATE)  # a system user
    assert Path("/usr/bin/pacs-appliance").resolve() == Path("/opt/venvs/pacs-appliance/bin/pacs-appliance")
    out = run(["/usr/bin/pacs-appliance", "version"])
    assert out.returncode == 0 and out.stdout.startswith("pacs-appliance ")
    st = CONF.stat()
    assert oct(st.st_mode & 0o777) == "0o640" and st.st_uid == 0 and st.st_gid == user.pw_gid
    text = CONF.read_text()
    assert "@EMR_PASSWORD@" not in text
    password = re.search(r'"emr": "([A-Za-z0-9]{24})"', text)
    assert password, "no random 24-character password for the EMR user"
    for sub in ("index", "storage", "tmp", "worklists", "backups"):
        d = STATE / sub
        assert d.stat().st_uid == user.pw_uid and oct(d.stat().st_mode & 0o777) == "0o750"
    unit = Path("/lib/systemd/system/pacs-appliance.service")
    assert unit.exists()
    verify = run(["systemd-analyze", "verify", str(unit)])
    assert verify.returncode == 0, verify.stderr
    assert "EMR user is 'emr'" in installed
    assert Path("/usr/share/pacs-appliance/pacs-appliance.conf").exists()  # the nginx site


def test_installed_virtualenv_holds_the_pinned_packages(installed):
    out = run(["/opt/venvs/pacs-appliance/bin/python", "-m", "pip", "list", "--format=json"])
    assert out.returncode == 0, out.stderr
    installed_versions = {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"]
                          for p in json.loads(out.stdout)}
    pins = _pins()
    unpinned = {n: v for n, v in installed_versions.items()
                if n not in ("pacs-appliance", "pip") and pins.get(n) != v}
    assert unpinned == {}


def test_installed_check_config(installed):
    out = root(["/usr/bin/pacs-appliance", "check-config", "--config", str(CONF)])
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


def _serve_as_service_user():
    runtime = STATE / "index" / "pacs-appliance.runtime.json"
    proc = subprocess.Popen([*SUDO, "runuser", "-u", "pacs-appliance", "--", "/usr/bin/pacs-appliance",
                             "serve", "--config", str(CONF)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            info = json.loads(runtime.read_text())
            if info.get("dicom_port"):
                return proc, info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("installed daemon not ready")


def test_installed_daemon_stores_and_answers_qido(installed, tmp_path):
    (image,) = generate_singles(tmp_path, 1)
    ds = pydicom.dcmread(image, stop_before_pixels=True)
    proc, info = _serve_as_service_user()
    try:
        out = run(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(info["dicom_port"]), str(image)])
        assert out.returncode == 0, out.stderr
        password = re.search(r'"emr": "([^"]+)"', CONF.read_text()).group(1)
        url = (f"http://127.0.0.1:{info['http_port']}/dicom-web/studies?"
               + urllib.parse.urlencode({"StudyInstanceUID": ds.StudyInstanceUID}))
        anonymous = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        assert anonymous.stdout == "401"
        answer = run(["curl", "-sf", "-u", f"emr:{password}", url])
        assert answer.returncode == 0
        assert json.loads(answer.stdout)[0]["0020000D"]["Value"] == [ds.StudyInstanceUID]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    stored = [p for p in (STATE / "storage").rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(stored) == 1 and stored[0].stat().st_uid == pwd.getpwnam("pacs-appliance").pw_uid


def _repack(deb: Path, version: str, dest: Path) -> Path:
    """The same package under another version (an upgrade), without rebuilding."""
    tree = dest / "tree"
    assert run(["dpkg-deb", "-R", str(deb), str(tree)]).returncode == 0
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    out_deb = dest / f"{PACKAGE}_{version}_upgrade.deb"
    out = run(["dpkg-deb", "-Zgzip", "-z1", "-b", str(tree), str(out_deb)], timeout=600)
    assert out.returncode == 0, out.stderr
    return out_deb


def test_reinstall_and_upgrade_keep_config_and_data(installed, deb, tmp_path):
    config_before = CONF.read_bytes()
    data_before = sorted(p.name for p in (STATE / "storage").rglob("*.dcm"))
    assert data_before, "the previous test stored an image"
    assert apt("install", "--reinstall", f"./{deb.name}", cwd=deb.parent).returncode == 0
    upgrade = _repack(deb, installed_version() + "+upgrade1", tmp_path)
    out = apt("install", f"./{upgrade.name}", cwd=upgrade.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert installed_version().endswith("+upgrade1")
    assert CONF.read_bytes() == config_before
    assert sorted(p.name for p in (STATE / "storage").rglob("*.dcm")) == data_before
    assert root(["/usr/bin/pacs-appliance", "check-config", "--config", str(CONF)]).returncode == 0


def test_remove_and_purge_keep_the_images(installed):
    images = sorted(p.name for p in (STATE / "storage").rglob("*.dcm"))
    assert images
    assert apt("remove", PACKAGE).returncode == 0
    assert not Path("/usr/bin/pacs-appliance").exists()
    assert sorted(p.name for p in (STATE / "storage").rglob("*.dcm")) == images
    out = apt("purge", PACKAGE)
    assert out.returncode == 0
    assert "images and index kept in /var/lib/pacs-appliance" in out.stdout + out.stderr
    assert not CONF.exists()
    assert sorted(p.name for p in (STATE / "storage").rglob("*.dcm")) == images
