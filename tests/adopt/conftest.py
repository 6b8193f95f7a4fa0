"""Orthanc archives made once per session by Orthanc itself (C-STORE of the
corpus), copied for each test that adopts one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from pynetdicom import _config

from tests.adopt.corpus import Sent, make_corpus
from tests.adopt.orthanc import Orthanc, free_port, orthanc_config
from tests.support import Daemon, scu_store

_ORTHANC_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f-]{36}\Z")


@dataclass(frozen=True)
class Archive:
    """An Orthanc archive on disk and the orthanc.json that names it."""

    root: Path
    config: dict
    sent: list[Sent]

    @property
    def storage(self) -> Path:
        return Path(self.config["StorageDirectory"])

    @property
    def index_dir(self) -> Path:
        return Path(self.config["IndexDirectory"])

    def orthanc_files(self) -> dict[str, str]:
        """Orthanc's own files (its index and its attachments) -> SHA-256."""
        found = {"index": _sha256(self.index_dir / "index")}
        for dirpath, _dirs, files in os.walk(self.storage):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), self.storage)
                if _ORTHANC_FILE.match(rel):
                    found[rel] = _sha256(Path(dirpath) / name)
        return found

    def attachment(self, rel_or_uuid: str) -> Path:
        u = rel_or_uuid.rsplit("/", 1)[-1]
        return self.storage / u[:2] / u[2:4] / u

    def orthanc(self) -> Orthanc:
        return Orthanc(self.root, self.config)

    def orthanc_count(self) -> int:
        """The instances Orthanc, started again on its folders, sees."""
        orthanc = self.orthanc().start()
        try:
            return orthanc.get("/statistics")["CountInstances"]
        finally:
            orthanc.stop()

    def daemon(self, name: str = "appliance", env: dict | None = None,
               prefix: list[str] | None = None) -> Daemon:
        """The appliance on the unchanged orthanc.json (its ports are free again)."""
        return Daemon(self.root / name, dict(self.config), env=env, prefix=prefix)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_archive(root: Path, *, shared: bool, compression: bool, sent: list[Sent],
                  crash: bool = False) -> Archive:
    """Orthanc stores ``sent`` by C-STORE into a new archive under ``root``,
    then stops (SIGTERM), or is SIGKILLed with ``crash``."""
    config = orthanc_config(root, shared=shared, compression=compression)
    orthanc = Orthanc(root, config).start()
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the files' bytes as they are
    try:
        statuses = scu_store(config["DicomPort"], [s.path for s in sent])
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if crash:
            orthanc.kill()
        else:
            orthanc.stop()
    assert statuses == [0] * len(sent), statuses
    return Archive(root, config, sent)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> list[Sent]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def templates(tmp_path_factory, corpus) -> dict[str, Archive]:
    """Two archives Orthanc stored: the guide's layout uncompressed, and
    separate folders with StorageCompression true."""
    return {
        "shared": build_archive(tmp_path_factory.mktemp("orthanc-shared"), shared=True,
                                compression=False, sent=corpus),
        "separate-compressed": build_archive(tmp_path_factory.mktemp("orthanc-separate"),
                                             shared=False, compression=True, sent=corpus),
    }


def copy_archive(template: Archive, root: Path) -> Archive:
    """A copy of a template archive under ``root`` (new paths, new free ports)."""
    shutil.copytree(template.root, root, symlinks=True)
    config = json.loads(json.dumps(template.config).replace(str(template.root), str(root)))
    config.update(DicomPort=free_port(), HttpPort=free_port())
    return replace(template, root=root, config=config)


@pytest.fixture
def shared_archive(templates, tmp_path) -> Archive:
    return copy_archive(templates["shared"], tmp_path / "clinic")


@pytest.fixture
def compressed_archive(templates, tmp_path) -> Archive:
    return copy_archive(templates["separate-compressed"], tmp_path / "clinic")


def wait_adopted(daemon: Daemon, passes: int = 1, timeout: float = 60.0) -> str:
    """Wait until the daemon's log shows ``passes`` finished adoption passes."""
    done = re.compile(r"adopted Orthanc's archive in|everything adopted already")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = daemon.log()
        if len(done.findall(log)) >= passes:
            return log
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon exited:\n{log}")
        time.sleep(0.05)
    raise TimeoutError(f"adoption not finished:\n{daemon.log()}")


def status_json(daemon: Daemon, want, timeout: float = 15.0) -> dict:
    """The status file's snapshot once ``want(snapshot)`` holds (written every 5 s)."""
    path = Path(daemon.config["IndexDirectory"]) / "pacs-appliance.status.json"
    deadline = time.monotonic() + timeout
    snap = {}
    while time.monotonic() < deadline:
        try:
            snap = json.loads(path.read_text())
        except (OSError, ValueError):
            snap = {}
        if snap and want(snap):
            return snap
        time.sleep(0.1)
    raise TimeoutError(f"status never matched: {snap.get('adoption')}")
