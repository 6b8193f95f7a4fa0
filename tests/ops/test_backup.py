"""Backups end to end: ``backup now`` during a storescu of 200 images, verify,
rotation, the storage mirror, bad backup directories, corrupt backups, a second
backup while one runs, and restore (refused while the daemon runs)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest

from tests.synthetic import generate_singles
from tests.ops import cli, tmpfs, write_config
from tests.support import Daemon, base_config, run

BUSY, DAMAGED = 75, 4


@dataclass
class Site:
    root: Path
    daemon: Daemon
    mirror: Path

    @property
    def backups(self) -> Path:
        return Path(self.daemon.config["IndexDirectory"]) / "backups"

    def backup_names(self) -> list[str]:
        return sorted(p.name for p in self.backups.glob("backup-*"))

    def variant(self, name: str, **backups) -> Path:
        """The daemon's config with other Backups settings, for the CLI."""
        config = dict(self.daemon.config, Backups=dict(self.daemon.config["Backups"], **backups))
        return write_config(self.root / f"{name}.json", config)


@pytest.fixture(scope="module")
def singles(tmp_path_factory) -> list[Path]:
    return generate_singles(tmp_path_factory.mktemp("singles"), 200)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("backup")
    mirror = root / "mirror"
    mirror.mkdir()
    daemon = Daemon(root / "d", base_config(root / "d", Backups={
        "IntervalHours": 0, "Keep": 3, "StorageMirror": str(mirror)})).start()
    yield Site(root, daemon, mirror)
    daemon.stop()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(out: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], out.stderr
    assert lines[0].startswith("pacs-appliance: ")


def test_backup_during_storescu_then_verify(site, singles):
    d = site.daemon
    storescu = subprocess.Popen(
        ["storescu", "-aec", "ORTHANC", "127.0.0.1", str(d.dicom_port), *map(str, singles)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while d.rows("SELECT count(*) FROM instances")[0][0] < 20:
            assert storescu.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        out = cli(d.config_path, "backup", "now")
        assert storescu.poll() is None, "storescu finished before the backup: no overlap"
    finally:
        output, _ = storescu.communicate(timeout=120)
    assert storescu.returncode == 0, output
    assert d.rows("SELECT count(*) FROM instances") == [(200,)]  # ingest unharmed
    assert out.returncode == 0, out.stderr
    (name,) = site.backup_names()
    folder = site.backups / name
    assert out.stdout.startswith(f"backup {folder}: ")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "index.sqlite", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert json.loads((folder / "config.json").read_text()) == d.config
    assert manifest["sha256"] == _sha(folder / "index.sqlite")
    assert manifest["size"] == (folder / "index.sqlite").stat().st_size
    conn = apsw.Connection(str(folder / "index.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        n = conn.execute("SELECT count(*) FROM instances").fetchone()[0]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        listed = [r[0] for r in conn.execute("SELECT file_path FROM instances")]
    finally:
        conn.close()
    # A consistent snapshot taken mid-ingest.
    assert 20 <= manifest["counts"]["instances"] == n < 200
    assert manifest["counts"]["patients"] == 1 and manifest["trigger"] == "manual"
    # The mirror got every file the backup lists, byte for byte.
    assert all((site.mirror / rel).read_bytes() == (d.storage / rel).read_bytes() for rel in listed)

    out = cli(d.config_path, "backup", "verify")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{n} OK ({n} in the storage, 0 only in the mirror), 0 missing, 0 damaged" in out.stdout
    assert out.stdout.strip().endswith(f"verify: backup {name} is good")

    out = cli(d.config_path, "backup", "list")
    assert out.returncode == 0 and name in out.stdout and f" {n} " in out.stdout


def test_second_backup_while_one_runs_and_rotation(site):
    d = site.daemon
    # A running backup holds the lock of the backup directory: so does this test.
    with open(site.backups / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 4242, since 2024-03-15 02:00:00")
        lock.flush()
        out = cli(d.config_path, "backup", "now")
    _one_line_error(out, BUSY, "another backup is running (pid 4242, since 2024-03-15 02:00:00)")
    assert len(site.backup_names()) == 1
    first = site.backup_names()[0]
    for _ in range(3):
        assert cli(d.config_path, "backup", "now").returncode == 0
    names = site.backup_names()
    assert len(names) == 3 and first not in names  # Keep 3: the oldest went
    out = cli(d.config_path, "backup", "now")
    assert "1 old backup(s) removed" in out.stdout and "mirror: 0 files copied" in out.stdout


def test_bad_backup_directories(site):
    d = site.daemon
    out = cli(site.variant("missing", Directory=str(site.root / "usb-disk")), "backup", "now")
    _one_line_error(out, 1, f"backup directory {site.root / 'usb-disk'} does not exist "
                            "(is the backup disk mounted?)")
    state = json.loads((Path(d.config["IndexDirectory"]) / "pacs-appliance.backup.json").read_text())
    assert state["last_attempt"]["ok"] is False and "does not exist" in state["last_attempt"]["message"]
    assert state["last_success"]["ok"] is True

    with tmpfs(site.root / "readonly", "1m", read_only=True) as ro:
        out = cli(site.variant("ro", Directory=str(ro)), "backup", "now")
    _one_line_error(out, 1, f"backup directory {ro} is not writable")

    with tmpfs(site.root / "small", "64k") as small:
        out = cli(site.variant("full", Directory=str(small)), "backup", "now")
        _one_line_error(out, 1, f"not enough space for the backup in {small}")
        assert [p.name for p in small.iterdir()] == [".lock"]  # nothing half-written

    missing_mirror = site.root / "unplugged"
    out = cli(site.variant("nomirror", StorageMirror=str(missing_mirror)), "backup", "now")
    _one_line_error(out, 1, f"but the storage mirror failed: storage mirror {missing_mirror} "
                            "does not exist (is the disk mounted?)")


def test_verify_finds_corrupt_backups_and_missing_files(site):
    d = site.daemon
    newest = site.backups / site.backup_names()[-1]

    broken = site.root / "broken"
    shutil.copytree(newest, broken)
    data = bytearray((broken / "index.sqlite").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    (broken / "index.sqlite").write_bytes(bytes(data))
    out = cli(d.config_path, "backup", "verify", str(broken))
    _one_line_error(out, DAMAGED, "index.sqlite differs from its manifest (SHA-256 or size): damaged")

    (broken / "index.sqlite").write_bytes(b"not a database" * 100)
    (broken / "manifest.json").write_text("{}")
    out = cli(d.config_path, "backup", "verify", str(broken))
    assert out.returncode == DAMAGED and "is damaged" in out.stderr

    out = cli(d.config_path, "backup", "verify", str(site.root))
    _one_line_error(out, DAMAGED, "is not a backup")
    out = cli(d.config_path, "backup", "verify", "backup-19990101T000000Z")
    _one_line_error(out, 1, "no backup 'backup-19990101T000000Z'")

    # A stored file lost from the storage: still restorable from the mirror...
    rel = d.rows("SELECT file_path FROM instances ORDER BY id LIMIT 1")[0][0]
    moved = site.root / "moved.dcm"
    shutil.move(d.storage / rel, moved)
    out = cli(d.config_path, "backup", "verify")
    assert out.returncode == 0 and "1 only in the mirror" in out.stdout
    # ... but not once the mirror lost it too; a damaged mirror copy counts as damaged.
    shutil.move(site.mirror / rel, site.root / "mirror-copy.dcm")
    out = cli(d.config_path, "backup", "verify")
    _one_line_error(out, DAMAGED, "cannot restore 1 missing and 0 damaged file(s)")
    assert f"missing: {rel}" in out.stdout
    (site.mirror / rel).write_bytes(b"damaged")
    out = cli(d.config_path, "backup", "verify")
    _one_line_error(out, DAMAGED, "cannot restore 0 missing and 1 damaged file(s)")
    shutil.move(site.root / "mirror-copy.dcm", site.mirror / rel)
    # Left missing from the storage: the restore brings it back from the mirror.
    assert not (d.storage / rel).exists()


def test_restore(site):
    d = site.daemon
    out = cli(d.config_path, "backup", "restore", site.backup_names()[0])
    _one_line_error(out, 2, f"another pacs-appliance (pid {d.proc.pid}) is using "
                            f"{d.config['IndexDirectory']}; stop it first")

    before = {r[0]: r[1:] for r in d.rows(
        "SELECT sop_instance_uid, file_path, file_size, sha256 FROM instances")}
    assert d.stop() == 0
    index = d.index_file
    untouched = _sha(index)
    out = cli(d.config_path, "backup", "restore", str(site.root / "broken"))
    _one_line_error(out, DAMAGED, "is damaged")
    assert "nothing was changed" in out.stderr and _sha(index) == untouched

    # The oldest backup kept: it lists fewer than the 200 instances, the rest are
    # stored since, and one listed file is only in the mirror.
    name = site.backup_names()[0]
    listed = json.loads((site.backups / name / "manifest.json").read_text())["counts"]["instances"]
    out = cli(d.config_path, "backup", "restore", name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"restored backup {name}: 1 patients, 1 studies, 200 instances" in out.stdout
    assert "1 file(s) copied back from the mirror, 0 row(s) dropped" in out.stdout
    assert f"{200 - listed} file(s) stored since the backup indexed again" in out.stdout
    kept = [p for p in (Path(d.config["IndexDirectory"]) / "replaced").iterdir()]
    assert len(kept) == 1 and (kept[0] / "pacs-appliance.sqlite").exists()
    assert f"the previous index is kept in {kept[0]}" in out.stdout

    after = {r[0]: r[1:] for r in d.rows(
        "SELECT sop_instance_uid, file_path, file_size, sha256 FROM instances")}
    assert after == before  # the same instances, files and hashes
    assert all(_sha(d.storage / path) == sha for path, _size, sha in after.values())

    d.start()  # the restored store serves again
    assert run(["echoscu", "-aec", "ORTHANC", "127.0.0.1", str(d.dicom_port)]).returncode == 0


def test_a_backup_due_after_a_restart_runs_when_due():
    """The schedule alone (a pure function): a restart shortly before a backup
    is due must not push it to the restart's catch-up time (found by the soak)."""
    from appliance.ops.backup import CATCH_UP_DELAY, next_backup_time

    last, interval = 1_000_000.0, 2 / 60  # a backup at `last`, one every 2 minutes
    started = last + 114                  # restarted 6 s before the next one is due
    plan = dict(last=last, started=started, interval_hours=interval, at=None)
    assert next_backup_time(now=started, **plan) == last + 120
    assert next_backup_time(now=last + 120.5, **plan) == last + 120.5  # due: now
    # Overdue since before the start (the machine was off): after the catch-up delay.
    off = dict(last=last, started=last + 600, interval_hours=interval, at=None)
    assert next_backup_time(now=last + 600, **off) == last + 600 + min(CATCH_UP_DELAY, 120)
    assert next_backup_time(now=last, last=None, started=last, interval_hours=24, at=None) == \
        last + CATCH_UP_DELAY
