"""Issue 14.1: an Orthanc that was killed (or is still running) leaves rows in
its index's write-ahead log (``index-wal``) that are not in ``index`` yet;
adoption reads a copy of both, sees every instance, and leaves Orthanc's
index, its -wal and its attachments exactly as they were."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import apsw

from tests.adopt.conftest import build_archive, wait_adopted
from tests.adopt.test_adopt import _instances, _orthanc_uuid, _studies


def _attachments_without_wal(index: Path, scratch: Path) -> int | None:
    """DICOM attachments in Orthanc's ``index`` file alone (its -wal left
    out); None when not even the schema is there yet."""
    scratch.mkdir()
    alone = scratch / "index"
    shutil.copyfile(index, alone)
    conn = apsw.Connection(f"file:{alone}?immutable=1",
                           flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return conn.execute("SELECT count(*) FROM AttachedFiles WHERE fileType = 1").fetchone()[0]
    except apsw.SQLError:
        return None
    finally:
        conn.close()


def _sha256_of_folder(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_index_with_a_wal_after_orthanc_was_killed(corpus, tmp_path):
    a = build_archive(tmp_path / "clinic", shared=True, compression=False, sent=corpus,
                      crash=True)
    wal = a.index_dir / "index-wal"
    assert wal.exists() and wal.stat().st_size > 0, "Orthanc left no write-ahead log"
    # The scenario itself: committed rows that only the -wal holds.
    alone = _attachments_without_wal(a.index_dir / "index", tmp_path / "alone")
    assert alone is None or alone < len(a.sent), alone
    before = _sha256_of_folder(a.index_dir)      # index, index-wal and every attachment
    assert "index-wal" in before
    d = a.daemon().start()
    try:
        log = wait_adopted(d)
        assert "has a write-ahead log" in log
        assert f"{len(a.sent)} instance(s) to adopt" in log
        assert _studies(d) == Counter(s.study for s in a.sent)
        rows = _instances(d)
        assert {r[2] for r in rows} == {s.sop_instance_uid for s in a.sent}
        for *_uids, rel in rows:
            assert (d.storage / rel).samefile(a.attachment(_orthanc_uuid(rel)))
    finally:
        assert d.stop() == 0
    # Nothing of Orthanc's changed, and no copy of its index was left behind.
    after = _sha256_of_folder(a.index_dir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if k.startswith(".orthanc-index")]
    # Orthanc recovers its own -wal afterwards and still sees everything.
    orthanc = a.orthanc().start()
    try:
        assert orthanc.get("/statistics")["CountInstances"] == len(a.sent)
    finally:
        orthanc.stop()
