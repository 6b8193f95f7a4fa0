"""Debian's Orthanc 1.10.1, run by the tests themselves: a generated
orthanc.json in a temporary folder, free loopback ports, started and stopped
(SIGTERM) around what a test needs it for."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ORTHANC = Path("/usr/sbin/Orthanc")


def free_port() -> int:
    """A free loopback port (Orthanc can only be given a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_config(root: Path, *, shared: bool, compression: bool) -> dict:
    """The clinic's orthanc.json: the guide's layout (one folder for both keys)
    or separate folders, StorageCompression as given."""
    storage = root / "db" if shared else root / "storage"
    index = root / "db" if shared else root / "index"
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        "Name": "clinic", "StorageDirectory": str(storage), "IndexDirectory": str(index),
        "TemporaryDirectory": str(root / "tmp"), "DicomAet": "ORTHANC",
        "DicomPort": free_port(), "HttpPort": free_port(), "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
        "StorageCompression": compression,
    }


class Orthanc:
    """One Orthanc process on ``config`` (written to ``root/orthanc.json``)."""

    def __init__(self, root: Path, config: dict) -> None:
        if not ORTHANC.exists():
            pytest.fail(f"{ORTHANC} is missing: tests/run.sh installs Debian's orthanc")
        self.root, self.config = root, config
        self.path = root / "orthanc.json"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Orthanc":
        """Start it and wait until its REST API answers."""
        self.path.write_text(json.dumps(self.config, indent=2))
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen([str(ORTHANC), str(self.path)], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.root)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("Orthanc did not start")

    def get(self, path: str):
        """GET a path of Orthanc's REST API, as JSON."""
        url = f"http://127.0.0.1:{self.config['HttpPort']}{path}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def delete(self, path: str) -> None:
        """DELETE a resource through Orthanc's REST API (its files go with it)."""
        url = f"http://127.0.0.1:{self.config['HttpPort']}{path}"
        request = urllib.request.Request(url, method="DELETE")
        with urllib.request.urlopen(request, timeout=30) as r:
            r.read()

    def kill(self) -> None:
        """SIGKILL (a crash or a power cut): Orthanc's index keeps its
        write-ahead log (``index-wal``), with rows not checkpointed yet."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait: Orthanc checkpoints its index and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
