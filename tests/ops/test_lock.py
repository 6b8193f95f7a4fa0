"""One daemon per data folder (appliance.ops.lock), end to end.

A second ``serve`` on the folders of a running daemon, and the offline commands
that need it stopped (``reindex``, ``backup restore``), refuse with one line
naming the running pid and exit code 2, having touched nothing: the first
daemon's spare incoming files, runtime file and status stay, and it goes on
storing. After a SIGKILL the kernel has dropped the lock: a new daemon starts,
and what was acknowledged is there. For the three ways folders are shared:
separate index and storage folders, one folder for both (Orthanc's standard
config), and only the storage folder shared by two configs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.ops.lock import LOCK_FILE, FolderLock
from tests.ops import cli, image, write_config
from tests.support import Daemon, base_config, scu_store

IN_USE = 2
NOT_RUNNING = 3
SPARES_MADE = 4  # appliance.store.blobs._Spares keeps this many ready


def _layouts(root: Path) -> dict[str, tuple[dict, dict]]:
    """(first daemon's config, second config) per way of sharing the folders."""
    shared = {"StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index")}
    one = {"StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db")}
    return {
        "separate": (base_config(root / "a", **shared), base_config(root / "b", **shared)),
        "same-folder": (base_config(root / "a", **one), base_config(root / "b", **one)),
        "storage-only": (
            base_config(root / "a", StorageDirectory=str(root / "storage"),
                        IndexDirectory=str(root / "a-index")),
            base_config(root / "b", StorageDirectory=str(root / "storage"),
                        IndexDirectory=str(root / "b-index"))),
    }


def _serve(config_path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "serve", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=timeout)


def _spares(daemon: Daemon) -> set[str]:
    return {p.name for p in (daemon.storage / ".incoming").glob("*.spare")}


def _wait_for(what, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (result := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


def _refused(out: subprocess.CompletedProcess, pid: int, folder: str) -> None:
    assert out.returncode == IN_USE, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"another pacs-appliance (pid {pid}) is using {folder}; stop it first" in lines[0]
    assert lines[0].startswith("pacs-appliance: ") and "Traceback" not in out.stderr


@pytest.mark.parametrize("layout", ["separate", "same-folder", "storage-only"])
def test_second_daemon_and_offline_commands_refuse_then_a_kill_frees_the_folders(tmp_path, layout):
    first_cfg, second_cfg = _layouts(tmp_path)[layout]
    first = Daemon(tmp_path / "a", first_cfg).start()
    second = Daemon(tmp_path / "b", second_cfg)
    try:
        pid = first.proc.pid
        _wait_for(lambda: len(_spares(first)) >= SPARES_MADE)
        one = image(tmp_path / "in", "P1")
        assert scu_store(first.dicom_port, [one]) == [0]
        before = _spares(first)  # the spare taken by that store is made again
        assert len(before) >= SPARES_MADE - 1
        if layout == "same-folder":
            assert sorted(p.name for p in Path(first_cfg["IndexDirectory"]).glob("*.lock")) \
                == [LOCK_FILE]
        # The folder a refusal names: the first one (index, then storage) found taken.
        named = first_cfg["StorageDirectory" if layout == "storage-only" else "IndexDirectory"]
        assert (Path(named) / LOCK_FILE).read_text().strip() == str(pid)

        # A second serve on the same folders (its own ports: 0) refuses at once.
        second.root.mkdir()
        write_config(second.config_path, second_cfg)
        t0 = time.monotonic()
        out = _serve(second.config_path)
        assert time.monotonic() - t0 < 30
        _refused(out, pid, named)
        # ... having touched nothing of the first one's.
        assert before <= _spares(first), "the first daemon's spare files were swept"
        assert first.runtime_file.exists() and first.proc.poll() is None
        two = image(tmp_path / "in", "P2")
        assert scu_store(first.dicom_port, [two]) == [0]
        status = _wait_for(lambda: (o := cli(first.config_path, "status")).returncode == 0 and o)
        assert f"running, pid {pid}" in status.stdout

        # The offline commands refuse too, for either config.
        assert cli(first.config_path, "backup", "now").returncode == 0
        (backup,) = (Path(first_cfg["IndexDirectory"]) / "backups").glob("backup-*")
        for config, folder in ((first.config_path, first_cfg["IndexDirectory"]),
                               (second.config_path, named)):
            _refused(cli(config, "reindex"), pid, folder)
            _refused(cli(config, "backup", "restore", str(backup)), pid, folder)
        assert first.runtime_file.exists()
        assert scu_store(first.dicom_port, [image(tmp_path / "in", "P3")]) == [0]

        # A crash: the lock goes with the process, its runtime file stays behind.
        first.kill()
        assert first.runtime_file.exists()
        out = cli(first.config_path, "status")
        assert out.returncode == NOT_RUNNING, out.stdout + out.stderr
        second.start()  # the stale lock does not block it
        if layout != "storage-only":
            assert len(second.rows("SELECT 1 FROM instances")) == 3
        assert second.stop() == 0
        first.start()
        uids = {r[0] for r in first.rows("SELECT sop_instance_uid FROM instances")}
        assert len(uids) == 3 and all(first.stored_path(u).exists() for u in uids)
        assert first.stop() == 0
        assert not first.runtime_file.exists()
        assert not (Path(named) / LOCK_FILE).read_text().strip()  # nobody holds it
    finally:
        for d in (second, first):
            d.kill()


def test_serve_refuses_while_an_offline_command_holds_the_folders(tmp_path):
    config = base_config(tmp_path)
    path = write_config(tmp_path / "config.json", config)
    with FolderLock([Path(config["IndexDirectory"]), Path(config["StorageDirectory"])]):
        out = _serve(path)
        _refused(out, os.getpid(), config["IndexDirectory"])
        # Nothing was made in the storage folder but its lock file.
        assert sorted(p.name for p in Path(config["StorageDirectory"]).iterdir()) == [LOCK_FILE]
        assert not (Path(config["IndexDirectory"]) / "pacs-appliance.runtime.json").exists()


def test_the_same_folder_by_two_names_is_locked_once(tmp_path):
    (tmp_path / "db").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "db")
    d = Daemon(tmp_path / "d", base_config(tmp_path / "d", StorageDirectory=str(tmp_path / "link"),
                                            IndexDirectory=str(tmp_path / "db"))).start()
    try:
        assert scu_store(d.dicom_port, [image(tmp_path / "in", "P1")]) == [0]
        assert d.stop() == 0
    finally:
        d.kill()
