"""Test support: run the real daemon as a subprocess, find its stored files.

Ports come from the OS (the config asks for port 0, the daemon reports the
ports it bound in its runtime file); readiness is polled, never slept for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid,
)
from pynetdicom import AE

from appliance.dicom.requestor import pause_reactor
from appliance.store.blobs import partial_files, resolve

REPO = Path(__file__).resolve().parent.parent
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def pydicom_file(name: str) -> Path:
    """A file bundled with pydicom (never the downloadable ones: no network here)."""
    path = PYDICOM_FILES / name
    assert path.exists(), path
    return path


def base_config(root: Path, **overrides) -> dict:
    """An Orthanc-format config with everything under ``root`` and OS-chosen ports."""
    cfg = {
        "Name": "test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "TemporaryDirectory": str(root / "tmp"),
        "DicomAet": "ORTHANC",
        "DicomPort": 0,
        "HttpPort": 0,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
    }
    cfg.update(overrides)
    return cfg


class Daemon:
    """One ``pacs-appliance serve`` subprocess."""

    def __init__(self, root: Path, config: dict, env: dict | None = None,
                 prefix: list[str] | None = None) -> None:
        self.root = root
        self.config = config
        self.prefix = prefix or []  # a command the daemon runs under (setpriv ...)
        self.config_path = root / "config.json"
        self.log_path = root / "daemon.log"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.dicom_port = 0
        self.http_port = 0

    @property
    def runtime_file(self) -> Path:
        return Path(self.config["IndexDirectory"]) / "pacs-appliance.runtime.json"

    @property
    def index_file(self) -> Path:
        return Path(self.config["IndexDirectory"]) / "pacs-appliance.sqlite"

    @property
    def storage(self) -> Path:
        return Path(self.config["StorageDirectory"])

    def start(self, timeout: float = 30.0) -> "Daemon":
        """Spawn the daemon and wait until it reports its ports."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "appliance", "serve", "--config",
             str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info = json.loads(self.runtime_file.read_text())
            except (OSError, ValueError):
                info = None
            if info and info.get("pid") == self.proc.pid:
                self.dicom_port, self.http_port = info["dicom_port"], info["http_port"]
                return self
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"daemon not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """Everything the daemon wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; return the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Query the daemon's real SQLite index (read-only)."""
        conn = apsw.Connection(str(self.index_file), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()

    def stored_path(self, sop_instance_uid: str) -> Path | None:
        """The stored file of an instance, from the index (a reference: Orthanc's file)."""
        rows = self.rows("SELECT file_path FROM instances WHERE sop_instance_uid = ?",
                         (sop_instance_uid,))
        return resolve(self.storage, rows[0][0]) if rows else None

    def incoming_files(self) -> list[Path]:
        """Files left in the incoming directory (but the empty spares the
        daemon makes ahead: appliance.store.blobs.partial_files)."""
        d = self.storage / ".incoming"
        if not d.exists():
            return []
        return partial_files(d)


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its File Meta Information."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", path
    # (0002,0000) UL, explicit VR LE: tag 4 + VR 2 + length 2 + value 4.
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]


def meta_file(path: Path, body: bytes, sop_class: str, sop_instance: str,
              ts: str = ExplicitVRLittleEndian) -> Path:
    """A Part-10 file with a correct file meta and ``body``, any bytes, as its
    data set (sent as they are by :func:`scu_store`)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + body)
    return path


def encode(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> bytes:
    """A data set's bytes alone (no file meta) in ``ts``, little endian."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, ts == ImplicitVRLittleEndian
    write_dataset(buf, ds)
    return buf.getvalue()


def run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run a client tool, capturing its output as text."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def new_dataset(sop_class: str, sop_uid: str | None = None,
                charset: str = "ISO_IR 192") -> Dataset:
    """An Explicit VR Little Endian dataset with its file meta and SOP UIDs set,
    for a test to add its attributes to."""
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    return ds


def scu_store(port: int, files, *, aet="PYSCU", aec="ORTHANC") -> list[int | None]:
    """Send files as they are with pynetdicom over one association (with
    STORE_SEND_CHUNKED_DATASET, byte for byte); return the status of each (None:
    no answer). Stops at the first file after which the association is gone
    (the daemon aborted it, e.g. out of space)."""
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = set()
    for f in files:
        meta = read_file_meta_info(f)  # the file meta only: the data set may be anything
        contexts.add((meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID))
    for sop_class, ts in sorted(contexts):
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    assert assoc.is_established
    statuses: list[int | None] = []
    try:
        for f in files:
            # pynetdicom's requestor can drop a response under load unless its reactor
            # is really parked (appliance.dicom.requestor): the test would wait 30 s.
            pause_reactor(assoc)
            rsp = assoc.send_c_store(f)
            statuses.append(rsp.Status if rsp is not None and "Status" in rsp else None)
            if not assoc.is_established:
                break
        return statuses
    finally:
        if assoc.is_established:
            assoc.release()


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll ``predicate`` every 50 ms until it returns something true; that value
    (AssertionError naming ``what`` after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_nginx(prefix: Path, server_block: str, port: int) -> subprocess.Popen:
    """nginx in the foreground with its files under ``prefix``, serving
    ``server_block`` (one ``server {...}`` listening on 127.0.0.1:``port``);
    returned once that port accepts. The caller terminates it."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {server_block}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.terminate()
    raise AssertionError(f"nginx not listening on {port}")


def site_config(https_port: int, daemon_port: int, cert: Path, key: Path) -> str:
    """The HTTPS server of the shipped etc/nginx/pacs-appliance.conf with this test's
    ports and certificate (for :func:`start_nginx`)."""
    text = (REPO / "etc" / "nginx" / "pacs-appliance.conf").read_text()
    https_server = text[:text.index("# Plain HTTP only redirects.")]
    https_server = https_server.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    https_server = re.sub(r"\n\s*listen \[::\]:443 ssl;", "", https_server)
    https_server = https_server.replace("/etc/pacs-appliance/tls/pacs-appliance.crt", str(cert))
    https_server = https_server.replace("/etc/pacs-appliance/tls/pacs-appliance.key", str(key))
    assert "http://127.0.0.1:8042" in https_server
    return https_server.replace("http://127.0.0.1:8042", f"http://127.0.0.1:{daemon_port}")
