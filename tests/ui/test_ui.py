"""The web UI in a real browser: headless Debian Chromium driven by Selenium against
the daemon as a subprocess, with authentication on and data stored through STOW-RS.

Log in, search, open a study, thumbnails loaded, cine advances at the data's frame
rate, upload stores, the worklist lists an item (with its MPPS state), the system
page shows the disk, and no console error on any page; the ZIP download equals the
stored files, delete removes, fix patient shows the corrected name, send reaches a
second daemon.
"""

from __future__ import annotations

import base64
import io
import re
import statistics
import time
import zipfile

import pytest
import requests
from pydicom.uid import generate_uid

from tests.support import new_dataset
from tests.ui.conftest import PASSWORD, TODAY, USER, stow

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException, StaleElementReferenceException, TimeoutException)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CINE_FRAMES = 12
ROWS, COLUMNS = 48, 64


def part10(study: str, series: str, *, name: str, pid: str, day: str, modality: str,
           accession: str, number: int = 1, frames: int = 1, series_number: int = 1) -> bytes:
    """One small 8-bit image (a cine when ``frames`` > 1: FrameTime 50 ms, 20 fps)."""
    ds = new_dataset(US_MULTIFRAME if frames > 1 else SECONDARY_CAPTURE)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, pid, "19800102", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = day, "101500", accession
    ds.StudyDescription, ds.SeriesDescription = f"{modality} exam", f"series {series_number}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, number
    ds.Rows, ds.Columns, ds.SamplesPerPixel = ROWS, COLUMNS, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = "50"  # PS3.3 C.7.6.5.1.2: ms per frame
        ds.FrameIncrementPointer = 0x00181063
    ds.PixelData = b"".join(bytes(((x + 17 * f) % 256) for x in range(ROWS * COLUMNS))
                            for f in range(frames))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Data:
    """The studies stored for the module."""

    cine_study = generate_uid()
    cine_series, still_series = generate_uid(), generate_uid()
    old_study, old_series = generate_uid(), generate_uid()
    other_study, other_series = generate_uid(), generate_uid()


@pytest.fixture(scope="module")
def data(http):
    d = Data()
    stow(http, [
        part10(d.cine_study, d.cine_series, name="Smith^Anna", pid="P1", day=TODAY, modality="US",
               accession="A1", frames=CINE_FRAMES),
        part10(d.cine_study, d.still_series, name="Smith^Anna", pid="P1", day=TODAY, modality="US",
               accession="A1", series_number=2),
        *(part10(d.old_study, d.old_series, name="Jones^Bob", pid="P2", day="20200102",
                 modality="CT", accession="A2", number=n) for n in (1, 2, 3)),
        part10(d.other_study, d.other_series, name="Smithers^Carl", pid="P3", day="20230506",
               modality="CR", accession="A3"),
    ])
    return d


def wait(driver, condition, timeout: float = 10.0, what: str = ""):
    try:
        # A page being redrawn (a list refreshed) may drop an element between two looks.
        return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException)).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what or condition}: "
                             f"{driver.find_element(By.TAG_NAME, 'body').text[:800]}") from None


def console_errors(driver) -> list[str]:
    """The SEVERE console messages since the last call (Chromium's log is drained)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def page(browser, ui_daemon, data):
    """The browser, logged in (HTTP Basic, as a person would through the URL once:
    the browser then keeps the credentials for the origin)."""
    base = f"http://127.0.0.1:{ui_daemon.http_port}"
    browser.get(f"http://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{ui_daemon.http_port}/ui/icon.svg")
    browser.get(base + "/#/studies")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.study-row"), what="the study list")
    browser.base = base
    return browser


def go(page, fragment: str) -> None:
    """Open a page of the UI afresh (the same URL again reloads it)."""
    url = f"{page.base}/#{fragment}"
    if page.current_url == url:
        page.refresh()
    else:
        page.get(url)


def rows(page) -> list[str]:
    """The study rows shown, read at once (the list may be redrawn meanwhile)."""
    return page.execute_script(
        "return [...document.querySelectorAll('tr.study-row')].map(r => r.dataset.uid)")


# -- log in -------------------------------------------------------------------------------

def test_the_ui_needs_the_same_credentials(http, ui_daemon):
    base = f"http://127.0.0.1:{ui_daemon.http_port}"
    for path in ("/", "/ui/app.js", "/status", "/status/disk-history", "/ui/worklist"):
        assert requests.get(base + path, timeout=10).status_code == 401, path
        assert requests.get(base + path, auth=(USER, "wrong"), timeout=10).status_code == 401, path
    r = http.get(base + "/")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert '"name": "Clinic UI"' in r.text and "{{SETTINGS}}" not in r.text
    # The page's files are named by digest and cached for good; by name, revalidated.
    src = re.search(r'src="(/ui/app\.js\?v=[0-9a-f]{12})"', r.text).group(1)
    assert http.get(base + src).headers["Cache-Control"] == "max-age=31536000, immutable"
    assert http.get(base + "/ui/app.js").headers["Cache-Control"] == "no-cache"
    # Only shipped files, never a path from the URL.
    assert http.get(base + "/ui/..%2Fui.py").status_code == 404
    assert http.get(base + "/ui/nothing.js").status_code == 404
    assert http.get(base + "/ui/index.html").status_code == 404  # only as /, filled in


def test_log_in_and_list_newest_first(page, data):
    assert page.find_element(By.ID, "server-name").text == "Clinic UI"
    # Newest first: today's, 2023, 2020.
    assert rows(page)[:3] == [data.cine_study, data.other_study, data.old_study]
    assert console_errors(page) == []


# -- search -------------------------------------------------------------------------------

def search(page, **fields) -> list[str]:
    go(page, "/studies")
    form = wait(page, lambda d: d.find_element(By.ID, "study-search"))
    for name, value in fields.items():
        element = form.find_element(By.NAME, name)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.clear()
            element.send_keys(value)
    before = page.current_url
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(page, lambda d: d.current_url != before and d.find_elements(By.CSS_SELECTOR, ".pager"), what="results")
    return rows(page)


def test_search(page, data):
    # Case-insensitive, a part of the name: both Smiths, newest first.
    assert search(page, name="smith") == [data.cine_study, data.other_study]
    assert search(page, name="SM*TH^anna") == [data.cine_study]
    assert search(page, id="P2") == [data.old_study]
    assert search(page, accession="A3") == [data.other_study]
    assert search(page, date="today") == [data.cine_study]
    assert search(page, modality="CT") == [data.old_study]
    go(page, "/studies")
    form = wait(page, lambda d: d.find_element(By.ID, "study-search"))
    Select(form.find_element(By.NAME, "date")).select_by_value("custom")
    page.execute_script("document.querySelector('[name=from]').value='2023-01-01';"
                        "document.querySelector('[name=to]').value='2023-12-31';")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(page, lambda d: rows(d) == [data.other_study], what="the 2023 study")
    assert search(page, name="nobody") == []
    assert "No study matches" in page.find_element(By.ID, "study-results").text
    assert console_errors(page) == []


def test_paging(page, http, data):
    # 50 a page: more studies than that gives a next page and back.
    extra = [part10(generate_uid(), generate_uid(), name=f"Page^{i:02d}", pid=f"PG{i}",
                    day="20100101", modality="OT", accession=f"PG{i}") for i in range(50)]
    stow(http, extra)
    go(page, "/studies")
    wait(page, lambda d: len(rows(d)) == 50, what="a full page")
    first = rows(page)
    page.find_element(By.ID, "next-page").click()
    wait(page, lambda d: rows(d) and rows(d) != first, what="page 2")
    assert len(rows(page)) == 53 - 50 and not set(rows(page)) & set(first)
    assert page.find_element(By.ID, "next-page").get_attribute("disabled") is not None
    page.find_element(By.ID, "prev-page").click()
    wait(page, lambda d: rows(d) == first, what="page 1 again")


# -- study, thumbnails, cine --------------------------------------------------------------

def open_study(page, uid: str) -> None:
    go(page, "/studies")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-uid="{uid}"]'), what="the row")
    page.find_element(By.CSS_SELECTOR, f'tr[data-uid="{uid}"] a').click()
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".series-card"), what="the study page")


def loaded_images(page, selector: str) -> list[int]:
    return page.execute_script(
        f"return [...document.querySelectorAll('{selector}')].map(i => i.complete ? i.naturalWidth : -1)")


def test_study_page_and_thumbnails(page, data):
    open_study(page, data.cine_study)
    assert page.find_element(By.ID, "patient-name").text == "Smith Anna"
    header = page.find_element(By.CSS_SELECTOR, ".study-header").text
    assert "P1" in header and "A1" in header and "2 / 2" in header
    wait(page, lambda d: (w := loaded_images(d, "img.thumb")) and all(x > 0 for x in w), what="thumbnails")
    assert len(loaded_images(page, "img.thumb")) == 2
    counts = [c.text for c in page.find_elements(By.CSS_SELECTOR, ".series-card .count")]
    assert counts == ["1 image(s)", "1 image(s)"]
    viewer = page.find_element(By.ID, "open-viewer")
    assert viewer.get_attribute("href").endswith(f"/viewer/?StudyInstanceUIDs={data.cine_study}")
    # The attributes of the instance shown, with keywords.
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "details.attributes"), what="attributes")
    page.find_element(By.CSS_SELECTOR, "details.attributes summary").click()
    wait(page, lambda d: "PatientName" in d.find_element(By.CSS_SELECTOR, "details.attributes").text,
         what="the attribute table")
    table = page.find_element(By.CSS_SELECTOR, "details.attributes").text
    assert "(0018,1063) FrameTime DS 50" in table
    assert console_errors(page) == []


def served_row(http, data, frame: int) -> list[int]:
    """The first row of a cine frame as the server renders it (JPEG decoded by Pillow)."""
    from PIL import Image

    instance = http.get(http.base + f"/dicom-web/studies/{data.cine_study}/series/{data.cine_series}"
                        "/instances").json()[0]["00080018"]["Value"][0]
    r = http.get(http.base + f"/dicom-web/studies/{data.cine_study}/series/{data.cine_series}"
                 f"/instances/{instance}/frames/{frame}/rendered", headers={"Accept": "image/jpeg"})
    assert r.status_code == 200
    image = Image.open(io.BytesIO(r.content)).convert("L")
    return [image.getpixel((x, 0)) for x in range(image.width)]


def test_cine_advances_at_the_data_frame_rate(page, http, data):
    open_study(page, data.cine_study)
    wait(page, lambda d: d.find_elements(By.ID, "play"), what="the cine controls")
    assert page.find_element(By.ID, "frame-rate").text == "20 fps (FrameTime)"
    assert page.find_element(By.ID, "frame-label").text == f"1 / {CINE_FRAMES}"
    page.find_element(By.ID, "play").click()
    t0 = time.monotonic()
    seen = set()

    def advanced(d):
        seen.add(d.find_element(By.ID, "frame-label").text)
        return len(seen) >= 6
    wait(page, advanced, what="frames advancing")
    elapsed = time.monotonic() - t0
    # 5 frame steps at 20 fps take about 0.25 s; far less would ignore the rate.
    assert elapsed >= 0.2, elapsed
    page.find_element(By.ID, "play").click()  # pause
    time.sleep(0.1)
    label = page.find_element(By.ID, "frame-label").text
    time.sleep(0.4)
    assert page.find_element(By.ID, "frame-label").text == label
    # The arrow keys step through the frames.
    before = int(label.split(" /")[0])
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    wait(page, lambda d: d.find_element(By.ID, "frame-label").text
         == f"{before % CINE_FRAMES + 1} / {CINE_FRAMES}", what="the next frame")
    # The slider shows a chosen frame, rendered by the server, drawn at its size.
    page.execute_script("const s = document.getElementById('frame-slider'); s.value = 7;"
                        "s.dispatchEvent(new Event('input'));")
    wait(page, lambda d: d.find_element(By.ID, "cine").get_attribute("data-frame") == "7",
         what="frame 7 drawn")
    assert page.execute_script("const c = document.getElementById('cine'); return [c.width, c.height]") \
        == [COLUMNS, ROWS]
    # What is drawn is frame 7 as the server renders it (decoded here with Pillow),
    # not another frame: frames differ by 17 grey levels.
    drawn = page.execute_script(
        "return Array.from(document.getElementById('cine').getContext('2d')"
        ".getImageData(0, 0, arguments[0], 1).data).filter((_, i) => i % 4 === 0)", COLUMNS)
    assert abs(statistics.mean(drawn) - statistics.mean(served_row(http, data, 7))) < 4
    assert abs(statistics.mean(drawn) - statistics.mean(served_row(http, data, 6))) > 8
    assert console_errors(page) == []


def test_an_instance_without_image(page, http):
    # A structured report: no thumbnail and no frame, said in words; its attributes shown.
    ds = new_dataset("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    study = generate_uid()
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = \
        "Report^Rita", "R1", study, generate_uid()
    ds.StudyDate, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = TODAY, "SR", 1, 1
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    stow(http, [buf.getvalue()])
    open_study(page, study)
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, ".no-image"), what="the no-image note")
    assert page.find_element(By.CSS_SELECTOR, ".series-card .nothumb").text == "SR"
    page.find_element(By.CSS_SELECTOR, "details.attributes summary").click()
    wait(page, lambda d: "Report^Rita" in d.find_element(By.CSS_SELECTOR, "details.attributes").text,
         what="the attributes")
    # Only the two refused renderings were logged (as failed loads), nothing else.
    assert all("/thumbnail" in m or "/rendered" in m for m in console_errors(page))


# -- upload -------------------------------------------------------------------------------

def test_upload_stores_each_file(page, http, tmp_path):
    study = generate_uid()
    good = tmp_path / "good.dcm"
    good.write_bytes(part10(study, generate_uid(), name="Upload^Una", pid="U1", day=TODAY,
                            modality="OT", accession="U1"))
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    go(page, "/upload")
    files = wait(page, lambda d: d.find_element(By.ID, "upload-files"))
    files.send_keys(f"{good}\n{junk}")
    wait(page, lambda d: "2 / 2" in d.find_element(By.ID, "upload-summary").text, what="both answers")
    assert page.find_element(By.ID, "upload-summary").text == "2 / 2: 1 stored, 1 failed"
    results = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
               for r in page.find_elements(By.CSS_SELECTOR, "tr.upload")}
    assert results["good.dcm"] == "stored" and results["notes.txt"].startswith("refused")
    r = http.get(http.base + f"/dicom-web/studies?StudyInstanceUID={study}")
    assert r.status_code == 200 and len(r.json()) == 1
    # The stored file's row links to its study.
    page.find_element(By.LINK_TEXT, "open").click()
    wait(page, lambda d: d.find_elements(By.ID, "patient-name"), what="the uploaded study")
    assert page.find_element(By.ID, "patient-name").text == "Upload Una"
    # The browser logs the failed file's 409 as a failed resource load: expected here.
    assert [m for m in console_errors(page) if "409" not in m] == []


def test_upload_a_folder_and_a_drop(page, http, tmp_path):
    # A folder chosen (webkitdirectory): every file below it, sub-folders included.
    study, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / "exam"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate((folder / "a.dcm", folder / "sub" / "b.dcm")):
        path.write_bytes(part10(study, series_uid, name="Folder^Fay", pid="U2", day=TODAY,
                                modality="OT", accession="U2", number=i + 1))
    go(page, "/upload")
    wait(page, lambda d: d.find_element(By.ID, "upload-folder")).send_keys(str(folder))
    wait(page, lambda d: d.find_element(By.ID, "upload-summary").text == "2 / 2: 2 stored, 0 failed",
         what="the folder stored")
    names = sorted(r.find_element(By.TAG_NAME, "td").text for r in page.find_elements(By.CSS_SELECTOR, "tr.upload"))
    assert names == ["exam/a.dcm", "exam/sub/b.dcm"]
    series = http.get(http.base + f"/dicom-web/studies/{study}/series").json()
    assert series[0]["00201209"]["Value"] == [2]
    # Dropped on the zone (a drop event carrying a file, as the browser makes it).
    dropped = generate_uid()
    data = base64.b64encode(part10(dropped, generate_uid(), name="Drop^Dora", pid="U3", day=TODAY,
                                   modality="OT", accession="U3")).decode()
    go(page, "/upload")
    wait(page, lambda d: d.find_element(By.ID, "dropzone"))
    page.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.dcm", {type: "application/dicom"}));
        document.getElementById("dropzone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));""", data)
    wait(page, lambda d: d.find_element(By.ID, "upload-summary").text == "1 / 1: 1 stored, 0 failed",
         what="the dropped file stored")
    assert len(http.get(http.base + f"/dicom-web/studies?StudyInstanceUID={dropped}").json()) == 1
    assert console_errors(page) == []


def submit_form(page, opener: str, form_id: str, fields: dict[str, str]) -> None:
    """Click the button that opens a form, replace its fields' values, submit."""
    page.find_element(By.ID, opener).click()
    form = wait(page, lambda d: d.find_element(By.ID, form_id), what=form_id)
    for name, value in fields.items():
        element = form.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


# -- worklist ------------------------------------------------------------------------------

def test_worklist_lists_adds_and_shows_mpps(page, http, ui_daemon):
    item = {"Tags": {"PatientName": "WL^Wanda", "PatientID": "W1", "AccessionNumber": "WACC1",
                     "ScheduledProcedureStepSequence": [{"Modality": "US",
                                                         "ScheduledProcedureStepStartDate": TODAY,
                                                         "ScheduledProcedureStepStartTime": "0930"}]}}
    r = http.post(http.base + "/worklists/create", json=item)
    assert r.status_code == 200, r.text
    _mpps_in_progress(ui_daemon, "WACC1")
    go(page, "/worklist")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.wl-item"), what="the item")
    row = page.find_element(By.CSS_SELECTOR, "tr.wl-item").text
    assert "WL Wanda" in row and "W1" in row and "WACC1" in row and "09:30" in row
    assert page.find_element(By.CSS_SELECTOR, "tr.wl-item td.mpps").text == "IN PROGRESS"
    # Add one through the form: the same validation as the REST API.
    submit_form(page, "add-worklist", "worklist-form", {
        "PatientName": "WL^Walter", "PatientID": "W2", "Modality": "us",
        "ScheduledProcedureStepStartTime": "1100"})
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.wl-item")) == 2, what="two items")
    listed = http.get(http.base + "/worklists").json()
    walter = [i for i in listed if i["Tags"].get("PatientID") == "W2"]
    assert walter and walter[0]["Tags"]["ScheduledProcedureStepSequence"][0]["Modality"] == "US"
    # Edit it: the other attributes (its StudyInstanceUID...) are kept.
    item_id = walter[0]["ID"]
    page.find_element(By.CSS_SELECTOR, f'tr.wl-item[data-id="{item_id}"] button.edit').click()
    form = wait(page, lambda d: d.find_element(By.ID, "worklist-form"), what="the edit form")
    assert form.find_element(By.NAME, "PatientName").get_attribute("value") == "WL^Walter"
    time_input = form.find_element(By.NAME, "ScheduledProcedureStepStartTime")
    time_input.clear()
    time_input.send_keys("1215")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(page, lambda d: "12:15" in d.find_element(By.CSS_SELECTOR, f'tr.wl-item[data-id="{item_id}"]').text,
         what="the edited time")
    edited = http.get(http.base + f"/worklists/{item_id}").json()["Tags"]
    assert edited["StudyInstanceUID"] == walter[0]["Tags"]["StudyInstanceUID"]
    assert edited["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepStartTime"] == "1215"
    # Remove it (after a confirmation).
    page.find_element(By.CSS_SELECTOR, f'tr.wl-item[data-id="{item_id}"] button.remove').click()
    page.switch_to.alert.accept()
    wait(page, lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr.wl-item[data-id="{item_id}"]'),
         what="the item removed")
    assert http.get(http.base + f"/worklists/{item_id}").status_code == 404
    # A bad date is refused with the API's message, shown to the user.
    submit_form(page, "add-worklist", "worklist-form",
                {"ScheduledProcedureStepStartDate": "2024-13-99"})
    wait(page, lambda d: d.find_element(By.ID, "banner").is_displayed(), what="the error")
    assert "400" in page.find_element(By.ID, "banner").text
    assert [m for m in console_errors(page) if "400" not in m] == []


def _mpps_in_progress(daemon, accession: str) -> None:
    """An MPPS N-CREATE (IN PROGRESS) as a scanner sends it, with pynetdicom."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID, step.AccessionNumber = generate_uid(), accession
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientID, ds.Modality, ds.PerformedProcedureStepID = "W1", "US", "PPS1"
    ds.PerformedStationAETitle = "SCANNER"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = TODAY, "093500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", daemon.dicom_port, ae_title="ORTHANC")
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, generate_uid())
        assert status.Status == 0x0000, status
    finally:
        assoc.release()


# -- system -------------------------------------------------------------------------------

def test_system_page_shows_disk_and_status(page, http, ui_daemon):
    # A `pacs-appliance import` run names itself to the daemon: one file of three here
    # (a file already stored, so nothing else changes).
    stored = next(ui_daemon.storage.rglob("*.dcm")).read_bytes()
    r = http.post(http.base + "/instances", data=stored, headers={"X-Pacs-Import": "uitest 3"})
    assert r.json()["Status"] == "AlreadyStored"
    go(page, "/system")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#disk .fs"), what="the disk")
    disk = page.find_element(By.ID, "disk").text
    assert "storage" in disk and "% used" in disk and "free of" in disk
    # The plot has the sample taken at start (one an hour after that).
    history = http.get(http.base + "/status/disk-history").json()
    assert len(history) >= 1 and history[0]["filesystems"][0]["total"] > 0
    assert page.find_elements(By.CSS_SELECTOR, "#disk-plot polyline.used")
    status = page.find_element(By.ID, "status-table").text
    assert "Version" in status and "Stored" in status and "Last backup" in status
    assert "Worklist" in status
    assert "1/3 files, 0 stored, 1 already here" in status
    assert "null" not in page.find_element(By.ID, "app").text.split()
    assert page.find_element(By.ID, "audit").text.startswith("Deletes and corrections")
    assert console_errors(page) == []


# -- what other branches add ---------------------------------------------------------------

def test_zip_contents_equal_the_stored_files(page, http, ui_daemon, data):
    url = f"/dicom-web/studies/{data.old_study}?accept=application/zip"
    r = http.get(http.base + url)
    assert r.headers.get("Content-Type", "").split(";")[0] == "application/zip", r.status_code
    open_study(page, data.old_study)
    assert page.find_element(By.ID, "download-zip").get_attribute("href") == http.base + url
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        got = sorted(z.read(n) for n in z.namelist() if not n.endswith("/"))
    stored = sorted(p.read_bytes() for p in ui_daemon.storage.rglob("*.dcm")
                    if data.old_study.encode() in p.read_bytes())
    assert len(got) == 3 and got == stored


def test_delete_removes(page, http, data):
    victim, series = generate_uid(), generate_uid()
    stow(http, [part10(victim, series, name="Delete^Me", pid="D1", day=TODAY, modality="OT",
                       accession="D1")])
    open_study(page, victim)
    page.find_element(By.ID, "delete-study").click()
    page.switch_to.alert.accept()
    wait(page, lambda d: "#/studies" in d.current_url and d.find_elements(By.CSS_SELECTOR, ".pager"),
         what="the list")
    assert victim not in rows(page)
    assert http.get(http.base + f"/dicom-web/studies?StudyInstanceUID={victim}").json() == []


def test_fix_patient_shows_the_corrected_name(page, http):
    study = generate_uid()
    stow(http, [part10(study, generate_uid(), name="Wrong^Name", pid="F1", day=TODAY,
                       modality="OT", accession="F1")])
    open_study(page, study)
    submit_form(page, "fix-patient", "fix-form", {"PatientName": "Right^Name"})
    wait(page, lambda d: d.find_elements(By.ID, "patient-name")
         and d.find_element(By.ID, "patient-name").text == "Right Name", what="the corrected name")
    assert http.get(http.base + "/dicom-web/studies?PatientName=Right^Name").json()
    assert console_errors(page) == []


def test_send_shows_progress(page, http, data, peer):
    # The daemon has one destination, "peer": another daemon. The button sends the
    # study through the send queue; the form shows the job until it succeeded.
    assert http.get(http.base + "/modalities").json() == ["peer"]
    open_study(page, data.old_study)
    wait(page, lambda d: d.find_elements(By.ID, "send-study"), what="the send button")
    page.find_element(By.ID, "send-study").click()
    form = wait(page, lambda d: d.find_element(By.ID, "send-form"), what="the send form")
    Select(form.find_element(By.NAME, "dest")).select_by_value("dicom:peer")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(page, lambda d: d.find_element(By.CSS_SELECTOR, ".job-state").text.startswith("Success"),
         timeout=60, what="the job done")
    assert page.find_element(By.CSS_SELECTOR, "form.send progress").get_attribute("value") == "100"
    r = requests.get(f"http://127.0.0.1:{peer.http_port}/dicom-web/studies?StudyInstanceUID={data.old_study}",
                     timeout=10)
    assert r.status_code == 200 and r.json()[0]["00201208"]["Value"] == [3]
    assert console_errors(page) == []


def test_console_stayed_clean(page):
    assert [m for m in console_errors(page) if "409" not in m and "400" not in m] == []
