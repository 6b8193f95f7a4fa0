"""Issue 14.1: an Orthanc archive whose files cannot be hard-linked (they are on
another filesystem, or belong to another user under ``fs.protected_hardlinks``)
is adopted by reference: nothing copied, every instance served from Orthanc's
own files, which no delete, patient fix, backup, restore or reindex ever
writes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from tests.adopt.conftest import Archive, copy_archive, status_json, wait_adopted
from tests.adopt.test_adopt import _cli, _get, _studies, _wado
from tests.dicom.test_qr_retrieve import (  # noqa: F401 - storescp: a fixture
    modalities, movescu, storescp,
)
from tests.outbound.test_commitment import scanner  # noqa: F401 - a fixture
from tests.support import Daemon, run, wait_for

_IMAGE_MB = 64


@contextlib.contextmanager
def _on_second_filesystem(a: Archive, work: Path):
    """Orthanc's attachment folders (``xx/yy``) moved onto a loop-mounted ext4
    image and bind-mounted back where Orthanc keeps them: the same paths, on
    another filesystem than the folder ours go to, so every link fails EXDEV."""
    if os.geteuid() != 0:
        pytest.skip("mounting a second filesystem needs root (CI runs the suite as root)")
    image, fs = work / "orthanc.img", work / "orthanc-fs"
    fs.mkdir()
    _must(["truncate", "-s", f"{_IMAGE_MB}M", str(image)])
    _must(["mkfs.ext4", "-q", "-F", str(image)])
    loop = run(["mount", "-o", "loop", str(image), str(fs)])  # root in a container: --privileged
    if loop.returncode != 0:
        # No loop device here (some containers): a tmpfs is another filesystem too.
        tmpfs = run(["mount", "-t", "tmpfs", "-o", f"size={_IMAGE_MB}m", "tmpfs", str(fs)])
        if tmpfs.returncode != 0:
            # Nothing moved yet. The reference mode stays tested through the
            # protected_hardlinks case below, which needs no mount.
            pytest.skip(f"this machine mounts no second filesystem: {loop.stderr.strip()}; "
                        f"{tmpfs.stderr.strip()}")
    mounted: list[Path] = []
    try:
        for folder in sorted(a.storage.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]")):
            there = fs / folder.relative_to(a.storage)
            shutil.copytree(folder, there)  # the same bytes (sha256 checked below)
            shutil.rmtree(folder)
            folder.mkdir()
            _must(["mount", "--bind", str(there), str(folder)])
            mounted.append(folder)
        assert mounted
        yield mounted
    finally:
        for folder in reversed(mounted):
            run(["umount", str(folder)])
        run(["umount", str(fs)])


def _must(cmd: list[str]) -> None:
    done = run(cmd)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr.strip()}"


def _ours(storage: Path) -> list[Path]:
    """Files of our own layout (``ab/ab<30 hex>.dcm``) in the storage folder."""
    return [p for p in storage.glob("[0-9a-f][0-9a-f]/*.dcm") if p.name[:2] == p.parent.name]


def _newest_backup(d: Daemon) -> str:
    return sorted((Path(d.config["IndexDirectory"]) / "backups").glob("backup-*"))[-1].name


def _rows(d: Daemon) -> dict[str, str]:
    return dict(d.rows("SELECT sop_instance_uid, file_path FROM instances"))


def _delete(d: Daemon, path: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{d.http_port}{path}", method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status


def _post(d: Daemon, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{d.http_port}{path}", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_files_on_another_filesystem_are_adopted_by_reference(templates, tmp_path, storescp,
                                                              scanner):
    a = copy_archive(templates["shared"], tmp_path / "clinic")
    port, received = storescp
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    known = modalities(port)["DicomModalities"] | scanner.listen().modality()
    config = dict(a.config, Backups={"IntervalHours": 0, "Keep": 3, "StorageMirror": str(mirror)},
                  DicomModalities=known)
    expected = Counter(s.study for s in a.sent)
    with _on_second_filesystem(a, tmp_path):
        before = a.orthanc_files()
        d = Daemon(a.root / "appliance", dict(config)).start()
        try:
            log = wait_adopted(d)
            summary = log.split("adopted Orthanc's archive in", 1)[1].splitlines()[0]
            assert f"{len(a.sent)} referenced" in summary and "0 copied" in summary, summary
            assert "adopting them by reference" in log
            rows = _rows(d)
            assert len(rows) == len(a.sent)
            assert all(p.startswith("orthanc:") for p in rows.values()), rows
            assert _ours(a.storage) == []  # nothing copied: no byte of the archive twice
            assert _studies(d) == expected
            sops = {s.sop_instance_uid: s for s in a.sent}
            series = dict(d.rows("SELECT i.sop_instance_uid, se.series_instance_uid FROM instances i "
                                 "JOIN series se ON se.id = i.series_pk"))
            for sop, ref in rows.items():
                theirs = a.attachment(ref.split(":", 1)[1])
                assert _wado(d, sops[sop].study, series[sop], sop) == theirs.read_bytes()
            snap = status_json(d, lambda s: (s.get("adoption") or {}).get("state") == "done")
            assert snap["adoption"]["instances"]["referenced"] == len(a.sent)
            assert snap["adoption"]["instances"]["copied"] == 0
            assert f'pacs_adoption_instances{{outcome="referenced"}} {len(a.sent)}' in \
                _get(d, "/metrics").decode()
            assert f"{len(a.sent)} referenced" in _cli(d.config_path, "status").stdout

            # C-MOVE sends what Orthanc's files hold (in the transfer syntax
            # storescp takes: compared decoded).
            study = next(iter(expected))
            r = movescu(d, "STORESCP", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
            assert r.returncode == 0, r.stderr
            assert len(list(received.iterdir())) == expected[study]

            # The outbound queue (a send on demand, as forwarding sends) too.
            other = next(st for st in expected if st != study)
            job = _post(d, "/modalities/storescp/store", {"Resources": [other]})
            wait_for(lambda: json.loads(_get(d, job["Path"]))["State"] == "Success",
                     what="the send job")
            got = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, received.iterdir())}
            assert len(got) == expected[study] + expected[other]
            for sop, ds in got.items():
                assert ds == pydicom.dcmread(a.attachment(rows[sop].split(":", 1)[1]))

            # A zip download of a study holds Orthanc's files as they are.
            req = urllib.request.Request(f"http://127.0.0.1:{d.http_port}/dicom-web/studies/{other}",
                                         headers={"Accept": "application/zip"})
            with urllib.request.urlopen(req, timeout=60) as r, \
                    zipfile.ZipFile(io.BytesIO(r.read())) as z:
                zipped = {n.split("/")[1].removesuffix(".dcm"): z.read(n) for n in z.namelist()}
            assert len(zipped) == expected[other]
            for sop, data in zipped.items():
                assert data == a.attachment(rows[sop].split(":", 1)[1]).read_bytes()

            # Storage commitment checks each referenced file's size and SHA-256.
            classes = dict(d.rows("SELECT sop_instance_uid, sop_class_uid FROM instances"))
            status, _txn = scanner.request(d, [(classes[sop], sop) for sop in rows])
            assert status == 0x0000
            event_type, info = scanner.report(1)
            assert event_type == 1 and "FailedSOPSequence" not in info
            assert len(info.ReferencedSOPSequence) == len(rows)

            # A delete forgets: Orthanc's file stays, byte for byte.
            gone = next(s for s in a.sent if s.study != study)
            gone_file = a.attachment(rows[gone.sop_instance_uid].split(":", 1)[1])
            assert _delete(d, f"/dicom-web/studies/{gone.study}/series/{series[gone.sop_instance_uid]}"
                              f"/instances/{gone.sop_instance_uid}") == 204
            assert gone.sop_instance_uid not in _rows(d)
            assert gone_file.is_file()

            # A patient fix writes files of ours and drops the references.
            _post(d, f"/studies/{study}/modify",
                  {"Replace": {"PatientName": "Fixed^Name"}, "KeepUIDs": True})
            fixed = {sop for sop, s in sops.items() if s.study == study}
            after = _rows(d)
            assert all(not after[sop].startswith("orthanc:") for sop in fixed)
            assert len(_ours(a.storage)) == len(fixed)
            assert pydicom.dcmread(d.storage / after[next(iter(fixed))]).PatientName == "Fixed^Name"

            backup = _cli(d.config_path, "backup", "now")
            assert backup.returncode == 0, backup
        finally:
            assert d.stop() == 0
        assert a.orthanc_files() == before  # nothing of Orthanc's written

        # The mirror holds the referenced files under orthanc/, never at their own paths.
        referenced = {sop: p for sop, p in after.items() if p.startswith("orthanc:")}
        for p in referenced.values():
            u = p.split(":", 1)[1]
            assert (mirror / "orthanc" / u[:2] / u).read_bytes() == a.attachment(u).read_bytes()

        # Restore keeps the references whose files Orthanc has; one it lost
        # (a roll-back that deleted it, say) comes back from the mirror as a
        # file of ours. A reindex adopts the references again, the deleted
        # instance staying deleted (the old index's marks are carried over).
        lost_sop, lost_ref = next(iter(referenced.items()))
        lost = a.attachment(lost_ref.split(":", 1)[1])
        lost_bytes = lost.read_bytes()
        lost.unlink()
        restored = _cli(d.config_path, "backup", "restore", _newest_backup(d))
        assert restored.returncode == 0, restored
        now = _rows(d)
        assert {k: v for k, v in now.items() if k != lost_sop} == \
            {k: v for k, v in after.items() if k != lost_sop}
        assert not now[lost_sop].startswith("orthanc:")
        assert (d.storage / now[lost_sop]).read_bytes() == lost_bytes
        assert not lost.exists()  # nothing written in Orthanc's folder
        lost.write_bytes(lost_bytes)  # Orthanc's archive as it was, for what follows
        reindexed = _cli(d.config_path, "reindex")
        assert reindexed.returncode == 0, reindexed
        assert f"({len(referenced) - 1} by reference" in reindexed.stdout, reindexed.stdout
        assert _rows(d) == now
        assert gone.sop_instance_uid not in _rows(d)

        d = Daemon(a.root / "again", dict(config)).start()
        try:
            assert "everything adopted already" in wait_adopted(d)
            assert sum(_studies(d).values()) == len(a.sent) - 1
        finally:
            assert d.stop() == 0

        # The index lost: a reindex still brings every reference back, from
        # Orthanc's index (and, with no record of the delete, the deleted one).
        for p in Path(config["IndexDirectory"]).glob("pacs-appliance.sqlite*"):
            p.unlink()
        reindexed = _cli(d.config_path, "reindex")
        assert reindexed.returncode == 0, reindexed
        assert f"({len(referenced)} by reference" in reindexed.stdout, reindexed.stdout
        assert "instances deleted since their adoption are back" in reindexed.stdout
        assert _rows(d) == {**now, gone.sop_instance_uid: rows[gone.sop_instance_uid]}
        assert a.orthanc_files() == before
        assert a.orthanc_count() == len(a.sent)


def _another_owner(a: Archive) -> list[str]:
    """Give Orthanc's files to nobody (Orthanc's own user, say) and return the command
    prefix that runs the daemon as root without CAP_FOWNER and CAP_DAC_OVERRIDE, which
    ``fs.protected_hardlinks`` treats as any other user (skips where that cannot be)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the daemon without CAP_FOWNER")
    if Path("/proc/sys/fs/protected_hardlinks").read_text().strip() != "1":
        pytest.skip("fs.protected_hardlinks is off: any link succeeds")
    for rel in a.orthanc_files():
        if rel != "index":
            os.chown(a.storage / rel, 65534, 65534)
            os.chmod(a.storage / rel, 0o644)
    return ["setpriv", "--bounding-set", "-dac_override,-fowner", "--"]


def test_files_of_another_owner_are_adopted_by_reference(shared_archive: Archive):
    """The Debian case: Orthanc's files belong to its user and the daemon runs
    as another one. Here the daemon is root without CAP_FOWNER and
    CAP_DAC_OVERRIDE (setpriv), which ``fs.protected_hardlinks`` treats as any
    other user: linking a file it neither owns nor may write is EPERM."""
    a = shared_archive
    limited = _another_owner(a)
    before = a.orthanc_files()
    d = a.daemon(prefix=limited).start()
    try:
        log = wait_adopted(d)
        assert "Operation not permitted): adopting them by reference" in log
        rows = _rows(d)
        assert len(rows) == len(a.sent)
        assert all(p.startswith("orthanc:") for p in rows.values())
        assert _ours(a.storage) == []
        series = dict(d.rows("SELECT i.sop_instance_uid, se.series_instance_uid FROM instances i "
                             "JOIN series se ON se.id = i.series_pk"))
        for s in a.sent:
            theirs = a.attachment(rows[s.sop_instance_uid].split(":", 1)[1])
            assert _wado(d, s.study, series[s.sop_instance_uid], s.sop_instance_uid) == \
                theirs.read_bytes()
    finally:
        assert d.stop() == 0
    d = a.daemon("second", prefix=limited).start()
    try:
        assert "everything adopted already" in wait_adopted(d)
    finally:
        assert d.stop() == 0
    assert a.orthanc_files() == before


def test_references_orthanc_deleted_since_are_forgotten(shared_archive: Archive):
    """Orthanc, run again on its folders, deletes an instance adopted by reference: the
    next start forgets it, as Orthanc did, and says so. A referenced file gone while
    Orthanc's index still lists it (a folder not mounted, a fault) is kept and listed."""
    a = shared_archive
    limited = _another_owner(a)
    d = a.daemon(prefix=limited).start()
    try:
        wait_adopted(d)
        rows = _rows(d)
        assert len(rows) == len(a.sent) and all(p.startswith("orthanc:") for p in rows.values())
    finally:
        assert d.stop() == 0

    deleted, lost = a.sent[0], a.sent[-1]
    orthanc = a.orthanc().start()
    try:
        ids = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"]
               for i in orthanc.get("/instances?expand")}
        orthanc.delete(f"/instances/{ids[deleted.sop_instance_uid]}")
    finally:
        orthanc.stop()
    assert not a.attachment(rows[deleted.sop_instance_uid].split(":", 1)[1]).exists()
    lost_file = a.attachment(rows[lost.sop_instance_uid].split(":", 1)[1])
    aside = lost_file.with_name(lost_file.name + ".aside")
    lost_file.rename(aside)

    d = a.daemon("second", prefix=limited).start()
    try:
        log = wait_adopted(d)
        assert "1 instance(s) adopted by reference were deleted by Orthanc since" in log
        assert "1 instance(s) adopted by reference have no file in Orthanc's folder" in log
        assert _rows(d) == {k: v for k, v in rows.items() if k != deleted.sop_instance_uid}
        qido = _get(d, f"/dicom-web/instances?SOPInstanceUID={deleted.sop_instance_uid}")
        assert json.loads(qido or b"[]") == []
        assert sum(_studies(d).values()) == len(a.sent) - 1
        adoption = status_json(d, lambda s: (s.get("adoption") or {}).get("gone") == 1)["adoption"]
        assert adoption["missing"] == 1
        assert {"uuid": lost_file.name, "instance": None,
                "reason": "Orthanc's file is missing"} in adoption["unreadable"]
        status = _cli(d.config_path, "status")
        assert "1 forgotten (Orthanc deleted their files since)" in status.stdout, status.stdout
        assert "1 with Orthanc's file missing (kept, not served)" in status.stdout
    finally:
        assert d.stop() == 0
    aside.rename(lost_file)
    d = a.daemon("third", prefix=limited).start()
    try:
        log = wait_adopted(d)
        assert "adopted by reference have no file" not in log
        assert lost.sop_instance_uid in _rows(d)
    finally:
        assert d.stop() == 0
