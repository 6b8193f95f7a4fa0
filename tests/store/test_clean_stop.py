"""A clean stop (SIGTERM) leaves the whole index in the .sqlite file: the WAL is
checkpointed (TRUNCATE) after the last write, so the file copied alone, without
its -wal and -shm, holds every acknowledged instance."""

from __future__ import annotations

import shutil

import apsw

from tests.ops import image
from tests.support import scu_store


def test_sigterm_leaves_a_complete_index_file(make_daemon, tmp_path):
    d = make_daemon()
    files = [image(tmp_path / "in", f"P{i % 3}", number=i) for i in range(30)]
    assert scu_store(d.dicom_port, files) == [0] * len(files)
    # A store after the others, alone in the last commit before the stop.
    last = image(tmp_path / "in", "LAST")
    assert scu_store(d.dicom_port, [last]) == [0]
    acknowledged = {p.stem for p in files + [last]}  # image() names files by SOP Instance UID
    wal = d.index_file.with_name(d.index_file.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 0  # WAL mode, writes not folded in yet

    assert d.stop() == 0
    assert not wal.exists() or wal.stat().st_size == 0
    alone = tmp_path / "copy" / d.index_file.name
    alone.parent.mkdir()
    shutil.copyfile(d.index_file, alone)
    assert [p.name for p in alone.parent.iterdir()] == [alone.name]  # no -wal, no -shm
    conn = apsw.Connection(str(alone), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {r[0] for r in conn.execute("SELECT sop_instance_uid FROM instances")}
    finally:
        conn.close()
    assert stored == acknowledged
