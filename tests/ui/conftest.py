"""Fixtures of the web UI's browser tests: one daemon with authentication, data
stored through STOW-RS, and one headless Debian Chromium driven by Selenium
(Debian's chromium-driver; Selenium never downloads a browser or a driver here).

The module-scoped fixtures are shared by the tests of a module, so the browser
starts once (a couple of seconds) rather than per test.
"""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import pytest
import requests

from tests.support import Daemon, base_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
USER, PASSWORD = "clinic", "s3cret pw"
AUTH = (USER, PASSWORD)
# The one "today" of these tests: the data is stored with it, and the browser's clock is
# pinned to it (PINNED_DAY), so a run that crosses midnight finds the page's "today"
# (app.js: new Date()) and the fixtures' the same day.
TODAY_DATE = date.today()
TODAY = TODAY_DATE.strftime("%Y%m%d")
# Run before the page's own scripts in every document: the clock reads noon of
# TODAY_DATE (local time, as the page reads it) when the document loads, then runs on.
PINNED_DAY = """(() => {
  const Real = Date;
  const shift = new Real(%d, %d, %d, 12).getTime() - Real.now();
  globalThis.Date = class extends Real {
    constructor(...args) { if (args.length) super(...args); else super(Real.now() + shift); }
    static now() { return Real.now() + shift; }
  };
})();"""


def _running(root: Path, config: dict):
    """Start a daemon, yield it, stop it (or kill it if it will not stop)."""
    d = Daemon(root, config).start()
    yield d
    try:
        d.stop()
    except Exception:  # noqa: BLE001 - stopped or killed by a test
        d.kill()


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """A second daemon: the UI daemon's one send destination ("peer")."""
    root = tmp_path_factory.mktemp("peer")
    yield from _running(root, base_config(root, DicomAet="PEER"))


@pytest.fixture(scope="module")
def ui_daemon(tmp_path_factory, peer):
    """A daemon with Basic authentication, the worklist server on, and ``peer`` as its
    one DICOM destination."""
    root = tmp_path_factory.mktemp("ui")
    (root / "worklists").mkdir()
    config = base_config(root, Name="Clinic UI", AuthenticationEnabled=True,
                         RegisteredUsers={USER: PASSWORD},
                         Worklists={"Enable": True, "Database": str(root / "worklists")},
                         DicomModalities={"peer": ["PEER", "127.0.0.1", peer.dicom_port]},
                         ViewerUrlTemplate="/viewer/?StudyInstanceUIDs={StudyInstanceUID}")
    yield from _running(root, config)


@pytest.fixture(scope="module")
def http(ui_daemon):
    """A requests session with the credentials, and the base URL."""
    s = requests.Session()
    s.auth = AUTH
    s.base = f"http://127.0.0.1:{ui_daemon.http_port}"  # type: ignore[attr-defined]
    yield s
    s.close()


def stow(http, files: list[bytes]) -> dict:
    """STOW-RS the Part-10 files in one request; the response (status 200 asserted)."""
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + f + b"\r\n" for f in files) + b"--" + boundary.encode() + b"--\r\n"
    r = http.post(http.base + "/dicom-web/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, console messages kept (goog:loggingPrefs)."""
    # tests/run.sh installs both: a missing browser is a failure, not a skip.
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "apt-get install chromium chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PINNED_DAY % (
        TODAY_DATE.year, TODAY_DATE.month - 1, TODAY_DATE.day)})
    yield driver
    driver.quit()
