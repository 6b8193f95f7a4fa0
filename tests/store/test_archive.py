"""Archive.store_instance in-process, on real files and a real SQLite index."""

from __future__ import annotations

import hashlib
import random
import shutil
import threading
import time
from pathlib import Path

import apsw
import pydicom
import pytest

from appliance.store.archive import Archive, Origin, StoreResult
from appliance.store.blobs import BlobStore
from appliance.store.index import SCHEMA_VERSION
from tests.bench.datagen import generate_singles
from tests.support import pydicom_file

ORIGIN = Origin("DICOM", "127.0.0.1:1234", "TEST")


@pytest.fixture
def archive(tmp_path):
    a = Archive(tmp_path / "storage", tmp_path / "index")
    a.open()
    yield a
    a.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return generate_singles(tmp_path_factory.mktemp("img"), 40)


def incoming_copy(archive: Archive, src: Path):
    """Receive ``src`` into the archive's incoming directory, as a protocol would."""
    f = archive.new_incoming()
    with open(src, "rb") as s:
        while chunk := s.read(65536):
            f.write(chunk)
    return f


def store(archive: Archive, src: Path):
    return archive.store_instance(incoming_copy(archive, src), ORIGIN)


def stored_files(archive: Archive) -> list[Path]:
    return [p for p in archive.blobs.root.rglob("*.dcm") if ".incoming" not in p.parts]


def test_store_and_find(archive, images):
    out = store(archive, images[0])
    assert out.result is StoreResult.SUCCESS
    found = archive.index.find_instance(out.sop_instance_uid)
    assert found.study_instance_uid == pydicom.dcmread(images[0]).StudyInstanceUID
    assert archive.blobs.path(found.file_path).read_bytes() == images[0].read_bytes()
    assert archive.blobs.partial_files() == []


def test_concurrent_stores_share_commits(archive, images):
    threads = [threading.Thread(target=lambda part=images[i::8]: [store(archive, p) for p in part])
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert archive.index.counts()["instances"] == 40
    assert archive.index.jobs == 40
    # Group commit: fewer transactions than stores when they arrive together.
    assert archive.index.commits < archive.index.jobs


def test_concurrent_duplicates_leave_one_row_one_file(tmp_path, images):
    for overwrite in (False, True):
        a = Archive(tmp_path / f"s{overwrite}", tmp_path / f"i{overwrite}", overwrite_instances=overwrite)
        a.open()
        results = []
        ts = [threading.Thread(target=lambda: results.append(store(a, images[0]).result))
              for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(r.stored for r in results)
        assert a.index.counts()["instances"] == 1
        assert len(stored_files(a)) == 1
        a.close()


def test_index_failure_removes_the_file(archive, images):
    uid = pydicom.dcmread(images[1], stop_before_pixels=True).SOPInstanceUID
    # A real SQLite failure for one instance: a trigger that aborts its insert.
    conn = apsw.Connection(str(archive.index.path))
    conn.execute(f"""CREATE TRIGGER fail BEFORE INSERT ON instances
                     WHEN NEW.sop_instance_uid = '{uid}' BEGIN SELECT RAISE(ABORT, 'boom'); END""")
    conn.close()
    assert store(archive, images[0]).result is StoreResult.SUCCESS
    out = store(archive, images[1])
    assert out.result is StoreResult.FAILURE and "boom" in out.reason
    assert len(stored_files(archive)) == 1
    assert archive.blobs.partial_files() == []
    assert archive.index.counts()["instances"] == 1


def test_not_dicom_is_invalid_and_leaves_nothing(archive, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello" * 1000)
    out = store(archive, junk)
    assert out.result is StoreResult.INVALID and "not a DICOM object" in out.reason
    assert stored_files(archive) == [] and archive.blobs.partial_files() == []


def test_expected_uids_checked(archive):
    f = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    out = archive.store_instance(incoming_copy(archive, f), ORIGIN, expected_sop_class="1.2.3")
    assert out.result is StoreResult.SOP_CLASS_MISMATCH
    out = archive.store_instance(incoming_copy(archive, f), ORIGIN,
                                 expected_sop_class=ds.SOPClassUID, expected_sop_instance="1.2.3")
    assert out.result is StoreResult.UID_MISMATCH
    assert stored_files(archive) == []


def test_partial_files_swept_at_open(tmp_path, images):
    a = Archive(tmp_path / "storage", tmp_path / "index")
    a.open()
    leftover = incoming_copy(a, images[0])
    leftover.close()
    a.close()
    b = Archive(tmp_path / "storage", tmp_path / "index")
    b.open()
    assert b.blobs.partial_files() == []
    b.close()


def test_store_statuses_map_to_dimse_and_http():
    assert (StoreResult.SUCCESS.dimse_status, StoreResult.SUCCESS.http_status) == (0x0000, 200)
    assert (StoreResult.OUT_OF_RESOURCES.dimse_status, StoreResult.OUT_OF_RESOURCES.http_status) == (0xA700, 507)
    assert StoreResult.SOP_CLASS_MISMATCH.dimse_status == 0xA900
    assert StoreResult.INVALID.dimse_status == 0xC000
    assert StoreResult.ALREADY_STORED.stored and not StoreResult.INVALID.stored


def test_schema_version_and_reopen(tmp_path, images):
    a = Archive(tmp_path / "s", tmp_path / "i")
    a.open()
    store(a, images[0])
    a.close()
    conn = apsw.Connection(str(a.index.path))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    b = Archive(tmp_path / "s", tmp_path / "i")
    b.open()
    assert b.index.counts()["instances"] == 1
    b.close()
    shutil.rmtree(tmp_path / "s")


def test_spare_files_are_made_ahead_and_never_left(tmp_path, images):
    """Empty incoming files are made ahead by a thread; a receive takes one,
    the next is made meanwhile, and a clean close leaves none behind."""
    a = Archive(tmp_path / "storage", tmp_path / "index")
    a.open()
    incoming = a.blobs.incoming
    # Ready once handed to the pool, not once on disk (mkstemp comes first).
    deadline = time.monotonic() + 10
    while not a.blobs._spares._made and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(incoming.glob("*.spare")), "no spare file was made"
    f = a.new_incoming()
    assert f.path.endswith(".spare")  # taken, not created on the receiving thread
    f.discard()
    for image in images[:6]:  # more than are kept ahead
        assert store(a, image).result is StoreResult.SUCCESS
    assert a.blobs.partial_files() == []
    a.close()
    assert list(incoming.iterdir()) == []  # spares are deleted at close


def test_a_crash_leaves_spares_that_are_swept_but_not_reported(tmp_path, images, caplog):
    a = Archive(tmp_path / "storage", tmp_path / "index")
    a.open()
    (a.blobs.incoming / "made-ahead.spare").touch()   # what a crash leaves
    (a.blobs.incoming / "half.spare").write_bytes(b"DICM half an object")
    a.close()
    b = Archive(tmp_path / "storage", tmp_path / "index")
    assert b.blobs.open() == 1  # only the one with data counts as a partial file
    assert not (b.blobs.incoming / "made-ahead.spare").exists()
    assert not (b.blobs.incoming / "half.spare").exists()
    b.blobs.close()


def test_files_stored_in_the_same_minute_share_a_folder():
    """One folder to fsync for a group commit of parallel stores; all 256
    folders in turn; ids otherwise random."""
    ids = [BlobStore.new_id(now=600.0 + i) for i in range(60)]
    assert {i[:2] for i in ids} == {"0a"} and len(set(ids)) == 60
    assert {BlobStore.new_id(now=60.0 * m)[:2] for m in range(256)} == {f"{i:02x}" for i in range(256)}
    assert all(BlobStore.relpath(i) == f"0a/{i}.dcm" for i in ids)


def test_incoming_files_write_what_they_were_given(archive):
    """Pieces of any size, with and without a writer thread (the first of two
    receives at once gets one, the second writes on its own thread): the file
    holds exactly the bytes, in order, and the hash is theirs."""
    rng = random.Random(7)
    data = [rng.randbytes(3_000_000) for _ in range(2)]
    first, second = archive.new_incoming(), archive.new_incoming()
    assert first._writers is not None and second._writers is None
    for f, payload in ((first, data[0]), (second, data[1])):
        pos, buffer = 0, bytearray(300_000)  # reused, as the receiving thread's is
        while pos < len(payload):
            n = min(rng.choice((1, 100, 16_372, 70_000, 300_000)), len(payload) - pos)
            buffer[:n] = payload[pos:pos + n]
            with memoryview(buffer) as view:
                f.write(view[:n])
            buffer[:n] = bytes(n)  # overwritten before the writer may have run
            pos += n
    for f, payload in ((first, data[0]), (second, data[1])):
        f.flush()
        assert f.size == len(payload)
        assert Path(f.path).read_bytes() == payload
        assert f.sha256() == hashlib.sha256(payload).hexdigest()
        f.discard()
    third = archive.new_incoming()  # both ended: a receive alone again
    assert third._writers is not None
    third.discard()
