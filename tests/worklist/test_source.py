"""The worklist folder in-process: parsing, the index, taking items out, the cleanup rules."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydicom.dataset import Dataset

from appliance.worklist.housekeeping import CleanupRules, due_for_removal
from appliance.worklist.matching import attrs_from_dataset, compile_query
from appliance.worklist.source import (
    Snapshot,
    WorklistFileError,
    WorklistFolder,
    WorklistItem,
    parse_worklist,
)
from tests.worklist.helpers import mwl_query, wl_bytes, worklist_dataset, write_wl


def item(name: str, mtime: float = 0.0, **kw) -> WorklistItem:
    return WorklistItem(name, attrs_from_dataset(worklist_dataset(**kw)), "ISO_IR 192", (0, 0, 0), mtime)


@pytest.mark.parametrize("implicit", [False, True])
def test_parse_explicit_and_implicit_files(implicit):
    attrs = parse_worklist(wl_bytes(worklist_dataset(patient_id="X1"), implicit=implicit))
    assert attrs[0x00100020][1] == ("X1",)
    assert attrs[0x00400100][0] == "SQ"


def test_parse_a_file_without_file_meta():
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, worklist_dataset(patient_id="RAW"))
    assert parse_worklist(buf.getvalue())[0x00100020][1] == ("RAW",)


@pytest.mark.parametrize("data", [
    b"", b"\0" * 10, b"hello world, not dicom\n" * 10, bytes(range(256)) * 4,
    wl_bytes(worklist_dataset())[:-1], wl_bytes(worklist_dataset())[:200],
])
def test_garbage_and_truncated_files_are_refused(data):
    with pytest.raises(WorklistFileError):
        parse_worklist(data)


def test_undefined_length_sequence_truncated_before_its_delimiter():
    ds = worklist_dataset()
    ds["ScheduledProcedureStepSequence"].is_undefined_length = True
    data = wl_bytes(ds)
    parse_worklist(data)
    with pytest.raises(WorklistFileError, match="terminated|truncated"):
        parse_worklist(data[:-8])  # the sequence delimitation item is missing


def test_index_gives_the_same_answers_as_a_full_scan():
    items = [item(f"{n:03d}.wl", patient_id=f"P{n % 7}", accession=f"A{n}",
                  station=["US1", "US2"] if n % 3 else "US3", date=f"2024010{n % 5 + 1}",
                  study_uid=f"1.2.3.{n}")
             for n in range(60)]
    snapshot = Snapshot.of(items)
    queries = [mwl_query(PatientID="P3"), mwl_query(sps_ScheduledStationAETitle="US2"),
               mwl_query(sps_ScheduledProcedureStepStartDate="20240103", sps_Modality="US"),
               mwl_query(StudyInstanceUID=["1.2.3.4", "1.2.3.5", "9.9"]),
               mwl_query(PatientID="P1", sps_ScheduledStationAETitle="US3"),
               mwl_query(sps_ScheduledProcedureStepStartDate="20240102",
                         sps_ScheduledProcedureStepStartTime="0900-1000"),
               mwl_query(PatientName="doe^jane", AccessionNumber="A1*"),
               mwl_query(PatientID="nobody")]
    for query in queries:
        compiled = compile_query(attrs_from_dataset(query))
        indexed = [i.name for i in snapshot.search(compiled)]
        scanned = [i.name for i in items if compiled.matches(i.attrs)]
        assert indexed == scanned, query
    assert snapshot.linked(accession_number="A5").name == "005.wl"
    assert snapshot.linked(study_instance_uid="1.2.3.9", accession_number="A5").name == "009.wl"
    assert snapshot.linked(requested_procedure_id="nope") is None


def test_folder_take_out_is_immediate_and_archives(tmp_path):
    async def scenario():
        folder = WorklistFolder(tmp_path / "wl", debounce=0.02, check_interval=0.05)
        (tmp_path / "wl").mkdir()
        write_wl(tmp_path / "wl", "one.wl", patient_id="ONE")
        write_wl(tmp_path / "wl", "two.wl", patient_id="TWO")
        await folder.start()
        try:
            assert [i.id for i in folder.snapshot.items] == ["one", "two"]
            before = folder.snapshot
            archived = await asyncio.to_thread(folder.take_out, "one.wl", archive=True)
            assert [i.id for i in folder.snapshot.items] == ["two"]  # at once
            assert [i.id for i in before.items] == ["one", "two"]  # old snapshots never change
            assert archived == tmp_path / "wl" / "archive" / "one.wl" and archived.is_file()
            # a new file of that name is served again once the old one is seen gone
            write_wl(tmp_path / "wl", "one.wl", patient_id="ONE-AGAIN")
            deadline = time.monotonic() + 5
            while "one" not in [i.id for i in folder.snapshot.items]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            await asyncio.to_thread(folder.take_out, "two.wl", archive=False)
            assert not (tmp_path / "wl" / "two.wl").exists()
        finally:
            await folder.stop()

    asyncio.run(scenario())


def test_cleanup_rules():
    now = 1_000_000.0
    items = [item("old.wl", mtime=now - 25 * 3600, study_uid="1.1"),
             item("stable-uid.wl", mtime=now, study_uid="1.2", accession="X"),
             item("stable-acc.wl", mtime=now, study_uid="1.3", accession="ACC"),
             item("waiting.wl", mtime=now, study_uid="1.4", accession="Y")]
    rules = CleanupRules(delete_on_stable_study=True, stable_age=60, delete_delay_hours=24)
    due = due_for_removal(items, rules, now=now, stable_uids={"1.2"}, stable_accessions={"ACC"})
    assert [(i.name, reason.split()[0]) for i, reason in due] == [
        ("old.wl", "older"), ("stable-uid.wl", "its"), ("stable-acc.wl", "its")]
    off = CleanupRules()
    assert not off.active
    assert due_for_removal(items, off, now=now, stable_uids={"1.2"}, stable_accessions=set()) == []


def test_query_against_item_without_sequence_does_not_crash():
    bare = attrs_from_dataset(worklist_dataset(with_sps=False))
    query = Dataset()
    query.ScheduledProcedureStepSequence = [Dataset()]
    query.ScheduledProcedureStepSequence[0].Modality = "US"
    assert not compile_query(attrs_from_dataset(query)).matches(bare)
