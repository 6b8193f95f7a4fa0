"""Modality Worklist C-FIND end to end: the real daemon watching a real folder, queried
with DCMTK's findscu -W and pynetdicom."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.support import run
from tests.worklist.helpers import (
    find,
    mwl_query,
    poll,
    settle,
    start_wl_daemon,
    wl_bytes,
    worklist_dataset,
    write_wl,
)

PENDING, SUCCESS, CANCEL = 0xFF00, 0x0000, 0xFE00

# Some queries below hold deliberately invalid values: pydicom warns when they are set.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def wl(tmp_path_factory, pynetdicom_env):
    """A daemon serving a worklist folder, shared by the tests of this module (each test
    uses its own patient IDs and file names)."""
    root = tmp_path_factory.mktemp("mwl")
    d = start_wl_daemon(root, env=pynetdicom_env(root))
    d.folder = Path(d.config["Worklists"]["Database"])
    yield d
    d.stop()


def ids(port: int, **keys) -> list[str]:
    """PatientIDs answered for a query (PatientID is always asked for)."""
    keys.setdefault("PatientID", "")
    statuses, answers = find(port, mwl_query(**keys))
    assert statuses[-1] == SUCCESS, statuses
    return sorted(str(a.PatientID) for a in answers)


def reload(daemon, **changes) -> None:
    """Rewrite the daemon's config with ``changes`` and SIGHUP it; wait for the log line."""
    config = dict(daemon.config)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            value = {**config[key], **value}
        config[key] = value
    daemon.config = config
    daemon.config_path.write_text(json.dumps(config))
    count = daemon.log().count("SIGHUP: users, DICOM access rules and worklist options reloaded")
    daemon.proc.send_signal(signal.SIGHUP)
    poll(lambda: daemon.log().count("SIGHUP: users, DICOM access rules and worklist options reloaded") > count)


# --------------------------------------------------------------------------- the watched folder


@pytest.mark.fast_path_only
def test_missing_folder_is_created_at_start(wl):
    assert wl.folder.is_dir()
    assert "does not exist: creating it" in wl.log()


@pytest.mark.fast_path_only
def test_create_modify_rename_delete_are_seen_without_restart(wl):
    port, folder = wl.dicom_port, wl.folder
    started = time.monotonic()
    write_wl(folder, "w1.wl", patient_id="W1", accession="W-ACC")
    poll(lambda: ids(port, AccessionNumber="W-ACC") == ["W1"])
    seen = time.monotonic() - started
    assert seen < 1.5, f"a new .wl file took {seen:.2f} s to be answered"
    write_wl(folder, "w1.wl", patient_id="W1-CHANGED", accession="W-ACC")  # modified in place
    poll(lambda: ids(port, AccessionNumber="W-ACC") == ["W1-CHANGED"])
    os.rename(folder / "w1.wl", folder / "w1-renamed.WL")  # upper-case suffix counts too
    poll(lambda: ids(port, AccessionNumber="W-ACC") == ["W1-CHANGED"])
    os.rename(folder / "w1-renamed.WL", folder / "w1.txt")  # renamed away from .wl
    poll(lambda: ids(port, AccessionNumber="W-ACC") == [])
    os.rename(folder / "w1.txt", folder / "w1.wl")
    poll(lambda: ids(port, AccessionNumber="W-ACC") == ["W1-CHANGED"])
    (folder / "w1.wl").unlink()
    poll(lambda: ids(port, AccessionNumber="W-ACC") == [])
    assert "watching it again" not in wl.log()  # file changes are not folder changes


@pytest.mark.fast_path_only
def test_files_written_before_a_query_are_in_its_answer(wl, tmp_path):
    """Read your own writes: no polling, each query right after the writes. Four files
    per round (two written in place, two renamed into place), then one rewritten in place
    with a value of the same length, one replaced, one deleted."""
    port, folder = wl.dicom_port, wl.folder
    for round_ in range(30):
        accession = f"RYW{round_:02d}"
        names = [f"RYW{round_:02d}-{n}" for n in range(4)]
        for n, pid in enumerate(names):
            write_wl(folder, f"{pid.lower()}.wl", patient_id=pid, accession=accession,
                     atomic=n % 2 == 1)
        assert ids(port, AccessionNumber=accession) == names, f"round {round_}"
        pid = names[0]
        write_wl(folder, f"{pid.lower()}.wl", patient_id=pid[:-1] + "X", accession=accession,
                 atomic=False)  # rewritten in place: same length, likely the same mtime
        write_wl(folder, f"{names[1].lower()}.wl", patient_id="REPLACED", accession=accession)
        (folder / f"{names[2].lower()}.wl").unlink()
        assert ids(port, AccessionNumber=accession) == sorted(
            ["REPLACED", pid[:-1] + "X", names[3]]), f"round {round_}"
    # DCMTK's findscu, right after four files, as the clinic's test was
    for round_ in range(5):
        accession = f"RYWF{round_}"
        for n in range(4):
            write_wl(folder, f"rywf{round_}-{n}.wl", patient_id=f"F{round_}{n}",
                     accession=accession)
        result = run(["findscu", "-W", "-v", "-aec", "ORTHANC", "-k",
                      f"AccessionNumber={accession}", "-k", "PatientID", "127.0.0.1", str(port)])
        assert result.returncode == 0, result.stderr
        assert (result.stdout + result.stderr).count("(Pending)") == 4, f"round {round_}"


def test_restart_serves_unchanged_files_from_the_parse_cache(tmp_path):
    folder = tmp_path / "worklists"
    folder.mkdir()
    long_ago = (1_000_000_000 * 10**9,) * 2  # written long before: not "just written"
    for n in range(20):
        os.utime(write_wl(folder, f"p{n:02d}.wl", patient_id=f"PC{n:02d}", accession="PC-ACC"),
                 ns=long_ago)
    settle()
    d = start_wl_daemon(tmp_path)
    try:
        assert len(ids(d.dicom_port, AccessionNumber="PC-ACC")) == 20
        assert "20 items (0 from the parse cache, 20 files read)" in d.log()
    finally:
        d.stop()
    assert (tmp_path / "index" / "pacs-appliance.worklist-cache.sqlite").is_file()
    os.utime(write_wl(folder, "p00.wl", patient_id="PC-NEW", accession="PC-ACC"), ns=long_ago)
    d = start_wl_daemon(tmp_path)
    try:
        assert "PC-NEW" in ids(d.dicom_port, AccessionNumber="PC-ACC")
        assert "20 items (19 from the parse cache, 1 files read)" in d.log()
    finally:
        d.stop()


@pytest.mark.fast_path_only
def test_temp_file_then_rename_writer(wl):
    # What editors and most tools do: write "x.tmp", rename it to "x.wl".
    temp = wl.folder / "t1.wl.part"
    temp.write_bytes(wl_bytes(worklist_dataset(patient_id="T1", accession="T-ACC")))
    os.rename(temp, wl.folder / "t1.wl")
    poll(lambda: ids(wl.dicom_port, AccessionNumber="T-ACC") == ["T1"])


@pytest.mark.fast_path_only
def test_corrupt_file_is_skipped_logged_once_then_served_when_fixed(wl):
    port, folder = wl.dicom_port, wl.folder
    (folder / "c1.wl").write_bytes(b"this is not DICOM at all\n" * 20)
    write_wl(folder, "c2.wl", patient_id="C2", accession="C-ACC")
    poll(lambda: ids(port, AccessionNumber="C-ACC") == ["C2"])  # the others are served
    poll(lambda: "worklist file c1.wl skipped" in wl.log())
    for _ in range(3):  # more events on the same bad file: no new log line
        (folder / "c1.wl").write_bytes(b"still not DICOM\n" * 20)
    write_wl(folder, "c3.wl", patient_id="C3", accession="C-ACC")
    poll(lambda: ids(port, AccessionNumber="C-ACC") == ["C2", "C3"])
    assert wl.log().count("worklist file c1.wl skipped") == 1
    write_wl(folder, "c1.wl", patient_id="C1", accession="C-ACC")  # fixed
    poll(lambda: ids(port, AccessionNumber="C-ACC") == ["C1", "C2", "C3"])


@pytest.mark.fast_path_only
def test_half_written_file_is_not_served_until_complete(wl):
    port, folder = wl.dicom_port, wl.folder
    data = wl_bytes(worklist_dataset(patient_id="H1", accession="H-ACC"))
    path = folder / "h1.wl"
    with open(path, "wb") as f:  # a writer that writes in place, slowly
        f.write(data[: len(data) - 30])
        f.flush()
        poll(lambda: "worklist file h1.wl skipped: truncated" in wl.log())
        assert ids(port, AccessionNumber="H-ACC") == []
        f.write(data[len(data) - 30:])
    poll(lambda: ids(port, AccessionNumber="H-ACC") == ["H1"])


def test_worklist_without_scheduled_step_sequence(wl):
    write_wl(wl.folder, "nosps.wl", worklist_dataset(patient_id="N1", accession="N-ACC", with_sps=False))
    poll(lambda: ids(wl.dicom_port, sps=False, AccessionNumber="N-ACC") == ["N1"])
    # asked for, the sequence comes back empty; constrained, the item does not match
    statuses, answers = find(wl.dicom_port, mwl_query(AccessionNumber="N-ACC", sps_Modality=""))
    assert statuses == [PENDING, SUCCESS] and len(answers[0].ScheduledProcedureStepSequence) == 0
    assert ids(wl.dicom_port, AccessionNumber="N-ACC", sps_Modality="US") == []


def test_folder_deleted_while_running_is_survived(tmp_path):
    d = start_wl_daemon(tmp_path)
    try:
        folder = Path(d.config["Worklists"]["Database"])
        write_wl(folder, "d1.wl", patient_id="D1")
        poll(lambda: ids(d.dicom_port) == ["D1"])
        shutil.rmtree(folder)
        poll(lambda: ids(d.dicom_port) == [])
        poll(lambda: folder.is_dir())  # re-created
        write_wl(folder, "d2.wl", patient_id="D2")
        poll(lambda: ids(d.dicom_port) == ["D2"])
        shutil.rmtree(folder)  # replaced by another folder of the same name
        folder.mkdir()
        write_wl(folder, "d3.wl", patient_id="D3")
        poll(lambda: ids(d.dicom_port) == ["D3"])
        assert d.proc.poll() is None
    finally:
        d.stop()


# --------------------------------------------------------------------------- matching


@pytest.fixture(scope="module")
def matching_items(wl):
    folder = wl.folder
    write_wl(folder, "m1.wl", patient_id="M1", accession="M-ACC", patient_name="MÜLLER^ZOË",
             charset="ISO_IR 100", station=["AA32", "AA33"], date="20240105", time_="093000",
             study_uid="1.2.826.0.1.9.1")
    write_wl(folder, "m2.wl", patient_id="M2", accession="M-ACC", patient_name="SMITH^ANNA",
             station="CT1", modality="CT", date="20240106", time_="080000", study_uid="1.2.826.0.1.9.2")
    write_wl(folder, "m3.wl", patient_id="M3", accession="M-ACC", patient_name="SMYTHE^BOB",
             station="US1", date="20240104", time_="170000", study_uid="1.2.826.0.1.9.3")
    poll(lambda: ids(wl.dicom_port, AccessionNumber="M-ACC") == ["M1", "M2", "M3"])
    return wl.dicom_port


@pytest.mark.fast_path_only
@pytest.mark.parametrize(("keys", "expected"), [
    ({}, ["M1", "M2", "M3"]),                                               # universal
    ({"PatientID": "M2"}, ["M2"]),                                          # single value
    ({"PatientName": "müller^zoë"}, ["M1"]),                                # PN case-insensitive
    ({"PatientName": "SM?TH*"}, ["M2", "M3"]),                              # wildcards
    ({"StudyInstanceUID": ["1.2.826.0.1.9.1", "1.2.826.0.1.9.3"]}, ["M1", "M3"]),  # UID list
    ({"sps_ScheduledStationAETitle": "AA33"}, ["M1"]),                      # any value of AA32\AA33
    ({"sps_Modality": "US"}, ["M1", "M3"]),                                 # inside the sequence
    ({"sps_ScheduledProcedureStepStartDate": "20240105-"}, ["M1", "M2"]),   # DA range
    ({"sps_ScheduledProcedureStepStartDate": "-20240105"}, ["M1", "M3"]),
    ({"sps_ScheduledProcedureStepStartTime": "0800-0930"}, ["M1", "M2"]),   # TM range alone
    # date and time as one range: 4 Jan 12:00 -> 5 Jan 10:00 holds 4 Jan 17:00 and 5 Jan 09:30
    ({"sps_ScheduledProcedureStepStartDate": "20240104-20240105",
      "sps_ScheduledProcedureStepStartTime": "1200-1000"}, ["M1", "M3"]),
    ({"sps_Modality": "US", "sps_ScheduledStationAETitle": "US1"}, ["M3"]),
])
def test_matching_types(matching_items, keys, expected):
    assert ids(matching_items, AccessionNumber="M-ACC", **keys) == expected


def test_only_requested_keys_are_answered_with_empty_ones(matching_items):
    statuses, answers = find(matching_items, mwl_query(
        PatientID="M3", PatientName="", IssuerOfPatientID="", sps_Modality="",
        sps_ScheduledProcedureStepLocation=""))
    assert statuses == [PENDING, SUCCESS]
    rsp = answers[0]
    assert {e.keyword for e in rsp} == {"SpecificCharacterSet", "PatientID", "PatientName",
                                       "IssuerOfPatientID", "ScheduledProcedureStepSequence"}
    assert rsp.PatientName == "SMYTHE^BOB" and rsp.IssuerOfPatientID == ""
    step = rsp.ScheduledProcedureStepSequence[0]
    assert {e.keyword for e in step} == {"Modality", "ScheduledProcedureStepLocation"}


def test_findscu_worklist_query_with_keys_and_query_file(matching_items, tmp_path):
    out = tmp_path / "answers"
    out.mkdir()
    keys = ["-k", "AccessionNumber=M-ACC", "-k", "PatientID", "-k", "PatientName",
            "-k", "(0040,0100)[0].Modality=US", "-k", "(0040,0100)[0].ScheduledStationAETitle"]
    result = run(["findscu", "-W", "-X", "-od", str(out), "-aet", "SCANNER", "-aec", "ORTHANC",
                  *keys, "127.0.0.1", str(matching_items)])
    assert result.returncode == 0, result.stderr
    answered = sorted(str(pydicom.dcmread(f).PatientID) for f in out.iterdir())
    assert answered == ["M1", "M3"]
    # the same query from a dump2dcm file, as clinics test their scanners' queries
    dump = tmp_path / "query.dump"
    dump.write_text("(0008,0050) SH [M-ACC]\n(0010,0020) LO [M2]\n(0010,0010) PN []\n"
                    "(0040,0100) SQ\n(fffe,e000) -\n(0008,0060) CS []\n(fffe,e00d) -\n(fffe,e0dd) -\n")
    query = tmp_path / "query.dcm"
    assert run(["dump2dcm", str(dump), str(query)]).returncode == 0
    result = run(["findscu", "-W", "-v", "-aec", "ORTHANC", "127.0.0.1", str(matching_items),
                  str(query)])
    assert result.returncode == 0 and "SMITH^ANNA" in result.stderr + result.stdout
    assert "(0008,0060) CS [CT]" in result.stderr + result.stdout


def test_character_sets_round_trip(wl, tmp_path):
    names = {"CS1": ("ISO_IR 192", "Ζαχαρίας^Γιάννης"), "CS2": ("ISO_IR 192", "山田^太郎"),
             "CS3": ("ISO_IR 100", "Dupré^Hélène")}
    for pid, (charset, name) in names.items():
        write_wl(wl.folder, f"{pid}.wl", patient_id=pid, accession="CS-ACC", charset=charset,
                 patient_name=name)
    poll(lambda: ids(wl.dicom_port, AccessionNumber="CS-ACC") == sorted(names))
    statuses, answers = find(wl.dicom_port, mwl_query(AccessionNumber="CS-ACC", PatientID="",
                                                      PatientName=""))
    got = {str(a.PatientID): (a.SpecificCharacterSet, str(a.PatientName)) for a in answers}
    assert got == names  # every character, in the item's own character set
    # DCMTK decodes them the same (findscu -X keeps the answers' bytes)
    out = tmp_path / "cs"
    out.mkdir()
    result = run(["findscu", "-W", "-X", "-od", str(out), "-aec", "ORTHANC", "-k",
                  "AccessionNumber=CS-ACC", "-k", "PatientID", "-k", "PatientName",
                  "-k", "SpecificCharacterSet", "127.0.0.1", str(wl.dicom_port)])
    assert result.returncode == 0
    decoded = {}
    for f in out.iterdir():
        ds = pydicom.dcmread(f)
        decoded[str(ds.PatientID)] = str(ds.PatientName)
        if ds.PatientID == "CS3":  # Latin-1 bytes on the wire, é is 0xE9
            assert b"Dupr\xe9^H\xe9l\xe8ne" in f.read_bytes()
    assert decoded == {pid: name for pid, (_, name) in names.items()}
    # a query in UTF-8 for a Latin-1 item
    q = mwl_query(AccessionNumber="CS-ACC", PatientID="", PatientName="dupré*")
    q.SpecificCharacterSet = "ISO_IR 192"
    assert [str(a.PatientID) for a in find(wl.dicom_port, q)[1]] == ["CS3"]


# --------------------------------------------------------------------------- bad queries


def test_malformed_identifiers_get_clear_statuses(matching_items):
    two_items = mwl_query(sps=False, PatientID="")
    two_items.ScheduledProcedureStepSequence = [Dataset(), Dataset()]
    statuses, _ = find(matching_items, two_items)
    assert statuses == [0xA900]
    bad_date = mwl_query(AccessionNumber="M-ACC", sps_ScheduledProcedureStepStartDate="5 Jan")
    statuses, _ = find(matching_items, bad_date)
    assert statuses == [0xA900]
    # the same association goes on with good queries; nothing else is affected
    assert ids(matching_items, AccessionNumber="M-ACC", PatientID="M1") == ["M1"]


def test_a900_carries_offending_element_and_comment(matching_items):
    from pynetdicom import AE

    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.31")
    assoc = ae.associate("127.0.0.1", matching_items, ae_title="ORTHANC")
    try:
        q = mwl_query(sps_ScheduledProcedureStepStartDate="20240105-x")
        (status, _), = list(assoc.send_c_find(q, "1.2.840.10008.5.1.4.31"))
        assert status.Status == 0xA900
        assert status.OffendingElement == 0x00400002
        assert "DA" in status.ErrorComment
    finally:
        assoc.release()


# --------------------------------------------------------------------------- options and access


def test_filter_issuer_aet_and_limit_answers_after_sighup(wl):
    port = wl.dicom_port
    for n in range(4):
        write_wl(wl.folder, f"f{n}.wl", patient_id=f"F{n}", accession="F-ACC",
                 station=["AA32", "AA33"] if n < 3 else "OTHER")
    poll(lambda: len(ids(port, AccessionNumber="F-ACC")) == 4)
    reload(wl, Worklists={"FilterIssuerAet": True})
    try:
        statuses, answers = find(port, mwl_query(AccessionNumber="F-ACC", PatientID=""), aet="AA33")
        assert sorted(str(a.PatientID) for a in answers) == ["F0", "F1", "F2"]
        statuses, answers = find(port, mwl_query(AccessionNumber="F-ACC", PatientID=""), aet="NOBODY")
        assert answers == [] and statuses == [SUCCESS]
        # a station asked for explicitly is not replaced by the caller's
        statuses, answers = find(port, mwl_query(AccessionNumber="F-ACC", PatientID="",
                                                 sps_ScheduledStationAETitle="OTHER"), aet="AA33")
        assert [str(a.PatientID) for a in answers] == ["F3"]
        reload(wl, Worklists={"FilterIssuerAet": False, "LimitAnswers": 2})
        statuses, answers = find(port, mwl_query(AccessionNumber="F-ACC", PatientID=""))
        # Orthanc's semantics: the matches up to the limit, then "matching terminated"
        assert len(answers) == 2 and statuses == [PENDING, PENDING, CANCEL]
        statuses, answers = find(port, mwl_query(AccessionNumber="F-ACC", PatientID="F1"))
        assert statuses == [PENDING, SUCCESS]  # under the limit: a normal answer
    finally:
        reload(wl, Worklists={"FilterIssuerAet": False, "LimitAnswers": 0})


def test_access_refused_unless_allowed(wl):
    write_wl(wl.folder, "acl.wl", patient_id="ACL1", accession="ACL-ACC")
    poll(lambda: ids(wl.dicom_port, AccessionNumber="ACL-ACC") == ["ACL1"])
    reload(wl, DicomAlwaysAllowFindWorklist=False,
           DicomModalities={"us1": {"AET": "US1", "Host": "127.0.0.1", "Port": 104},
                            "ris": {"AET": "RIS", "Host": "127.0.0.1", "Port": 104,
                                    "AllowFindWorklist": False}})
    try:
        query = mwl_query(AccessionNumber="ACL-ACC", PatientID="")
        assert find(wl.dicom_port, query, aet="US1")[0] == [PENDING, SUCCESS]
        assert find(wl.dicom_port, query, aet="RIS")[0] == [0x0124]
        assert find(wl.dicom_port, query, aet="STRANGER")[0] == [0x0124]
        assert "MWL C-FIND from STRANGER refused: not allowed" in wl.log()
        r = run(["findscu", "-W", "-v", "-aet", "STRANGER", "-aec", "ORTHANC", "-k", "PatientID",
                 "127.0.0.1", str(wl.dicom_port)])
        assert "Final Find Response (Unknown Status: 0x124)" in r.stdout + r.stderr
    finally:
        reload(wl, DicomAlwaysAllowFindWorklist=True, DicomModalities={})


# --------------------------------------------------------------------------- many files


@pytest.fixture(scope="module")
def bulk(tmp_path_factory, pynetdicom_env):
    """A daemon started on a folder of 2,000 .wl files."""
    root = tmp_path_factory.mktemp("bulk")
    folder = root / "worklists"
    folder.mkdir()
    template = wl_bytes(worklist_dataset(patient_id="B0000", accession="B0000", date="20240105"))
    for n in range(2000):  # same length IDs: patch the bytes, no pydicom per file
        (folder / f"b{n:04d}.wl").write_bytes(
            template.replace(b"B0000", f"B{n:04d}".encode()))
    d = start_wl_daemon(root, env=pynetdicom_env(root))
    yield d
    d.stop()


def test_two_thousand_files(bulk):
    # The daemon is ready before the folder is parsed; a C-FIND arriving
    # meanwhile waits for the whole snapshot rather than get part of it.
    statuses, answers = find(bulk.dicom_port, mwl_query(PatientID="B1234", PatientName=""))
    assert [str(a.PatientID) for a in answers] == ["B1234"] and statuses == [PENDING, SUCCESS]
    assert "2000 items" in bulk.log()
    started = time.monotonic()
    statuses, answers = find(bulk.dicom_port, mwl_query(PatientID="B1234", PatientName=""))
    assert [str(a.PatientID) for a in answers] == ["B1234"] and statuses == [PENDING, SUCCESS]
    assert time.monotonic() - started < 2
    statuses, answers = find(bulk.dicom_port, mwl_query(PatientID="B1*"))
    assert len(answers) == 1000 and statuses[-1] == SUCCESS


def test_c_cancel_stops_the_answers(bulk):
    """A scanner that cancels after the first answer and reads slowly. The answers go out
    much faster than pynetdicom's SCU decodes them, so a C-CANCEL sent after three decoded
    answers may come after the last one (then the final status is Success, as PS3.7 9.1.2.1.5
    allows); here the peer stops reading after its C-CANCEL, so the server must notice the
    C-CANCEL while the socket is full, stop, and end with Cancel."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.dsutils import encode

    from tests.fuzz import rawdicom

    mwl = "1.2.840.10008.5.1.4.31"
    query = mwl_query(PatientID="", PatientName="", PatientBirthDate="", PatientSex="",
                      AccessionNumber="", RequestedProcedureID="",
                      RequestedProcedureDescription="")
    assoc = rawdicom.Association(bulk.dicom_port, [(mwl, ExplicitVRLittleEndian),
                                                   (rawdicom.VERIFICATION, "1.2.840.10008.1.2")])
    try:
        responses = assoc.find_and_cancel(mwl, ExplicitVRLittleEndian, encode(query, False, True))
        assert responses[0].pending
        # Loopback buffers can take every answer before the C-CANCEL is read; the C-FIND
        # then ends with Success, which PS3.7 9.3.2.3 allows. Seen in time, it ends with
        # Cancel, early, and says so.
        if responses[-1].status == CANCEL:
            assert 1 <= len(responses) - 1 < 2000
            poll(lambda: "cancelled (C-CANCEL)" in bulk.log())
        else:
            assert responses[-1].status == SUCCESS and len(responses) - 1 == 2000
        assert assoc.echo() == SUCCESS  # the association carries on
    finally:
        assoc.release()
    # and the server
    assert len(find(bulk.dicom_port, mwl_query(PatientID="B0001"))[1]) == 1


def test_c_cancel_from_pynetdicom(bulk):
    # pynetdicom's SCU reads every answer off the socket at once: its C-CANCEL after three
    # answers ends the query either way; the association and the server carry on.
    statuses, answers = find(bulk.dicom_port, mwl_query(PatientID=""), cancel_after=3)
    assert statuses[-1] in (CANCEL, SUCCESS)
    assert len(answers) >= 3 and len(answers) == len(statuses) - 1
    assert len(find(bulk.dicom_port, mwl_query(PatientID="B0001"))[1]) == 1

def test_a_daemon_killed_during_a_first_start_takes_its_helper_process_with_it(tmp_path):
    """A first start over many files parses part of them in a spawned helper process;
    SIGKILL gives the daemon no time to stop it, and it must not live on (it waited for
    work forever, keeping multiprocessing's resource tracker alive too)."""
    import subprocess
    import sys

    import psutil

    from tests.support import Daemon, base_config

    folder = tmp_path / "worklists"
    folder.mkdir()
    data = wl_bytes(worklist_dataset(patient_id="MANY"))
    for n in range(20000):
        (folder / f"m{n:05d}.wl").write_bytes(data)
    d = Daemon(tmp_path, base_config(tmp_path, Worklists={"Enable": True,
                                                           "Database": str(folder)}))
    d.root.mkdir(parents=True, exist_ok=True)
    d.config_path.write_text(json.dumps(d.config))
    with open(d.log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config",
                                 str(d.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        daemon = psutil.Process(proc.pid)

        def helper():
            for child in daemon.children():
                if "spawn_main" in " ".join(child.cmdline()):
                    return child
            return None

        found = poll(helper, timeout=30, interval=0.005)
        leftovers = daemon.children(recursive=True)
    finally:
        proc.kill()
        proc.wait()
    assert found in leftovers

    def gone():
        return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in leftovers)

    poll(gone, timeout=10)
