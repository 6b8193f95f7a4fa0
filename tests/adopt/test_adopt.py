"""Issue 14.1-3: an Orthanc archive adopted in place, at start-up and by
``pacs-appliance import-orthanc``, against archives Debian's Orthanc 1.10.1
stored itself (tests/adopt/conftest.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import apsw
import pydicom

from appliance.ops.disk import human_bytes
from tests.adopt.conftest import Archive, status_json, wait_adopted
from tests.adopt.corpus import PATIENTS, make_corpus
from tests.support import Daemon, scu_store


def _get(daemon: Daemon, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}{path}", timeout=30) as r:
        return r.read()


def _studies(daemon: Daemon) -> dict[str, int]:
    """QIDO-RS: Study Instance UID -> NumberOfStudyRelatedInstances."""
    found = json.loads(_get(daemon, "/dicom-web/studies?limit=1000") or b"[]")
    return {s["0020000D"]["Value"][0]: int(s["00201208"]["Value"][0]) for s in found}


def _names(daemon: Daemon) -> set[str]:
    found = json.loads(_get(daemon, "/dicom-web/studies?includefield=00100010"))
    return {s["00100010"]["Value"][0]["Alphabetic"] for s in found if "00100010" in s}


def _instances(daemon: Daemon) -> list[tuple[str, str, str, str]]:
    """(study, series, sop, file_path) of every indexed instance."""
    return daemon.rows("SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, "
                       "i.file_path FROM instances i JOIN series se ON se.id = i.series_pk "
                       "JOIN studies st ON st.id = se.study_pk")


def _orthanc_uuid(file_path: str) -> str:
    """Our file name keeps the Orthanc attachment uuid's 32 hex digits."""
    h = Path(file_path).stem
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _wado(daemon: Daemon, study: str, series: str, sop: str) -> bytes:
    """WADO-RS of one instance as stored (transfer-syntax=*, PS3.18 8.7.3.5.2)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}/dicom-web/studies/{study}/series/{series}"
        f"/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    with urllib.request.urlopen(req, timeout=30) as r:
        ctype, body = r.headers["Content-Type"], r.read()
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"').encode()
    (part,) = [p for p in body.split(b"--" + boundary) if p.strip(b"\r\n-")]
    return part.split(b"\r\n\r\n", 1)[1][:-2]  # headers, then the file, then CRLF


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _attachments(archive: Archive) -> list[str]:
    """Uuids of Orthanc's DICOM attachments (its index, read immutable)."""
    conn = apsw.Connection(f"file:{archive.index_dir / 'index'}?immutable=1",
                           flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return [r[0] for r in conn.execute("SELECT uuid FROM AttachedFiles WHERE fileType = 1")]
    finally:
        conn.close()


def test_guide_layout_adopted_in_place_at_start(shared_archive: Archive, tmp_path):
    a = shared_archive
    before = a.orthanc_files()
    expected = Counter(s.study for s in a.sent)
    d = a.daemon().start()
    try:
        log = wait_adopted(d)
        assert _studies(d) == expected
        assert {name for _, name in PATIENTS} <= _names(d)  # Latin-1 and UTF-8 both right
        rows = _instances(d)
        assert len(rows) == len(a.sent)
        for study, series, sop, rel in rows:
            ours, theirs = d.storage / rel, a.attachment(_orthanc_uuid(rel))
            # A hard link: the same inode, so no byte of the archive is stored twice.
            assert os.path.samefile(ours, theirs), rel
            assert _wado(d, study, series, sop) == theirs.read_bytes()
        assert "0 copied" in log.split("adopted Orthanc's archive in", 1)[1].splitlines()[0]
        snap = status_json(d, lambda s: (s.get("adoption") or {}).get("state") == "done")
        assert snap["adoption"]["instances"]["linked"] == len(a.sent)
        metrics = _get(d, "/metrics").decode()
        assert f'pacs_adoption_instances{{outcome="linked"}} {len(a.sent)}' in metrics
        page = _get(d, "/status.html").decode()
        assert f"Orthanc&#x27;s archive adopted: {len(a.sent)} new instance(s)" in page
    finally:
        assert d.stop() == 0
    assert a.orthanc_files() == before  # Orthanc's files and index, byte for byte

    # Roll back to Orthanc: it starts on the same folders and sees everything;
    # a study it stores then is picked up at the appliance's next start.
    orthanc = a.orthanc().start()
    try:
        assert orthanc.get("/statistics")["CountInstances"] == len(a.sent)
        late = make_corpus(tmp_path / "late", singles=1)[:1]
        assert scu_store(a.config["DicomPort"], [late[0].path]) == [0]
    finally:
        orthanc.stop()
    d = a.daemon("second").start()
    try:
        log = wait_adopted(d)
        assert "1 instance(s) to adopt" in log
        assert _studies(d) == expected + Counter([late[0].study])
    finally:
        d.stop()
    d = a.daemon("third").start()  # a third start adopts nothing twice
    try:
        assert "everything adopted already" in wait_adopted(d)
        assert len(_instances(d)) == len(a.sent) + 1
        assert d.rows("SELECT count(*) FROM orthanc_adopted") == [(len(a.sent) + 1,)]
    finally:
        d.stop()


def test_compressed_separate_folders_and_a_damaged_attachment(compressed_archive: Archive):
    a = compressed_archive
    before = a.orthanc_files()
    damaged = a.attachment(_attachments(a)[3])
    good = damaged.read_bytes()
    damaged.write_bytes(good[: len(good) // 2])  # the disk lost its end
    d = a.daemon().start()
    try:
        log = wait_adopted(d)
        assert "StorageCompression is true" in log
        assert f"{damaged.name} (instance" in log and "not adopted" in log
        rows = _instances(d)
        assert len(rows) == len(a.sent) - 1
        assert sum(_studies(d).values()) == len(a.sent) - 1
        for study, series, sop, rel in rows:
            stored = a.attachment(_orthanc_uuid(rel)).read_bytes()
            original = zlib.decompress(stored[8:])  # Orthanc's ZlibWithSize
            assert int.from_bytes(stored[:8], "little") == len(original)
            assert _wado(d, study, series, sop) == original
        snap = status_json(d, lambda s: (s.get("adoption") or {}).get("state") == "done")
        assert snap["adoption"]["instances"]["unreadable"] == 1
        assert snap["adoption"]["unreadable"][0]["uuid"] == damaged.name
        status = _cli(d.config_path, "status")
        assert "1 unreadable" in status.stdout, status

        # The file is put back: import-orthanc beside the running daemon adopts it.
        damaged.write_bytes(good)
        done = _cli(d.config_path, "import-orthanc")
        assert done.returncode == 0, done
        assert "import-orthanc: 1 instance(s) of 1 studies adopted" in done.stdout
        assert "bytes decompressed:" in done.stdout
        assert sum(_studies(d).values()) == len(a.sent)
    finally:
        assert d.stop() == 0
    assert a.orthanc_files() == before
    assert a.orthanc_count() == len(a.sent)


def test_sigkill_during_adoption_then_restart(shared_archive: Archive):
    a = shared_archive
    # One attachment per transaction: a pass slow enough to be caught half way.
    d = a.daemon(env={"PACS_APPLIANCE_ADOPT_BATCH": "1"}).start()
    seen = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            seen = d.rows("SELECT count(*) FROM orthanc_adopted")[0][0]
        except apsw.Error:
            seen = 0
        if seen >= 3:
            d.kill()
            break
        time.sleep(0.002)
    adopted_at_kill = d.rows("SELECT count(*) FROM orthanc_adopted")[0][0]
    assert 3 <= adopted_at_kill < len(a.sent), adopted_at_kill
    new = make_corpus(d.root / "new", singles=1)[0]
    d = a.daemon("restarted", env={"PACS_APPLIANCE_ADOPT_BATCH": "1"}).start()
    try:
        # C-STORE and QIDO are served at once, the adoption going on beside them.
        assert scu_store(d.dicom_port, [new.path]) == [0]
        assert new.study in _studies(d)
        log = wait_adopted(d)
        assert f"{len(a.sent) - adopted_at_kill} instance(s) to adopt" in log
        rows = _instances(d)
        assert len(rows) == len(a.sent) + 1 == len({r[2] for r in rows})
        assert d.rows("SELECT outcome, count(*) FROM orthanc_adopted GROUP BY outcome") == [
            ("linked", len(a.sent))]
        # The MD5 comparison that follows the pass covered what was adopted before the kill too.
        assert d.rows("SELECT count(*) FROM orthanc_adopted WHERE verified = 0") == [(0,)]
        # Nothing of ours is left unindexed: every file in our layout has its row.
        ours = {f"{p.parent.name}/{p.name}" for p in d.storage.glob("[0-9a-f][0-9a-f]/*.dcm")}
        assert ours == {r[3] for r in rows}
        assert d.incoming_files() == []
    finally:
        d.stop()


def test_import_orthanc_command_with_the_daemon_stopped(shared_archive: Archive, tmp_path):
    a = shared_archive
    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps(a.config))
    before = a.orthanc_files()
    # One of Orthanc's instances reaches the appliance by C-STORE first (the
    # Orthanc index is out of the way meanwhile): adoption must keep that copy.
    (a.index_dir / "index").rename(a.index_dir / "index.away")
    d = a.daemon("first").start()
    try:
        assert scu_store(d.dicom_port, [a.sent[0].path]) == [0]
    finally:
        d.stop()
    (a.index_dir / "index.away").rename(a.index_dir / "index")
    received = d.stored_path(a.sent[0].sop_instance_uid)
    ours = (a.index_dir / "pacs-appliance.sqlite").read_bytes()
    dry = _cli(config, "import-orthanc", "--dry-run")
    assert dry.returncode == 0, dry
    studies = len({s.study for s in a.sent})
    assert f"would adopt {len(a.sent)} instance(s) of {studies} studies" in dry.stdout
    assert (a.index_dir / "pacs-appliance.sqlite").read_bytes() == ours  # a dry run writes nothing
    # One attachment damaged in its middle: same size, Orthanc's MD5 tells.
    damaged = a.attachment(_attachments(a)[5])
    good = damaged.read_bytes()
    damaged.write_bytes(good[:-100] + bytes(b ^ 0xFF for b in good[-100:]))
    first = _cli(config, "import-orthanc")
    assert first.returncode == 4, first
    # The summary counts neither the copy received first nor the withdrawn file,
    # in instances, studies or bytes.
    damaged_sop = pydicom.dcmread(io.BytesIO(good), stop_before_pixels=True).SOPInstanceUID
    kept = [s for s in a.sent if s.sop_instance_uid not in (a.sent[0].sop_instance_uid, damaged_sop)]
    files = [a.attachment(u) for u in _attachments(a)]
    linked = sum(f.stat().st_size for f in files if pydicom.dcmread(f, stop_before_pixels=True)
                 .SOPInstanceUID in {s.sop_instance_uid for s in kept})
    assert f"{len(kept)} instance(s) of {len({s.study for s in kept})} studies adopted" in first.stdout
    assert f"bytes linked: {human_bytes(linked)} ({len(kept)} files" in first.stdout
    assert "already in the archive: 1" in first.stdout
    assert d.stored_path(a.sent[0].sop_instance_uid) == received and received.exists()
    assert f"attachment {damaged.name}" in first.stdout and "MD5" in first.stdout
    assert "unreadable files: 1" in first.stdout
    damaged.write_bytes(good)
    second = _cli(config, "import-orthanc")
    assert second.returncode == 0, second
    assert "1 instance(s) of 1 studies adopted" in second.stdout
    assert a.orthanc_files() == before
    d = a.daemon().start()
    try:
        assert "everything adopted already" in wait_adopted(d)
        assert sum(_studies(d).values()) == len(a.sent)
    finally:
        d.stop()


def test_an_instance_orthanc_replaced_during_a_roll_back_is_replaced_here(shared_archive: Archive,
                                                                           tmp_path):
    """OverwriteInstances true: back on Orthanc for a while, the clinic sends a
    corrected copy of an adopted instance, and Orthanc replaces its own. Going
    forward again, the appliance serves Orthanc's new copy, as it would have
    taken that C-STORE itself, not the one it adopted first."""
    a = shared_archive
    a.config["OverwriteInstances"] = True  # one orthanc.json for both programs
    d = a.daemon().start()
    try:
        wait_adopted(d)
        (old_rel,) = d.rows("SELECT file_path FROM instances WHERE sop_instance_uid = ?",
                            (a.sent[0].sop_instance_uid,))[0]
    finally:
        assert d.stop() == 0
    fixed = pydicom.dcmread(a.sent[0].path)
    fixed.PatientName = "Fixed^Name"
    fixed.save_as(tmp_path / "fixed.dcm")
    orthanc = a.orthanc().start()
    try:
        assert scu_store(a.config["DicomPort"], [tmp_path / "fixed.dcm"]) == [0]
        assert orthanc.get("/statistics")["CountInstances"] == len(a.sent)
    finally:
        orthanc.stop()
    assert not a.attachment(_orthanc_uuid(old_rel)).exists()  # Orthanc dropped its old file

    d = a.daemon("second").start()
    try:
        log = wait_adopted(d)
        assert "1 instance(s) Orthanc had replaced since their adoption (OverwriteInstances)" in log
        rows = {r[2]: r for r in _instances(d)}
        assert len(rows) == len(a.sent)
        study, series, sop, rel = rows[a.sent[0].sop_instance_uid]
        theirs = a.attachment(_orthanc_uuid(rel))
        assert rel != old_rel and os.path.samefile(d.storage / rel, theirs)
        served = _wado(d, study, series, sop)
        assert served == theirs.read_bytes() and b"Fixed^Name" in served
        assert not (d.storage / old_rel).exists()  # our name of the old file went with it
        assert d.rows("SELECT count(*) FROM orthanc_adopted") == [(len(a.sent),)]
    finally:
        assert d.stop() == 0
    d = a.daemon("third").start()  # nothing left to adopt, nothing replaced twice
    try:
        assert "everything adopted already" in wait_adopted(d)
    finally:
        assert d.stop() == 0
