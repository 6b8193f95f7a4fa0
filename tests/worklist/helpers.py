"""Shared by the worklist tests: .wl files built with pydicom, a daemon serving a worklist
folder, a pynetdicom MWL C-FIND client, polling with a deadline."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from tests.support import Daemon, base_config

MWL_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"


def worklist_dataset(*, charset: str | None = "ISO_IR 192", patient_name: str = "DOE^JANE",
                     patient_id: str = "P1", accession: str = "A1", study_uid: str | None = None,
                     requested_procedure_id: str = "RP1", date: str = "20240105",
                     time_: str | None = "093000", modality: str = "US",
                     station: str | list[str] = "US1", physician: str = "WHO^DR",
                     with_sps: bool = True, **extra: Any) -> Dataset:
    """A typical ultrasound worklist item."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.AccessionNumber = accession
    ds.RequestedProcedureID = requested_procedure_id
    ds.RequestedProcedureDescription = "Abdomen"
    if study_uid:
        ds.StudyInstanceUID = study_uid
    if with_sps:
        sps = Dataset()
        sps.Modality = modality
        sps.ScheduledStationAETitle = station
        sps.ScheduledProcedureStepStartDate = date
        if time_ is not None:
            sps.ScheduledProcedureStepStartTime = time_
        sps.ScheduledPerformingPhysicianName = physician
        sps.ScheduledProcedureStepID = "SPS1"
        sps.ScheduledProcedureStepDescription = "Abdomen US"
        ds.ScheduledProcedureStepSequence = [sps]
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def wl_bytes(ds: Dataset, *, implicit: bool = False) -> bytes:
    """``ds`` as a Part-10 .wl file, as dump2dcm writes one."""
    ds = Dataset(ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit)
    return buf.getvalue()


def write_wl(folder: Path, name: str, ds: Dataset | None = None, *, atomic: bool = True,
             **kw: Any) -> Path:
    """Write a worklist item (temp file + rename unless ``atomic`` is false)."""
    path = folder / name
    data = wl_bytes(ds if ds is not None else worklist_dataset(**kw))
    if atomic:
        temp = folder / f".{name}.tmp"
        temp.write_bytes(data)
        os.replace(temp, path)
    else:
        path.write_bytes(data)
    return path


def settle() -> None:
    """Wait until the files written so far are older than the parse cache's 2 s window.

    A cached row is trusted only for a file whose change time (which os.utime cannot set
    back) is older than when the row was checked, by that margin; tests that expect a
    restart to take files from the cache let the wall clock pass it first."""
    time.sleep(2.1)


def poll(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


def start_wl_daemon(root: Path, *, worklists: dict | None = None, env: dict | None = None,
                    **overrides: Any) -> Daemon:
    """A daemon serving ``root/worklists`` (the Worklists section merged with ``worklists``),
    with ``env`` added to its environment."""
    section = {"Enable": True, "Database": str(root / "worklists")}
    section.update(worklists or {})
    return Daemon(root, base_config(root, Worklists=section, **overrides), env=env).start()


def mwl_query(**keys: Any) -> Dataset:
    """A C-FIND identifier: top-level keys, ``sps_*`` keys go in the one SPS item; pass
    ``sps=False`` for no sequence key."""
    ds = Dataset()
    want_sps = keys.pop("sps", True)
    sps = Dataset()
    for key, value in keys.items():
        if key.startswith("sps_"):
            setattr(sps, key[4:], value)
        else:
            setattr(ds, key, value)
    if want_sps:
        ds.ScheduledProcedureStepSequence = [sps]
    return ds


def find(port: int, query: Dataset, *, aet: str = "FINDSCU", aec: str = "ORTHANC",
         cancel_after: int | None = None, transfer_syntax: str | None = None,
         max_pdu: int | None = None) -> tuple[list[int], list[Dataset]]:
    """MWL C-FIND with pynetdicom: (every response status, the Pending identifiers).

    With ``cancel_after`` the client sends C-CANCEL after that many answers; with
    ``transfer_syntax`` it proposes only that one; with ``max_pdu`` it receives PDUs of at
    most that length.
    """
    ae = AE(ae_title=aet)
    if max_pdu is not None:
        ae.maximum_pdu_size = max_pdu
    if transfer_syntax is None:
        ae.add_requested_context(MWL_FIND)
    else:
        ae.add_requested_context(MWL_FIND, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    assert assoc.is_established, "association refused"
    statuses, answers = [], []
    try:
        msg_id = 7
        for status, identifier in assoc.send_c_find(query, MWL_FIND, msg_id=msg_id):
            if "Status" not in status:
                raise AssertionError("no response (association aborted?)")
            statuses.append(int(status.Status))
            if identifier is not None and status.Status in (0xFF00, 0xFF01):
                answers.append(identifier)
                if cancel_after is not None and len(answers) == cancel_after:
                    assoc.send_c_cancel(msg_id, context_id=None, query_model=MWL_FIND)
    finally:
        assoc.release()
    return statuses, answers
