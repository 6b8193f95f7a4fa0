"""The worklist folder in-process: parsing, the index, taking items out, the cleanup rules."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest
from pydicom.dataset import Dataset

from appliance.worklist.catalog import Catalog
from appliance.worklist.housekeeping import CleanupRules, due_for_removal
from appliance.worklist.matching import attrs_from_dataset, compile_query
from appliance.worklist.source import (
    WorklistFileError,
    WorklistFolder,
    WorklistItem,
    parse_worklist,
)
from tests.worklist.helpers import mwl_query, settle, wl_bytes, worklist_dataset, write_wl


def item(name: str, mtime: float = 0.0, **kw) -> WorklistItem:
    return WorklistItem.of(name, attrs_from_dataset(worklist_dataset(**kw)),
                           signature=(int(mtime * 1e9), 0, 0))


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


def test_index_gives_the_same_answers_as_a_full_scan_and_follows_changes():
    items = [item(f"{n:03d}.wl", patient_id=f"P{n % 7}", accession=f"A{n}",
                  station=["US1", "US2"] if n % 3 else "US3", date=f"2024010{n % 5 + 1}",
                  study_uid=f"1.2.3.{n}")
             for n in range(60)]
    snapshot = Catalog.of(items)
    queries = [mwl_query(PatientID="P3"), mwl_query(sps_ScheduledStationAETitle="US2"),
               mwl_query(sps_ScheduledProcedureStepStartDate="20240103", sps_Modality="US"),
               mwl_query(StudyInstanceUID=["1.2.3.4", "1.2.3.5", "9.9"]),
               mwl_query(PatientID="P1", sps_ScheduledStationAETitle="US3"),
               mwl_query(sps_ScheduledProcedureStepStartDate="20240102",
                         sps_ScheduledProcedureStepStartTime="0900-1000"),
               mwl_query(PatientName="doe^jane", AccessionNumber="A1*"),
               mwl_query(PatientID="nobody")]

    def check(catalog, items):
        for query in queries:
            compiled = compile_query(attrs_from_dataset(query))
            indexed = [i.name for i in catalog.search(compiled)]
            scanned = [i.name for i in sorted(items, key=lambda i: i.name)
                       if compiled.matches(i.attrs)]
            assert indexed == scanned, query

    check(snapshot, items)
    assert snapshot.linked(accession_number="A5").name == "005.wl"
    assert snapshot.linked(study_instance_uid="1.2.3.9", accession_number="A5").name == "009.wl"
    assert snapshot.linked(requested_procedure_id="nope") is None
    # one item at a time: changed, removed, added; the index follows
    changed = item("003.wl", patient_id="P1", accession="A3", station="US3", date="20240102",
                   study_uid="1.2.3.3")
    added = item("100.wl", patient_id="P3", accession="A100", station="US2", date="20240103")
    snapshot.update([changed, added], ["005.wl", "nothing.wl"])
    now = [changed if i.name == "003.wl" else i for i in items if i.name != "005.wl"] + [added]
    check(snapshot, now)
    assert snapshot.linked(accession_number="A5") is None
    assert [i.name for i in snapshot.items] == sorted(i.name for i in now)
    # what a restart restores is the same catalog
    again = Catalog()
    assert again.restore(*snapshot.dump())
    check(again, now)
    # ... and a restored catalog follows changes too (its index read first)
    again.update([item("005.wl", patient_id="P3", accession="A5")], ["003.wl"])
    back = [i for i in now if i.name != "003.wl"] + [item("005.wl", patient_id="P3",
                                                          accession="A5")]
    check(again, back)
    assert again.linked(accession_number="A5").name == "005.wl"
    # an index that is not a dump's is refused
    assert not Catalog().restore({}, {"not": b"an index"})
    # an index that does not belong to its items (damaged, or of other items) is rebuilt
    # from the items, path by path, when a query first reads it
    items_now, index = snapshot.dump()
    damaged = dict(index)
    for path in list(damaged)[::2]:
        damaged[path] = b"\xff" + damaged[path][1:]
    damaged[(0x00100020,)] = Catalog.of([item("other.wl", patient_id="P3")]).dump()[1][
        (0x00100020,)]  # of other items
    restored = Catalog()
    assert restored.restore(dict(items_now), damaged)
    check(restored, now)
    assert restored.linked(accession_number="A5") is None
    assert restored.linked(accession_number="A7").name == "007.wl"


def test_folder_take_out_is_immediate_and_archives(tmp_path):
    async def scenario():
        folder = WorklistFolder(tmp_path / "wl", debounce=0.02, check_interval=0.05)
        (tmp_path / "wl").mkdir()
        write_wl(tmp_path / "wl", "one.wl", patient_id="ONE")
        write_wl(tmp_path / "wl", "two.wl", patient_id="TWO")
        await folder.start()
        try:
            assert [i.id for i in folder.snapshot.items] == ["one", "two"]
            before = folder.snapshot.items
            archived = await asyncio.to_thread(folder.take_out, "one.wl", archive=True)
            assert [i.id for i in folder.snapshot.items] == ["two"]  # at once
            assert [i.id for i in before] == ["one", "two"]  # a list taken never changes
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


# --------------------------------------------------------------------------- read your writes


def _ids(catalog) -> list[str]:
    return [i.id for i in catalog.items]


def _patient(catalog, name: str) -> str:
    return catalog.get(name).value(0x00100020)


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "folder-times"])
def test_changes_made_before_a_query_are_in_it(tmp_path, inotify):
    """Created (in place or renamed into place), rewritten and deleted files are in the
    very next current(), without waiting for the background thread (debounce 10 s here)."""
    folder = tmp_path / "wl"
    folder.mkdir()

    async def scenario():
        wl = WorklistFolder(folder, debounce=10, check_interval=30, inotify=inotify)
        await wl.start()
        try:
            expected: list[str] = []
            for round_ in range(25):
                for n in range(4):
                    name = f"r{round_:02d}-{n}"
                    write_wl(folder, f"{name}.wl", patient_id=name, atomic=n % 2 == 0)
                    expected.append(name)
                assert _ids(wl.current()) == sorted(expected)
            # renamed away and back, deleted
            os.rename(folder / "r00-0.wl", folder / "r00-0.txt")
            assert "r00-0" not in _ids(wl.current())
            os.rename(folder / "r00-0.txt", folder / "r00-0.wl")
            assert "r00-0" in _ids(wl.current())
            (folder / "r00-1.wl").unlink()
            assert "r00-1" not in _ids(wl.current())
            # replaced by a rename
            write_wl(folder, "r01-0.wl", patient_id="REPLACED")
            assert _patient(wl.current(), "r01-0.wl") == "REPLACED"
            if inotify:
                # rewritten in place, same length, at once (same size, maybe same mtime)
                for value in ("SAME-1", "SAME-2", "SAME-3"):
                    write_wl(folder, "r01-1.wl", patient_id=value, atomic=False)
                    assert _patient(wl.current(), "r01-1.wl") == value
        finally:
            await wl.stop()

    asyncio.run(scenario())


def test_without_inotify_files_rewritten_in_place_are_seen_by_the_periodic_check(tmp_path):
    folder = tmp_path / "wl"
    folder.mkdir()
    write_wl(folder, "a.wl", patient_id="BEFORE")

    async def scenario():
        wl = WorklistFolder(folder, debounce=0.01, check_interval=0.05, inotify=False)
        await wl.start()
        try:
            write_wl(folder, "a.wl", patient_id="AFTER!", atomic=False)  # same length
            deadline = time.monotonic() + 5
            while _patient(wl.snapshot, "a.wl") != "AFTER!":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        finally:
            await wl.stop()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- the parse cache


def _started(folder, cache, **kw) -> tuple[WorklistFolder, str]:
    """A started folder and the log line of its start."""
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("appliance.worklist")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        wl = WorklistFolder(folder, cache=cache, **kw)
        asyncio.run(wl.start())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return wl, "\n".join(records)


def _stop(wl: WorklistFolder) -> None:
    asyncio.run(wl.stop())


def _old(path) -> None:
    """Date a file back, as one written long before the daemon looked at it."""
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))


def test_restart_reads_only_the_files_that_changed(tmp_path):
    folder, cache = tmp_path / "wl", tmp_path / "index" / "cache.sqlite"
    folder.mkdir()
    cache.parent.mkdir()
    for n in range(40):
        write_wl(folder, f"c{n:02d}.wl", patient_id=f"C{n:02d}", accession=f"ACC{n:02d}")
        _old(folder / f"c{n:02d}.wl")
    settle()
    wl, started = _started(folder, cache)
    assert "40 items (0 from the parse cache, 40 files read)" in started
    _stop(wl)
    assert cache.is_file()
    # while stopped: one changed, one deleted, one added, one touched (same bytes)
    write_wl(folder, "c00.wl", patient_id="CHANGED", accession="ACC00")
    _old(folder / "c00.wl")
    (folder / "c01.wl").unlink()
    write_wl(folder, "new.wl", patient_id="NEW", accession="ACCNEW")
    _old(folder / "new.wl")
    os.utime(folder / "c02.wl", ns=(5, 5))
    settle()
    wl, started = _started(folder, cache)
    try:
        assert "40 items (37 from the parse cache, 3 files read)" in started
        catalog = wl.current()
        assert _patient(catalog, "c00.wl") == "CHANGED" and catalog.get("c01.wl") is None
        assert _patient(catalog, "new.wl") == "NEW"
        assert catalog.linked(accession_number="ACCNEW").name == "new.wl"  # indexed
        query = compile_query(attrs_from_dataset(mwl_query(PatientID="C05")))
        assert [i.name for i in catalog.search(query)] == ["c05.wl"]
    finally:
        _stop(wl)
    # the same again, now all from the cache (the snapshot written at the last stop)
    wl, started = _started(folder, cache)
    try:
        assert "40 items (40 from the parse cache, 0 files read)" in started
        assert _patient(wl.current(), "c00.wl") == "CHANGED"
    finally:
        _stop(wl)


def test_a_file_rewritten_right_after_it_was_cached_is_read_again(tmp_path):
    # Same size, same inode and the mtime put back: only its bytes differ. Checked within
    # the file system's timestamp granularity of its last write, its row is not trusted.
    folder, cache = tmp_path / "wl", tmp_path / "cache.sqlite"
    folder.mkdir()
    path = write_wl(folder, "r.wl", patient_id="FIRST1")
    wl, _ = _started(folder, cache)
    _stop(wl)
    st = path.stat()
    write_wl(folder, "r.wl", patient_id="SECOND", atomic=False)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_ino) == (st.st_size, st.st_ino)
    wl, _ = _started(folder, cache)
    try:
        assert _patient(wl.current(), "r.wl") == "SECOND"
    finally:
        _stop(wl)


def test_a_damaged_cache_is_replaced_and_every_file_read(tmp_path):
    folder, cache = tmp_path / "wl", tmp_path / "cache.sqlite"
    folder.mkdir()
    write_wl(folder, "d.wl", patient_id="D1")
    wl, _ = _started(folder, cache)
    _stop(wl)
    cache.write_bytes(b"this is no SQLite file" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"cache.sqlite{suffix}").unlink(missing_ok=True)
    wl, started = _started(folder, cache)
    try:
        assert "is damaged: starting a new one" in started
        assert "1 items (0 from the parse cache, 1 files read)" in started
        assert _patient(wl.current(), "d.wl") == "D1"
    finally:
        _stop(wl)
    # and a cache of another folder is not used for this one
    other = tmp_path / "other"
    other.mkdir()
    write_wl(other, "d.wl", patient_id="OTHER")
    wl, started = _started(other, cache)
    try:
        assert "1 items (0 from the parse cache, 1 files read)" in started
        assert _patient(wl.current(), "d.wl") == "OTHER"
    finally:
        _stop(wl)


def _cached(tmp_path, prefix: str, count: int, **kw) -> tuple:
    """(folder, cache): ``count`` items written long ago, read once into the cache."""
    folder, cache = tmp_path / "wl", tmp_path / "cache.sqlite"
    folder.mkdir()
    for n in range(count):
        write_wl(folder, f"{prefix}{n}.wl", patient_id=f"{prefix.upper()}{n}", **kw)
        _old(folder / f"{prefix}{n}.wl")
    settle()  # older than the cache's window: a restart takes them from it
    _stop(_started(folder, cache)[0])
    return folder, cache


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "payload", "header"])
def test_a_damaged_snapshot_is_not_used_and_every_file_is_read(tmp_path, damage):
    """Whatever the damage, a value from a damaged snapshot is never served (a flipped bit
    in an item's cached content was served as a wrong patient name: its checksum)."""
    folder, cache = _cached(tmp_path, "s", 5)
    snapshot = tmp_path / "cache.snapshot"
    data = snapshot.read_bytes()
    snapshot.write_bytes({"truncated": data[:-100], "garbage": data[:40] + b"\xff" * 500,
                          "empty": b"", "payload": _flip(data, len(data) - 300),
                          "header": _flip(data, data.index(b"S3"))}[damage])
    wl, started = _started(folder, cache)
    try:
        assert "cannot be read" in started
        assert "5 items (0 from the parse cache, 5 files read)" in started
        assert [_patient(wl.current(), f"s{n}.wl") for n in range(5)] == [
            f"S{n}" for n in range(5)]
    finally:
        _stop(wl)
    # the next start has a whole snapshot again
    wl, started = _started(folder, cache)
    try:
        assert "5 items (5 from the parse cache, 0 files read)" in started
    finally:
        _stop(wl)


def _helper_folder(folder) -> None:
    """60 items, some in other character sets, one garbage, one empty, one too short."""
    folder.mkdir()
    for n in range(57):
        write_wl(folder, f"h{n:02d}.wl", patient_id=f"H{n:02d}", accession=f"HA{n:02d}",
                 charset=("ISO_IR 192", "ISO_IR 100", None)[n % 3],
                 patient_name=("Müller^Jürgen" if n % 3 == 1 else f"DOE^N{n}"))
    (folder / "garbage.wl").write_bytes(b"not a worklist at all" * 10)
    (folder / "empty.wl").write_bytes(b"")
    (folder / "short.wl").write_bytes(wl_bytes(worklist_dataset())[:150])


def _served(wl: WorklistFolder) -> dict:
    catalog = wl.current()
    # unpacked: marshal's bytes depend on which strings a process shares, not on values
    return {item.name: (item.signature, item.digest, item.charset, item.unpack())
            for item in catalog.items}


def test_a_first_start_with_many_files_has_a_helper_process_read_some(tmp_path):
    """The helper's items are the ones this process reads itself, value for value; files
    it finds unreadable are left out and named, as here."""
    folder = tmp_path / "wl"
    _helper_folder(folder)
    alone, started_alone = _started(folder, None, helper_from=10**9)
    try:
        expected = _served(alone)
    finally:
        _stop(alone)
    assert "60 files read) in" in started_alone
    wl, started = _started(folder, tmp_path / "cache.sqlite", helper_from=10)
    try:
        assert "60 files read, 60 of them by a helper process" in started
        assert _served(wl) == expected and len(expected) == 57
        for name in ("garbage.wl", "short.wl"):
            assert f"worklist file {name} skipped" in started
        assert "empty.wl" not in started
        query = compile_query(attrs_from_dataset(mwl_query(PatientName="Müller^Jürgen")))
        assert len(list(wl.current().search(query))) == 19
    finally:
        _stop(wl)


def test_a_helper_process_that_cannot_run_leaves_its_files_to_the_folder(tmp_path):
    import multiprocessing

    folder = tmp_path / "wl"
    _helper_folder(folder)
    spawn = multiprocessing.get_context("spawn")
    spawn.set_executable("/bin/false")  # the helper dies at once
    try:
        wl, started = _started(folder, None, helper_from=10)
    finally:
        spawn.set_executable(sys.executable)
    try:
        assert "the helper process failed" in started
        assert "60 files read) in" in started
        assert len(wl.current()) == 57
        assert _patient(wl.current(), "h05.wl") == "H05"
    finally:
        _stop(wl)


def test_a_file_rewritten_in_place_with_its_size_and_mtime_put_back_is_read_again(tmp_path):
    """cp -p or rsync -t over a file while the daemon is stopped keep size, inode and
    mtime; the change time shows the rewrite, and the new bytes are served."""
    folder, cache = _cached(tmp_path, "i", 3, patient_name="BEFORE^ONE")
    path = folder / "i1.wl"
    st = path.stat()
    write_wl(folder, "i1.wl", patient_id="I1", patient_name="AFTER^TWO", atomic=False)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (st.st_size, st.st_ino,
                                                               st.st_mtime_ns)
    wl, started = _started(folder, cache)
    try:
        assert wl.current().get("i1.wl").value(0x00100010) == "AFTER^TWO"
        assert wl.current().get("i0.wl").value(0x00100010) == "BEFORE^ONE"
        assert "3 items (2 from the parse cache, 1 files read)" in started
    finally:
        _stop(wl)


def test_a_damaged_journal_row_is_not_used(tmp_path):
    """A journal row whose bytes changed in the SQLite file (SQLite keeps no checksum of
    its own over them) is refused by the row's checksum, and the file is read."""
    import apsw

    from appliance.worklist.cache import ParseCache, Row
    from appliance.worklist.reading import read_file

    folder, cache = _cached(tmp_path, "k", 3, patient_name="OLD^NAME")
    # While stopped: k1 rewritten, and its row journalled as the running daemon would.
    write_wl(folder, "k1.wl", patient_id="K1", patient_name="NEW^NAME")
    _old(folder / "k1.wl")
    settle()
    read = read_file(str(folder), "k1.wl")
    mtime_ns, size, ino = read.signature
    journal = ParseCache(cache, folder)
    assert journal.open()
    journal.write([("k1.wl", Row(size, mtime_ns, ino, read.digest, time.time_ns(),
                                 read.charset, read.packed))])
    journal.close()
    db = apsw.Connection(str(cache))
    (packed,) = db.execute("SELECT packed FROM journal WHERE name='k1.wl'").fetchone()
    db.execute("UPDATE journal SET packed=? WHERE name='k1.wl'",
               (_flip(packed, packed.index(b"NEW^NAME") + 1),))
    db.close()
    wl, started = _started(folder, cache)
    try:
        assert "damaged (checksum)" in started
        assert wl.current().get("k1.wl").value(0x00100010) == "NEW^NAME"
        assert "3 items (2 from the parse cache, 1 files read)" in started
    finally:
        _stop(wl)


def test_an_item_whose_content_cannot_be_unpacked_is_still_removed_from_the_index():
    """Taking out an item reads its keys from its content; content that cannot be unpacked
    (damaged) must not leave its name in the index (a KeyError for later queries)."""
    good = item("g.wl", patient_id="SAME", accession="G1")
    bad_item = item("b.wl", patient_id="SAME", accession="B1")
    damaged = WorklistItem("b.wl", bad_item.size, bad_item.mtime_ns, bad_item.ino,
                           bad_item.digest, bad_item.charset, b"\xff not marshal")
    items, index = Catalog.of([good, bad_item]).dump()
    catalog = Catalog()
    assert catalog.restore({"g.wl": good, "b.wl": damaged}, index)
    catalog.update([item("b.wl", patient_id="OTHER", accession="B2")], ["b.wl"])
    query = compile_query(attrs_from_dataset(mwl_query(PatientID="SAME")))
    assert [i.name for i in catalog.search(query)] == ["g.wl"]
    assert catalog.linked(accession_number="B1") is None
    assert catalog.linked(accession_number="B2").name == "b.wl"


def test_a_journal_row_that_does_not_describe_the_file_costs_a_read_not_a_wrong_answer(tmp_path):
    # A crash between renaming a new snapshot into place and emptying the journal leaves
    # journal rows older than the snapshot: they name file versions that are gone.
    from appliance.worklist.cache import ParseCache, Row

    folder, cache = _cached(tmp_path, "j", 3)
    other = ParseCache(cache, folder)
    assert other.open()
    # j0: a row of another content under an old signature; j1: a tombstone; j2: untouched
    snapshot = other.load().items
    stale, j2 = snapshot["j1.wl"], snapshot["j2.wl"]
    other.write([("j0.wl", Row(stale.size, 5, stale.ino, stale.digest, 10**18, stale.charset,
                               bytes(j2.packed))),
                 ("j1.wl", None)])
    other.close()
    wl, started = _started(folder, cache)
    try:
        assert "3 items (1 from the parse cache, 2 files read)" in started
        assert [_patient(wl.current(), f"j{n}.wl") for n in range(3)] == ["J0", "J1", "J2"]
        assert wl.current().linked(accession_number=wl.current().get("j1.wl").accession_number)
    finally:
        _stop(wl)
