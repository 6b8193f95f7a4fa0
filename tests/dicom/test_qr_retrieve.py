"""C-MOVE and C-GET (appliance.dicom.retrieve, appliance.dicom.sender) with real clients:
DCMTK movescu/getscu/storescp and pynetdicom, against the daemon subprocess, in both
pynetdicom modes of the acceptor (tests/dicom/conftest.py).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, build_context, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelMove,
    SecondaryCaptureImageStorage, StudyRootQueryRetrieveInformationModelMove, Verification,
)

from tests.dicom.test_scu import closed_port
from tests.ops import cli
from tests.support import dataset_bytes, new_dataset, run, scu_store
from tests.worklist.helpers import poll

SC = SecondaryCaptureImageStorage


def write_study(folder: Path, *, series: int = 2, per_series: int = 3,
                patient_id: str = "PID-1") -> list[Path]:
    """Small Explicit VR LE secondary captures of one study, one file each."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    files = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = new_dataset(SC)
            ds.PatientID, ds.PatientName = patient_id, "Test^Retrieve"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", s + 1, i + 1
            ds.Rows = ds.Columns = 8
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
            ds.PixelData = bytes(range(s * 16 + i, s * 16 + i + 64))
            path = folder / f"{s}-{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


class Destination:
    """A pynetdicom storage SCP ("DEST") recording what it is sent; ``delay`` seconds
    per C-STORE, ``abort_after`` stores then it aborts the association."""

    def __init__(self, *, syntaxes=(ExplicitVRLittleEndian,), delay: float = 0.0,
                 abort_after: int | None = None) -> None:
        self.received: list[Dataset] = []
        self.requests: list[tuple] = []
        self.ends: list[str] = []
        self._delay, self._abort_after = delay, abort_after
        ae = AE(ae_title="DEST")
        ae.add_supported_context(SC, list(syntaxes))
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_REQUESTED, self._requested), (evt.EVT_C_STORE, self._store),
            (evt.EVT_RELEASED, lambda e: self.ends.append("released")),
            (evt.EVT_ABORTED, lambda e: self.ends.append("aborted"))])
        self.port = self.server.server_address[1]

    def _requested(self, event) -> None:
        rq = event.assoc.requestor.primitive
        self.requests.append((rq.calling_ae_title, rq.called_ae_title,
                              rq.implementation_class_uid))

    def _store(self, event) -> int:
        time.sleep(self._delay)
        if self._abort_after is not None and len(self.received) >= self._abort_after:
            event.assoc.abort()
            return 0xA700
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def destinations():
    made: list[Destination] = []

    def make(**kw) -> Destination:
        made.append(Destination(**kw))
        return made[-1]

    yield make
    for d in made:
        d.close()


@pytest.fixture
def storescp(tmp_path):
    """DCMTK storescp, bit-preserving (+B: data sets written as received), on a free port."""
    folder = tmp_path / "storescp"
    folder.mkdir()
    port = closed_port()
    proc = subprocess.Popen(["storescp", "+B", "-od", str(folder), "-aet", "STORESCP",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    poll(lambda: run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)]).returncode == 0)
    yield port, folder
    proc.kill()
    proc.wait()


def modalities(port: int, **viewer) -> dict:
    return {"DicomModalities": {
        "dest": ["DEST", "127.0.0.1", port],
        "storescp": {"AET": "STORESCP", "Host": "127.0.0.1", "Port": port},
        "viewer": {"AET": "VIEWER", "Host": "127.0.0.1", "Port": closed_port(), **viewer},
    }}


def movescu(d, destination: str, *keys: str, root: str = "-S") -> subprocess.CompletedProcess:
    cmd = ["movescu", "-v", root, "-aet", "VIEWER", "-aec", "ORTHANC", "-aem", destination]
    for k in keys:
        cmd += ["-k", k]
    return run(cmd + ["127.0.0.1", str(d.dicom_port)])


def stored_data_sets(d, files: list[Path]) -> dict[str, bytes]:
    """SOP Instance UID -> data set bytes of the daemon's stored file."""
    out = {}
    for f in files:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        out[uid] = dataset_bytes(d.stored_path(uid))
    return out


def received_data_sets(folder: Path) -> dict[str, bytes]:
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: dataset_bytes(f)
            for f in folder.iterdir()}


def test_movescu_every_level_sends_the_stored_data_sets_byte_for_byte(
        make_daemon, storescp, tmp_path):
    port, folder = storescp
    d = make_daemon(**modalities(port))
    files = write_study(tmp_path / "study")
    other = write_study(tmp_path / "other", series=1, per_series=1, patient_id="PID-2")
    assert scu_store(d.dicom_port, files + other) == [0] * 7
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    expected = stored_data_sets(d, files)

    r = movescu(d, "STORESCP", "QueryRetrieveLevel=STUDY",
                f"StudyInstanceUID={first.StudyInstanceUID}")
    assert r.returncode == 0, r.stderr
    assert "Received Final Move Response (Success)" in r.stderr + r.stdout
    poll(lambda: len(list(folder.iterdir())) == 6)
    assert received_data_sets(folder) == expected   # the other patient's study is not sent

    # Patient Root, at the PATIENT, SERIES and IMAGE levels (a UID list at IMAGE level).
    for f in folder.iterdir():
        f.unlink()
    assert movescu(d, "STORESCP", "QueryRetrieveLevel=PATIENT", "PatientID=PID-1",
                   root="-P").returncode == 0
    poll(lambda: len(list(folder.iterdir())) == 6)
    for f in folder.iterdir():
        f.unlink()
    assert movescu(d, "STORESCP", "QueryRetrieveLevel=SERIES", "PatientID=PID-1",
                   f"StudyInstanceUID={first.StudyInstanceUID}",
                   f"SeriesInstanceUID={first.SeriesInstanceUID}", root="-P").returncode == 0
    poll(lambda: len(list(folder.iterdir())) == 3)
    for f in folder.iterdir():
        f.unlink()
    two = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files[3:5]]
    assert movescu(d, "STORESCP", "QueryRetrieveLevel=IMAGE",
                   f"StudyInstanceUID={first.StudyInstanceUID}",
                   f"SeriesInstanceUID={pydicom.dcmread(files[3]).SeriesInstanceUID}",
                   "SOPInstanceUID=" + "\\".join(two)).returncode == 0
    poll(lambda: len(list(folder.iterdir())) == 2)
    assert set(received_data_sets(folder)) == set(two)
    log = d.log()
    assert re.search(r"C-MOVE from VIEWER to storescp \(STORESCP at 127\.0\.0\.1:\d+\), study "
                     r"root, STUDY level: success; 6 completed, 0 warning, 0 failed of 6, \d+ "
                     r"bytes", log), log
    assert "PID-1" not in log and "Test^Retrieve" not in log


def test_getscu_receives_the_stored_data_sets(make_daemon, tmp_path):
    d = make_daemon(**modalities(closed_port()))
    files = write_study(tmp_path / "study", series=1, per_series=4)
    assert scu_store(d.dicom_port, files) == [0] * 4
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    out = tmp_path / "got"
    out.mkdir()
    r = run(["getscu", "-v", "-S", "+B", "-aet", "VIEWER", "-aec", "ORTHANC", "-od", str(out),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
             "127.0.0.1", str(d.dicom_port)])
    assert r.returncode == 0, r.stderr
    assert "Number of Completed Suboperations : 4" in r.stdout + r.stderr
    # Byte for byte as stored (streamed from the file on the fast path).
    got = received_data_sets(out)
    for f in files:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert got[uid] == dataset_bytes(d.stored_path(uid))
    assert re.search(r"C-GET from VIEWER, study root, STUDY level: success; 4 completed, 0 "
                     r"warning, 0 failed of 4", d.log())
    # A stored RLE image comes back in Explicit VR LE: getscu proposes uncompressed syntaxes.
    rle = Path(get_testdata_file("SC_rgb_rle.dcm"))
    original = pydicom.dcmread(rle)
    assert scu_store(d.dicom_port, [rle]) == [0]
    out = tmp_path / "got-rle"
    out.mkdir()
    r = run(["getscu", "-S", "-aet", "VIEWER", "-aec", "ORTHANC", "-od", str(out),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={original.StudyInstanceUID}",
             "127.0.0.1", str(d.dicom_port)])
    assert r.returncode == 0, r.stderr
    (got,) = [pydicom.dcmread(f) for f in out.iterdir()]
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, original.pixel_array)


def pynetdicom_move(port: int, destination: str, identifier: Dataset, *, cancel_after=None,
                    model=StudyRootQueryRetrieveInformationModelMove) -> list[tuple]:
    """C-MOVE with pynetdicom; C-CANCEL after ``cancel_after`` pending responses.
    Returns every (Status, NumberOf* ..., FailedSOPInstanceUIDList) response."""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(model)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert assoc.is_established
    answers = []
    try:
        for status, ident in assoc.send_c_move(identifier, destination, model, msg_id=7):
            if status is None or "Status" not in status:
                break
            answers.append((status.Status, status.get("NumberOfRemainingSuboperations"),
                            status.get("NumberOfCompletedSuboperations"),
                            status.get("NumberOfFailedSuboperations"),
                            list(ident.get("FailedSOPInstanceUIDList", []) or [])
                            if ident is not None else []))
            if cancel_after is not None and len(answers) == cancel_after:
                assoc.send_c_cancel(7, query_model=model)
        assert assoc.send_c_echo().Status == 0   # the association is still usable
    finally:
        assoc.release()
    return answers


def study_identifier(files: list[Path]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = pydicom.dcmread(files[0]).StudyInstanceUID
    return ds


def test_c_cancel_stops_a_move_with_the_counts_so_far(make_daemon, destinations, tmp_path):
    dest = destinations(delay=0.15)
    d = make_daemon(**modalities(dest.port))
    files = write_study(tmp_path / "study", series=2, per_series=5)
    assert scu_store(d.dicom_port, files) == [0] * 10
    answers = pynetdicom_move(d.dicom_port, "DEST", study_identifier(files), cancel_after=1)
    final = answers[-1]
    assert final[0] == 0xFE00, answers                  # Cancel
    remaining, completed = final[1], final[2]
    assert completed < 10 and remaining == 10 - completed - (final[3] or 0)
    assert all(a[0] == 0xFF00 for a in answers[:-1])
    time.sleep(0.3)
    assert len(dest.received) == completed
    assert re.search(r"C-MOVE from VIEWER to dest .*: cancelled; %d completed" % completed,
                     d.log())


def test_a_destination_that_dies_mid_move_ends_with_the_right_counts(
        make_daemon, destinations, storescp, tmp_path):
    dying = destinations(abort_after=3)
    port, folder = storescp
    mods = modalities(port)
    mods["DicomModalities"]["dest"] = ["DEST", "127.0.0.1", dying.port]
    d = make_daemon(**mods)
    files = write_study(tmp_path / "study", series=2, per_series=4)
    assert scu_store(d.dicom_port, files) == [0] * 8
    answers = pynetdicom_move(d.dicom_port, "DEST", study_identifier(files))
    status, remaining, completed, failed, failed_uids = answers[-1]
    assert (status, completed, failed) == (0xB000, 3, 5), answers
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert sorted(failed_uids) == sorted(uids[3:])
    assert len(dying.received) == 3
    # One request went unanswered; the other four were not sent on the dead association
    # (each would have waited out the DIMSE timeout, 10 s, for an answer).
    assert d.log().count("no response: the destination disconnected or timed out") == 1
    # The daemon carries on: the same study moves whole to a live destination.
    again = pynetdicom_move(d.dicom_port, "STORESCP", study_identifier(files))
    assert (again[-1][0], again[-1][2], again[-1][3]) == (0x0000, 8, 0), again
    poll(lambda: len(list(folder.iterdir())) == 8)
    assert d.proc.poll() is None
    assert not re.search(r" (ERROR|CRITICAL) ", d.log()), d.log()


@pytest.mark.fast_path_only
def test_unknown_destination_and_refused_devices_send_nothing(
        make_daemon, destinations, tmp_path):
    dest = destinations()
    mods = modalities(dest.port, AllowMove=False, AllowGet=False)
    d = make_daemon(**mods)
    files = write_study(tmp_path / "study", series=1, per_series=2)
    assert scu_store(d.dicom_port, files) == [0] * 2
    ident = study_identifier(files)
    assert pynetdicom_move(d.dicom_port, "DEST", ident)[-1][0] == 0x0124  # VIEWER may not move
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(SC, ExplicitVRLittleEndian)
    role = build_role(SC)
    assoc = ae.associate("127.0.0.1", d.dicom_port, ae_title="ORTHANC", ext_neg=[role])
    pid = Dataset()
    pid.QueryRetrieveLevel, pid.PatientID = "PATIENT", "PID-1"
    statuses = [s.Status for s, _ in assoc.send_c_get(pid, PatientRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert statuses == [0x0124]
    # No unique key at the level: 0xA900, from a device that may move.
    bare = Dataset()
    bare.QueryRetrieveLevel = "SERIES"
    bare.StudyInstanceUID = ident.StudyInstanceUID
    mods2 = modalities(dest.port, AllowMove=False)
    mods2["DicomModalities"]["gone"] = ["GONE", "127.0.0.1", closed_port()]
    d2 = make_daemon("d2", DicomAlwaysAllowMove=True, **mods2)
    assert scu_store(d2.dicom_port, files) == [0] * 2
    assert pynetdicom_move(d2.dicom_port, "NOWHERE", ident)[-1][0] == 0xA801
    assert pynetdicom_move(d2.dicom_port, "DEST", bare)[-1][0] == 0xA900
    assert pynetdicom_move(d2.dicom_port, "GONE", ident)[-1][0] == 0xA801  # not listening
    assert pynetdicom_move(d2.dicom_port, "DEST", ident)[-1][0] == 0x0000  # always allowed
    assert len(dest.received) == 2 and len(dest.requests) == 1
    log = d.log()
    assert "C-MOVE from VIEWER refused: destination 'NOWHERE' is not in DicomModalities" \
        in d2.log()
    assert "C-MOVE from VIEWER refused: not allowed to move" in log
    assert "C-GET from VIEWER refused: not allowed to get" in log
    assert re.search(r"C-MOVE from VIEWER to gone .*: destination unreachable: .*; 0 completed, "
                     r"0 warning, 2 failed of 2", d2.log()), d2.log()


def build_role(sop_class: str):
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = sop_class
    role.scu_role, role.scp_role = False, True
    return role


@pytest.mark.fast_path_only
def test_a_stored_rle_image_is_transcoded_for_a_destination_taking_explicit_le_only(
        make_daemon, destinations):
    dest = destinations(syntaxes=(ExplicitVRLittleEndian,))
    mods = modalities(dest.port)
    mods["DicomModalities"]["dest"] = {"AET": "DEST", "Host": "127.0.0.1", "Port": dest.port,
                                       "LocalAet": "ARCHIVE01"}
    d = make_daemon(**mods)
    rle = Path(get_testdata_file("SC_rgb_rle.dcm"))
    original = pydicom.dcmread(rle)
    assert original.file_meta.TransferSyntaxUID == RLELossless
    assert scu_store(d.dicom_port, [rle]) == [0]
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = original.StudyInstanceUID
    ident.SeriesInstanceUID = original.SeriesInstanceUID
    ident.SOPInstanceUID = original.SOPInstanceUID
    assert pynetdicom_move(d.dicom_port, "DEST", ident)[-1][0] == 0x0000
    poll(lambda: len(dest.received) == 1)
    got = dest.received[0]
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, original.pixel_array)
    # The outbound association is stock pynetdicom, with the modality's LocalAet,
    # whichever way the daemon runs the associations it accepts.
    assert dest.requests == [("ARCHIVE01", "DEST", PYNETDICOM_IMPLEMENTATION_UID)]
    assert dest.ends == ["released"]


@pytest.mark.fast_path_only
def test_retrieves_are_counted_in_metrics(make_daemon, destinations, tmp_path):
    dest = destinations()
    d = make_daemon(**modalities(dest.port))
    files = write_study(tmp_path / "study", series=1, per_series=3)
    assert scu_store(d.dicom_port, files) == [0] * 3
    assert pynetdicom_move(d.dicom_port, "DEST", study_identifier(files))[-1][0] == 0
    text = requests.get(f"http://127.0.0.1:{d.http_port}/metrics", timeout=10).text
    assert 'pacs_retrieved_instances_total{operation="move"} 3' in text, text
    size = sum(d.stored_path(pydicom.dcmread(f).SOPInstanceUID).stat().st_size for f in files)
    assert f'pacs_retrieved_bytes_total{{operation="move"}} {size}' in text
    # pacs-appliance status reads the status file, rewritten every 5 s.
    deadline, out = time.monotonic() + 15, ""
    while time.monotonic() < deadline and "retrieved: C-MOVE 3 instances" not in out:
        out = cli(d.config_path, "status").stdout
        time.sleep(0.5)
    assert "retrieved: C-MOVE 3 instances" in out and "C-GET 0 instances" in out, out


@pytest.mark.fast_path_only
def test_a_long_sub_operation_still_gets_a_pending_response_every_second(
        make_daemon, destinations, tmp_path):
    dest = destinations(delay=2.3)
    d = make_daemon(**modalities(dest.port))
    files = write_study(tmp_path / "study", series=1, per_series=1)
    assert scu_store(d.dicom_port, files) == [0]
    answers = pynetdicom_move(d.dicom_port, "DEST", study_identifier(files))
    # Two while the one C-STORE lasts (1 remaining, none done), one after it, the final.
    assert answers[:2] == [(0xFF00, 1, 0, 0, [])] * 2, answers
    assert (answers[-1][0], answers[-1][2]) == (0x0000, 1), answers
