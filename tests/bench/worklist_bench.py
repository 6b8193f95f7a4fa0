"""Modality Worklist benchmark: pacs-appliance vs Orthanc's ModalityWorklists plugin.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.worklist_bench [--files 1000,10000] [--repeat N]
                                                   [--only orthanc,appliance,ceiling] [--keep]

For each folder size, a folder of that many .wl files is generated (deterministic; see
``generate``) and served by BOTH servers, one at a time, with the same Orthanc-format config
(``Plugins`` [libModalityWorklists.so], ``Worklists`` {Enable, Database},
``DicomAlwaysAllowFindWorklist`` true). The servers alternate (order reversed on every other
repetition). Per trial, on a fresh server process:

- start-up, twice: first on a data folder the server has never seen (cold: the appliance has
  no parse cache yet), then stopped and restarted on the same data folder (warm, the usual
  restart): spawn to the first C-ECHO, and spawn to the first complete answer of the query
  (polled back to back; the longest single C-FIND meanwhile is recorded too);
- RSS after start-up and at the end of the trial, and once per server with an empty folder
  (so that "RSS above the empty server" is what the items cost);
- a raw SCU (``RawScu``: a socket, hand-made PDUs, identifiers not decoded, so the figure is
  the server's) over one held association: latency per C-FIND, p50/p95; then the whole
  folder answered (a query without matching keys: every item, same return keys), median
  of ``--full-runs``;
- ``findscu -W`` with the query file, minus ``echoscu`` (client start-up + association),
  interleaved, median of ``--cli-runs`` each;
- in-process pynetdicom SCU over one held association: latency per C-FIND, p50/p95;
- a changed .wl file: one answered item's PatientName rewritten (temp file + rename, as a
  clinic tool does), the query repeated (raw SCU) until the new name appears: seconds;
- a new .wl file (temp file + rename), the query repeated until it is answered; then the
  file deleted and the query repeated until it is gone: seconds;
- what one changed file costs the server: its CPU time (user + system) over a quiet window
  of ``--cpu-window`` seconds after one item is rewritten, minus the same window with no
  change (no queries in either: Orthanc reads the folder per query, so it pays nothing here
  and its price is in the query figures).

The query is "one day's US procedures": ScheduledProcedureStepSequence with Modality US and
one ScheduledProcedureStepStartDate, plus the usual return keys. The folder spans
``files / 100`` days with 100 items a day, half of them US, so the query returns 50 answers at
every folder size (the folder grows with days kept, not with the day's load).

The *ceiling* is a bare pynetdicom SCP that has the answers encoded before the first
query and writes them all with one socket send per C-FIND: what the clients themselves cost
(findscu printing 50 answers, pynetdicom's SCU decoding them), so the lowest latency any
server could show here. It has no folder to watch: no change figures.

DCMTK clients and Orthanc run with TCP_NODELAY=1 (Orthanc's best case; the appliance disables
Nagle itself), and the in-process SCU sets TCP_NODELAY on its socket.

A benchmark, not a test: exit 0 when it ran, 1 when nothing was measured, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from appliance.dicom.requestor import pause_reactor  # noqa: E402
from tests.bench.servers import (  # noqa: E402
    finish,
    CALLED_AET, CALLING_AET, LOOPBACK, ApplianceServer, OrthancServer, Server, ServerError,
    base_env, kill_all, orthanc_style_config, tail,
)
from tests.bench.orthanc_install import InstallError, ensure_orthanc  # noqa: E402
from tests.synthetic import MODALITIES, PER_DAY, UID_ROOT, item, query_date  # noqa: E402

log = logging.getLogger("wlbench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLIST_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
MWL_FIND = "1.2.840.10008.5.1.4.31"
SERVER_ORDER = ("orthanc", "before", "appliance", "ceiling")


# --------------------------------------------------------------------------- data




def part10(ds: Dataset, sop_class: str = "1.2.276.0.7230010.3.1.0.1",
           instance: str = "1.2.3") -> bytes:
    """``ds`` as a Part-10 file, Explicit VR Little Endian (as dump2dcm writes a .wl)."""
    ds = Dataset(ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def wl_name(i: int) -> str:
    return f"bench-{i:05d}.wl"


def generate(folder: Path, files: int) -> list[int]:
    """Write ``files`` items into ``folder``; return the indexes the query should answer."""
    folder.mkdir(parents=True, exist_ok=True)
    qdate = query_date(files)
    expected = []
    for i in range(files):
        ds = item(i, files)
        (folder / wl_name(i)).write_bytes(part10(ds, instance=f"{UID_ROOT}.9.{files}.{i}"))
        sps = ds.ScheduledProcedureStepSequence[0]
        if sps.Modality == "US" and sps.ScheduledProcedureStepStartDate == qdate:
            expected.append(i)
    return expected


def rewrite(folder: Path, i: int, files: int, name: str) -> None:
    """Replace item ``i`` with a new PatientName: hidden temp file, then rename."""
    target = folder / wl_name(i)
    temp = folder / f".{target.name}.tmp"
    temp.write_bytes(part10(item(i, files, patient_name=name),
                            instance=f"{UID_ROOT}.9.{files}.{i}"))
    os.replace(temp, target)


def write_new(folder: Path, template: int, files: int, k: int) -> str:
    """A new item answered by the query (a copy of item ``template`` under new IDs), written
    as a clinic tool does (hidden temp file, then rename); returns its PatientID."""
    ds = item(template, files)
    pid = f"NEW{k:05d}"
    ds.PatientID = pid
    ds.AccessionNumber = f"NEWACC{k:05d}"
    ds.StudyInstanceUID = f"{UID_ROOT}.{files}.{files + k}"
    target = folder / f"bench-new-{k:05d}.wl"
    temp = folder / f".{target.name}.tmp"
    temp.write_bytes(part10(ds, instance=f"{UID_ROOT}.9.{files}.{files + k}"))
    os.replace(temp, target)
    return pid


def query(files: int, *, whole: bool = False) -> Dataset:
    """One day's US procedures, with the return keys a scanner typically asks for; with
    ``whole``, the same return keys without any matching key (every item answers)."""
    ds = Dataset()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
               "ReferringPhysicianName", "StudyInstanceUID", "RequestedProcedureID",
               "RequestedProcedureDescription"):
        setattr(ds, kw, "")
    sps = Dataset()
    sps.Modality = "" if whole else "US"
    sps.ScheduledProcedureStepStartDate = "" if whole else query_date(files)
    for kw in ("ScheduledStationAETitle", "ScheduledProcedureStepStartTime",
               "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
               "ScheduledProcedureStepID"):
        setattr(sps, kw, "")
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


# --------------------------------------------------------------------------- servers


def worklist_config(server: Server, folder: Path) -> Path:
    """The shared Orthanc-format config with the worklist keys, written into workdir."""
    from tests.bench.servers import free_port
    config = orthanc_style_config(server.workdir, server.port, free_port())
    config["Plugins"] = [str(WORKLIST_PLUGIN)]
    config["Worklists"] = {"Enable": True, "Database": str(folder)}
    config["DicomAlwaysAllowFindWorklist"] = True
    path = server.workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


class WlOrthanc(OrthancServer):
    folder: Path

    def command(self) -> tuple[list[str], Path | None]:
        return [str(self.binary), str(worklist_config(self, self.folder))], self.workdir


class WlAppliance(ApplianceServer):
    folder: Path

    def command(self) -> tuple[list[str], Path | None]:
        from tests.bench.servers import REPO_ROOT
        return [self.python, "-m", "appliance", "serve", "--config",
                str(worklist_config(self, self.folder))], REPO_ROOT


class WlCeiling(ApplianceServer):
    files: int

    def command(self) -> tuple[list[str], Path | None]:
        from tests.bench.servers import REPO_ROOT
        return [self.python, "-m", "tests.bench.worklist_bench", "--serve-ceiling",
                str(self.port), "--files", str(self.files)], REPO_ROOT


class WlBefore(WlAppliance):
    """The appliance from another checkout (``--baseline DIR``: an earlier version, to show
    before and after in the same run), with the same config."""

    source: Path

    def command(self) -> tuple[list[str], Path | None]:
        return [self.python, "-m", "appliance", "serve", "--config",
                str(worklist_config(self, self.folder))], self.source

    def start(self, env: dict[str, str]) -> None:
        super().start({**env, "PYTHONPATH": str(self.source)})


CLASSES = {"orthanc": WlOrthanc, "before": WlBefore, "appliance": WlAppliance,
           "ceiling": WlCeiling}


def make_server(name: str, root: Path, args: argparse.Namespace) -> Server:
    server = CLASSES[name](name=name, root=root, keep=args.keep)
    if isinstance(server, WlBefore):
        server.source = args.baseline
    return server


def serve_ceiling(port: int, files: int) -> int:
    """Run the ceiling SCP (see the module docstring) on ``port`` until killed."""
    import struct

    from pynetdicom import AE, evt
    from pynetdicom import _config as pynetdicom_config

    from appliance.dicom.find_answers import pending_command
    from appliance.worklist.encoded import answer_bytes, encode_values
    from appliance.worklist.matching import answer_charset, attrs_from_dataset, compile_query

    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    everything = [attrs_from_dataset(item(i, files)) for i in range(files)]
    answers = {}
    for whole in (False, True):
        compiled = compile_query(attrs_from_dataset(query(files, whole=whole)))
        matching = [attrs for attrs in everything if compiled.matches(attrs)]
        answers[whole] = {implicit: [answer_bytes(
            compiled, attrs, encode_values(attrs, answer_charset(attrs)), answer_charset(attrs),
            implicit) for attrs in matching] for implicit in (False, True)}

    def pdu(context_id: int, command: bytes, identifier: bytes) -> bytes:
        # PS3.8 9.3.5: a P-DATA-TF PDU with the command PDV and the data PDV.
        body = b"".join(struct.pack(">IB", len(data) + 1, context_id) + data
                        for data in (b"\x03" + command, b"\x02" + identifier))
        return struct.pack(">BBI", 0x04, 0, len(body)) + body

    def on_find(event):
        command = pending_command(event.request.MessageID, MWL_FIND)
        implicit = event.context.transfer_syntax == "1.2.840.10008.1.2"
        step = event.identifier.ScheduledProcedureStepSequence[0]
        whole = not step.get("Modality")
        pdus = [pdu(event.context.context_id, command, data) for data in answers[whole][implicit]]
        for start in range(0, len(pdus), 256):
            event.assoc.dul.socket.send(b"".join(pdus[start:start + 256]))
        return iter(())  # then pynetdicom sends the final Success

    def on_open(event):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title=CALLED_AET)
    ae.add_supported_context(MWL_FIND, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.add_supported_context("1.2.840.10008.1.1", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.start_server((LOOPBACK, port), block=True,
                    evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_CONN_OPEN, on_open)])
    return 0


# --------------------------------------------------------------------------- clients


class Scu:
    """An in-process pynetdicom MWL SCU over one held association (TCP_NODELAY on)."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        from pynetdicom import AE
        ae = AE(ae_title=CALLING_AET)
        ae.add_requested_context(MWL_FIND)
        ae.dimse_timeout = ae.network_timeout = timeout
        ae.acse_timeout = ae.connection_timeout = 5
        self.assoc = ae.associate(LOOPBACK, port, ae_title=CALLED_AET)
        if not self.assoc.is_established:
            raise ServerError("MWL association refused")
        sock = self.assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.msg_id = 0

    def pause_reactor(self) -> None:
        """Make sure pynetdicom's requestor reactor thread is parked (call before timing):
        otherwise it can take the first C-FIND-RSP off the queue ("Received unexpected
        C-FIND service message") and the SCU sees one answer fewer
        (appliance.dicom.requestor explains the race)."""
        pause_reactor(self.assoc)

    def find(self, identifier: Dataset) -> tuple[int, list[Dataset]]:
        """(final status, pending identifiers)."""
        self.pause_reactor()
        self.msg_id = self.msg_id % 65535 + 1
        answers, final = [], -1
        for status, ident in self.assoc.send_c_find(identifier, MWL_FIND, msg_id=self.msg_id):
            if "Status" not in status:
                raise ServerError("no C-FIND response (association aborted?)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                answers.append(ident)
            else:
                final = code
        return final, answers

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


class RawScu:
    """A minimal MWL C-FIND SCU on a raw socket (PS3.8 9.3, PS3.7 9.3.2): it associates,
    sends C-FIND requests and reads the responses without decoding the identifiers, so
    what it measures is the server (about 5 us per answer here, against ~0.7 ms for
    pynetdicom's SCU and ~0.2 ms for findscu)."""

    _HEADER = struct.Struct(">BBI")

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.msg_id = 0

        def item(kind: int, body: bytes) -> bytes:
            return struct.pack(">BBH", kind, 0, len(body)) + body

        context = item(0x20, bytes((1, 0, 0, 0)) + item(0x30, MWL_FIND.encode())
                       + item(0x40, b"1.2.840.10008.1.2.1"))
        user = item(0x50, item(0x51, struct.pack(">I", 0)) + item(0x52, b"1.2.826.0.1.3680043.9.1"))
        body = (struct.pack(">HH", 1, 0) + CALLED_AET.ljust(16).encode()
                + CALLING_AET.ljust(16).encode() + bytes(32)
                + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
        self.sock.sendall(self._HEADER.pack(0x01, 0, len(body)) + body)
        kind, pdu = self._read_pdu()
        if kind != 0x02:
            raise ServerError(f"MWL association refused (PDU type {kind:#04x})")
        pos = 68  # after the fixed fields of an A-ASSOCIATE-AC (PS3.8 9.3.3)
        accepted = False
        while pos + 4 <= len(pdu):
            sub, length = pdu[pos], struct.unpack_from(">H", pdu, pos + 2)[0]
            if sub == 0x21 and pdu[pos + 4] == 1 and pdu[pos + 6] == 0:
                accepted = True
            pos += 4 + length
        if not accepted:
            raise ServerError("MWL presentation context refused")

    def _read_pdu(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 6:
                kind, _, length = self._HEADER.unpack_from(self.buf)
                if len(self.buf) >= 6 + length:
                    pdu = bytes(self.buf[6:6 + length])
                    del self.buf[:6 + length]
                    return kind, pdu
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ServerError("connection closed")
            self.buf += chunk

    def find(self, identifier: bytes) -> tuple[int, list[bytes]]:
        """(final status, the Pending identifiers as received) of one C-FIND."""
        self.msg_id = self.msg_id % 65535 + 1
        elements = b"".join(struct.pack("<HHI", 0, element, len(value)) + value for element, value in (
            (0x0002, _even(MWL_FIND.encode())), (0x0100, struct.pack("<H", 0x0020)),
            (0x0110, struct.pack("<H", self.msg_id)), (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000))))
        command = struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(elements)) + elements
        pdvs = (struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
                + struct.pack(">IBB", len(identifier) + 2, 1, 0x02) + identifier)
        self.sock.sendall(self._HEADER.pack(0x04, 0, len(pdvs)) + pdvs)
        answers: list[bytes] = []
        command, data = bytearray(), bytearray()
        status = None
        while True:
            kind, pdu = self._read_pdu()
            if kind != 0x04:
                raise ServerError(f"unexpected PDU type {kind:#04x}")
            pos = 0
            while pos < len(pdu):
                length = struct.unpack_from(">I", pdu, pos)[0]
                control = pdu[pos + 5]
                fragment = pdu[pos + 6:pos + 4 + length]
                pos += 4 + length
                if control & 1:
                    command += fragment
                    if control & 2:
                        status = self._status(command)
                        command.clear()
                        if status not in (0xFF00, 0xFF01):
                            return status, answers
                else:
                    data += fragment
                    if control & 2:
                        answers.append(bytes(data))
                        data.clear()

    @staticmethod
    def _status(command: bytes) -> int:
        pos = 0
        while pos + 8 <= len(command):
            group, element, length = struct.unpack_from("<HHI", command, pos)
            if (group, element) == (0, 0x0900):
                return struct.unpack_from("<H", command, pos + 8)[0]
            pos += 8 + length
        raise ServerError("C-FIND response without a status")

    def close(self) -> None:
        try:
            self.sock.sendall(self._HEADER.pack(0x05, 0, 4) + bytes(4))  # A-RELEASE-RQ
            self._read_pdu()
        except (OSError, ServerError):
            pass
        finally:
            self.sock.close()


def _even(uid: bytes) -> bytes:
    return uid + b"\0" if len(uid) % 2 else uid


def encoded(identifier: Dataset) -> bytes:
    """A C-FIND identifier as the raw SCU sends it (Explicit VR Little Endian)."""
    from pynetdicom.dsutils import encode
    return encode(identifier, False, True)


def run_cli(cmd: list[str], env: dict[str, str], timeout: float = 60.0) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ServerError(f"{cmd[0]} exit {proc.returncode}: {proc.stderr[-500:]}")
    return seconds, proc.stdout + proc.stderr


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# --------------------------------------------------------------------------- one trial


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def rss_mb(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 1e6
    except psutil.Error:
        return None


def raw_find(port: int, identifier: bytes, timeout: float = 60.0) -> tuple[int, list[bytes]]:
    """One C-FIND on a new association (as a scanner asks), by the raw SCU."""
    scu = RawScu(port, timeout)
    try:
        return scu.find(identifier)
    finally:
        scu.close()


def start_and_answer(server: Server, env: dict[str, str], ident: bytes, n_expected: int,
                     m: dict[str, float], prefix: str) -> None:
    """Spawn ``server``; record spawn to C-ECHO, spawn to the first complete answer of
    ``ident`` (polled back to back) and the longest single C-FIND meanwhile."""
    server.start(env)
    m[f"{prefix}echo_s"] = server.wait_ready(timeout=120.0)
    deadline = server.spawned_at + 180.0
    longest = 0.0
    while True:
        t0 = time.perf_counter()
        try:
            status, answers = raw_find(server.port, ident)
        except (OSError, ServerError):
            status, answers = -1, []
        longest = max(longest, time.perf_counter() - t0)
        if status == 0 and len(answers) == n_expected:
            break
        if time.perf_counter() > deadline:
            raise ServerError(f"no complete answer ({n_expected}) within 180 s")
        time.sleep(0.005)
    m[f"{prefix}answer_s"] = time.perf_counter() - server.spawned_at
    m[f"{prefix}longest_find_s"] = longest


def poll_answer(scu: RawScu, ident: bytes, test, timeout: float) -> float | None:
    """Query back to back until ``test(answers)``; seconds, or None after ``timeout``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        _status, answers = scu.find(ident)
        if test(answers):
            return time.perf_counter() - t0
        time.sleep(0.001)
    return None


def empty_trial(name: str, root: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """A server on an empty worklist folder: its RSS once it has answered a query."""
    server = make_server(name, root, args)
    server.folder = root / f"worklists-empty-{name}"
    server.folder.mkdir(exist_ok=True)
    server.files = 0
    m: dict[str, float] = {}
    sample: dict = {"server": name, "files": 0, "metrics": m}
    try:
        start_and_answer(server, env, encoded(query(PER_DAY)), 0, m, "startup_")
        assert server.proc is not None
        rss = rss_mb(server.proc.pid)
        if rss is not None:
            m["idle_rss_mb"] = rss
    except ServerError as exc:
        sample["error"] = f"{exc}\n{tail(server.log_path, 5)}"
    finally:
        sample["shutdown_s"] = server.stop()
        server.cleanup()
    return sample


def trial(name: str, files: int, folder: Path, expected: list[int], qfile: Path,
          root: Path, args: argparse.Namespace, env: dict[str, str],
          change_seq: list[int]) -> dict:
    server = make_server(name, root, args)
    server.folder = folder
    server.files = files
    ident = query(files)
    raw_ident = encoded(ident)
    n_expected = len(expected)
    m: dict[str, float] = {}
    sample: dict = {"server": name, "files": files, "metrics": m}
    try:
        # First start on a data folder never seen (no parse cache), then a restart on it.
        start_and_answer(server, env, raw_ident, n_expected, m, "cold_startup_")
        assert server.proc is not None
        cold_rss = rss_mb(server.proc.pid)
        if cold_rss is not None:
            m["cold_rss_mb"] = cold_rss
        server.stop()
        start_and_answer(server, env, raw_ident, n_expected, m, "startup_")
        assert server.proc is not None
        pid = server.proc.pid
        rss = rss_mb(pid)
        if rss is not None:
            m["idle_rss_mb"] = rss

        # The raw SCU on one held association: the day's query, then the whole folder.
        scu = RawScu(server.port)
        try:
            for _ in range(3):
                scu.find(raw_ident)
            lat = []
            t_end = time.perf_counter() + args.scu_seconds
            while len(lat) < args.scu_queries and time.perf_counter() < t_end:
                t0 = time.perf_counter()
                status, answers = scu.find(raw_ident)
                lat.append(time.perf_counter() - t0)
                if status != 0 or len(answers) != n_expected:
                    raise ServerError(f"C-FIND status {status:#06x}, {len(answers)} answers, "
                                      f"expected {n_expected}")
            m["raw_p50_ms"] = pct(lat, 50) * 1e3
            m["raw_p95_ms"] = pct(lat, 95) * 1e3
            sample["raw_s"] = lat
            whole = encoded(query(files, whole=True))
            full = []
            for k in range(args.full_runs + 1):
                t0 = time.perf_counter()
                status, answers = scu.find(whole)
                if k:
                    full.append(time.perf_counter() - t0)
                if status != 0 or len(answers) != files:
                    raise ServerError(f"whole folder: status {status:#06x}, {len(answers)} "
                                      f"answers, expected {files}")
            m["full_query_ms"] = statistics.median(full) * 1e3
            sample["full_query_s"] = full
        finally:
            scu.close()

        # DCMTK: findscu -W minus echoscu, interleaved (after one warm-up of each).
        common = ["-aet", CALLING_AET, "-aec", CALLED_AET, "-to", "10", "-ta", "30",
                  "-td", "60", LOOPBACK, str(server.port)]
        echo_cmd = ["echoscu", *common]
        find_cmd = ["findscu", "-v", "-W", *common, str(qfile)]
        echo_t, find_t = [], []
        for k in range(args.cli_runs + 1):
            e, _ = run_cli(echo_cmd, env)
            f, out = run_cli(find_cmd, env)
            got = out.count("(Pending)")
            if got != n_expected:
                raise ServerError(f"findscu got {got} answers, expected {n_expected}")
            if k:
                echo_t.append(e)
                find_t.append(f)
        m["echoscu_ms"] = statistics.median(echo_t) * 1e3
        m["findscu_ms"] = statistics.median(find_t) * 1e3
        m["findscu_net_ms"] = m["findscu_ms"] - m["echoscu_ms"]
        sample["echoscu_s"], sample["findscu_s"] = echo_t, find_t

        # In-process pynetdicom SCU: one held association, bounded by count and time.
        scu = Scu(server.port)
        lat = []
        try:
            for _ in range(3):
                scu.find(ident)
            t_end = time.perf_counter() + args.scu_seconds
            short = 0
            while len(lat) < args.scu_queries and time.perf_counter() < t_end:
                scu.pause_reactor()  # untimed; find() then finds it paused already
                t0 = time.perf_counter()
                status, answers = scu.find(ident)
                lat.append(time.perf_counter() - t0)
                if status != 0 or not n_expected - 1 <= len(answers) <= n_expected:
                    raise ServerError(f"C-FIND status {status:#06x}, {len(answers)} answers, "
                                      f"expected {n_expected}")
                short += len(answers) != n_expected
            sample["scu_short_answers"] = short  # see Scu.pause_reactor: a client race
        finally:
            scu.close()
        m["scu_p50_ms"] = pct(lat, 50) * 1e3
        m["scu_p95_ms"] = pct(lat, 95) * 1e3
        m["scu_queries"] = len(lat)
        sample["scu_s"] = lat

        if name != "ceiling":
            folder_trials(server, pid, files, folder, expected, raw_ident, args, m, sample,
                          change_seq)
        rss = rss_mb(pid)
        if rss is not None:
            m["end_rss_mb"] = rss
    except ServerError as exc:
        sample["error"] = f"{exc}\n{tail(server.log_path, 5)}"
    except subprocess.TimeoutExpired as exc:
        sample["error"] = f"client timed out: {exc}"
    except KeyboardInterrupt:
        kill_all()
        raise
    finally:
        sample["shutdown_s"] = server.stop()
        server.cleanup()
        for leftover in folder.glob("bench-new-*.wl"):  # an interrupted new-file trial
            leftover.unlink()
    return sample


def folder_trials(server: Server, pid: int, files: int, folder: Path, expected: list[int],
                  ident: bytes, args: argparse.Namespace, m: dict[str, float],
                  sample: dict, change_seq: list[int]) -> None:
    """Changed, new and deleted files: how soon they are answered, and what a change costs."""
    n_expected = len(expected)
    changes, news, deletes, cpu_costs = [], [], [], []
    scu = RawScu(server.port)
    try:
        for _ in range(args.changes):
            # A changed item: rename lands, then query until the new name is answered.
            change_seq[0] += 1
            i = expected[(change_seq[0] * 7) % n_expected]
            new = f"CHANGED^N{change_seq[0]:04d}".encode()
            rewrite(folder, i, files, new.decode())
            seen = poll_answer(scu, ident, lambda answers: any(new in a for a in answers),
                               args.change_timeout)
            if seen is None:
                raise ServerError(f"changed item {i} not answered within "
                                  f"{args.change_timeout:.0f} s")
            changes.append(seen)
            # A new item, then the same item deleted.
            change_seq[0] += 1
            pid_new = write_new(folder, expected[change_seq[0] % n_expected], files,
                                change_seq[0]).encode()
            seen = poll_answer(scu, ident, lambda answers: any(pid_new in a for a in answers),
                               args.change_timeout)
            if seen is None:
                raise ServerError(f"new item {pid_new!r} not answered within "
                                  f"{args.change_timeout:.0f} s")
            news.append(seen)
            (folder / f"bench-new-{change_seq[0]:05d}.wl").unlink()
            gone = poll_answer(scu, ident, lambda answers: not any(pid_new in a for a in answers),
                               args.change_timeout)
            if gone is None:
                raise ServerError(f"deleted item {pid_new!r} still answered after "
                                  f"{args.change_timeout:.0f} s")
            deletes.append(gone)
    finally:
        scu.close()
    # CPU for one changed file: a quiet window after a rewrite minus a quiet window alone.
    for _ in range(args.changes):
        c0 = cpu_seconds(pid)
        time.sleep(args.cpu_window)
        idle = cpu_seconds(pid) - c0
        change_seq[0] += 1
        i = expected[(change_seq[0] * 7) % n_expected]
        new = f"CHANGED^C{change_seq[0]:04d}".encode()
        rewrite(folder, i, files, new.decode())
        c0 = cpu_seconds(pid)
        time.sleep(args.cpu_window)
        cpu_costs.append(cpu_seconds(pid) - c0 - idle)
        scu = RawScu(server.port)
        try:  # the change is answered (not timed: it was above)
            if poll_answer(scu, ident, lambda answers: any(new in a for a in answers),
                           args.change_timeout) is None:
                raise ServerError(f"changed item {i} not answered within "
                                  f"{args.change_timeout:.0f} s")
        finally:
            scu.close()
    m["change_median_s"] = statistics.median(changes)
    m["change_max_s"] = max(changes)
    m["new_median_s"] = statistics.median(news)
    m["new_max_s"] = max(news)
    m["deleted_median_s"] = statistics.median(deletes)
    m["change_cpu_ms"] = statistics.median(cpu_costs) * 1e3
    sample.update(change_s=changes, new_s=news, deleted_s=deletes, change_cpu_s=cpu_costs)


# --------------------------------------------------------------------------- report

# (metric, label, unit); per folder size. Ratio = orthanc / appliance (speed-up; for MB:
# how many times the appliance's memory Orthanc uses).
METRICS = [
    ("startup_answer_s", "start-up to full answer", "s"),
    ("startup_echo_s", "start-up to C-ECHO", "s"),
    ("startup_longest_find_s", "longest C-FIND during start-up", "s"),
    ("cold_startup_answer_s", "first start ever to full answer", "s"),
    ("cold_startup_longest_find_s", "longest C-FIND during first start", "s"),
    ("idle_rss_mb", "RSS after start-up", "MB"),
    ("rss_above_empty_mb", "RSS above the empty server", "MB"),
    ("end_rss_mb", "RSS at the end of the trial", "MB"),
    ("new_median_s", "new .wl answered (median)", "s"),
    ("new_max_s", "new .wl answered (max)", "s"),
    ("deleted_median_s", "deleted .wl gone (median)", "s"),
    ("change_median_s", "changed .wl answered (median)", "s"),
    ("change_max_s", "changed .wl answered (max)", "s"),
    ("change_cpu_ms", "CPU for one changed .wl", "ms"),
    ("full_query_ms", "whole folder answered (raw SCU)", "ms"),
    ("raw_p50_ms", "C-FIND raw SCU p50", "ms"),
    ("raw_p95_ms", "C-FIND raw SCU p95", "ms"),
    ("findscu_net_ms", "C-FIND findscu-echoscu", "ms"),
    ("scu_p50_ms", "C-FIND in-process p50", "ms"),
    ("scu_p95_ms", "C-FIND in-process p95", "ms"),
    ("findscu_ms", "findscu wall", "ms"),
    ("echoscu_ms", "echoscu wall", "ms"),
]


def target(metric: str, files: int, o: float | None, a: float | None,
           big: int) -> tuple[str, bool | None]:
    if a is None:
        return "", None
    if metric in ("raw_p50_ms", "findscu_net_ms") and files == big:
        ok = a < 5.0 and (o is not None and o / a >= 10.0 if o is not None else None)
        return "< 5 ms and >= 10x faster", ok
    if metric == "startup_answer_s":
        return "< 1 s and <= Orthanc", a < 1.0 and (o is None or a <= o)
    if metric == "rss_above_empty_mb":
        return "<= 60 MB", a <= 60.0
    if metric == "new_median_s":
        return "<= Orthanc", None if o is None else a <= o
    if metric == "full_query_ms":
        return "<= Orthanc / 2", None if o is None else a <= o / 2
    if metric == "change_max_s":
        return "< 1 s", a < 1.0
    return "", None


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "MB":
        return f"{v:.0f}"
    return f"{v:.3f}" if unit == "s" else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def report(samples: list[dict], sizes: list[int]) -> tuple[str, list[dict]]:
    values: dict[tuple[int, str, str], list[float]] = {}
    for s in samples:
        if "error" in s:
            continue
        for k, v in s["metrics"].items():
            values.setdefault((s["files"], k, s["server"]), []).append(v)
    med = {k: (max(v) if k[1].endswith("_max_s") else statistics.median(v))
           for k, v in values.items()}
    for (files, metric, server), v in list(med.items()):  # what the items cost in memory
        empty = med.get((0, "idle_rss_mb", server))
        if metric == "idle_rss_mb" and files and empty is not None:
            med[(files, "rss_above_empty_mb", server)] = v - empty
    rows, out = [], []
    shown = [name for name in SERVER_ORDER if any(k[2] == name for k in med)]
    header = ["metric", "files", "unit", *shown, "orth/app"]
    if "before" in shown:
        header.append("before/app")
    header += ["target", "met"]
    for files in [0, *sizes]:
        for metric, label, unit in METRICS:
            if not files and metric != "idle_rss_mb":
                continue
            got = {name: med.get((files, metric, name)) for name in shown}
            if all(v is None for v in got.values()):
                continue
            o, a, b = got.get("orthanc"), got.get("appliance"), got.get("before")
            ratio = o / a if o is not None and a else None
            before_ratio = b / a if b is not None and a else None
            desc, met = target(metric, files, o, a, max(sizes))
            rows.append({"metric": metric, "label": label, "files": files, "unit": unit,
                         **got, "orthanc_over_appliance": ratio,
                         "before_over_appliance": before_ratio, "target": desc, "met": met})
            line = [label if files else "RSS, empty folder", str(files), unit,
                    *(fmt(got[name], unit) for name in shown),
                    "-" if ratio is None else f"{ratio:.1f}"]
            if "before" in shown:
                line.append("-" if before_ratio is None else f"{before_ratio:.1f}")
            out.append(line + [desc, "" if not desc else {True: "yes", False: "NO", None: "?"}[met]])
    widths = [max(len(r[i]) for r in [header, *out]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *out]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines), rows


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for cmd in (["/usr/sbin/Orthanc", "--version"], ["findscu", "--version"]):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            out[Path(cmd[0]).name] = next((ln.strip() for ln in text.splitlines() if ln.strip()),
                                          "")
        except (OSError, subprocess.SubprocessError):
            out[Path(cmd[0]).name] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", default="1000,10000", help="folder sizes (default 1000,10000)")
    p.add_argument("--repeat", type=int, default=2, help="trials per server and size (2)")
    p.add_argument("--only", default="orthanc,before,appliance,ceiling",
                   help="servers (before: only with --baseline)")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="a checkout of an earlier version, run as the 'before' server")
    p.add_argument("--cli-runs", type=int, default=20, help="findscu and echoscu runs (20)")
    p.add_argument("--scu-queries", type=int, default=200,
                   help="C-FINDs per trial and client (raw, pynetdicom), at most (200)")
    p.add_argument("--scu-seconds", type=float, default=15.0,
                   help="time bound of those C-FINDs per trial and client (15 s)")
    p.add_argument("--full-runs", type=int, default=5,
                   help="whole-folder queries per trial (5)")
    p.add_argument("--changes", type=int, default=3,
                   help="changed, new and deleted files per trial (3 of each)")
    p.add_argument("--cpu-window", type=float, default=2.0,
                   help="quiet window for the CPU cost of one changed file (2 s)")
    p.add_argument("--no-install", action="store_true",
                   help="don't apt-get install Orthanc if it is missing; skip it instead")
    p.add_argument("--change-timeout", type=float, default=10.0)
    p.add_argument("--keep", action="store_true", help="keep folders, configs and logs")
    p.add_argument("--serve-ceiling", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_ceiling:  # the ceiling server's own process (WlCeiling)
        return serve_ceiling(args.serve_ceiling, int(args.files))
    try:
        sizes = sorted({int(x) for x in args.files.split(",") if x.strip()})
        servers = [s for s in SERVER_ORDER if s in args.only.split(",")
                   and (s != "before" or args.baseline is not None)]
    except ValueError:
        p.error("--files takes comma-separated integers")
    if not sizes or min(sizes) < PER_DAY or not servers or args.repeat < 1:
        p.error(f"need sizes >= {PER_DAY}, a server, --repeat >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # pynetdicom logs every association and dataset at INFO: slow, and noise here.
    # pynetdicom logs every association and dataset at INFO: slow, and noise here. The
    # refused connections while a server starts (echo_once) are expected: dropped too.
    pyn = logging.getLogger("pynetdicom")
    pyn.setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: not (r.name.startswith("pynetdicom") and r.getMessage(
        ).startswith(("Association request failed", "TCP Initialisation Error"))))
    if "orthanc" in servers and not args.no_install:
        try:
            ensure_orthanc()
        except (InstallError, OSError) as exc:
            log.error("Orthanc unavailable: %s", exc)
    if "orthanc" in servers and not (Path("/usr/sbin/Orthanc").exists()
                                     and WORKLIST_PLUGIN.exists()):
        log.error("Orthanc or its worklist plugin is missing; measuring the appliance only")
        servers.remove("orthanc")

    started = datetime.now()
    load_before = os.getloadavg()
    t_run = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="wlbench-"))
    env = base_env(tcp_nodelay=True)
    samples: list[dict] = []
    interrupted = False
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    generation: dict[int, float] = {}
    try:
        for name in servers:
            if name == "ceiling":
                continue
            s = empty_trial(name, root, args, env)
            s["rep"] = 0
            samples.append(s)
            log.info("[empty folder] %-9s %s", name, s.get("error", "").splitlines()[0]
                     if "error" in s else f"RSS {s['metrics'].get('idle_rss_mb', 0):.0f} MB")
        for files in sizes:
            folder = root / f"worklists-{files}"
            t0 = time.perf_counter()
            expected = generate(folder, files)
            generation[files] = time.perf_counter() - t0
            # Warm the page cache (Orthanc re-reads every file on each query).
            for entry in os.scandir(folder):
                with open(entry.path, "rb") as f:
                    f.read()
            qfile = root / f"query-{files}.dcm"
            qfile.write_bytes(part10(query(files), sop_class=MWL_FIND))
            log.info("%d files in %.1f s, query date %s answers %d", files,
                     generation[files], query_date(files), len(expected))
            change_seq = [0]
            for rep in range(args.repeat):
                order = list(servers) if rep % 2 == 0 else list(reversed(servers))
                for name in order:
                    s = trial(name, files, folder, expected, qfile, root, args, env,
                              change_seq)
                    s["rep"] = rep
                    samples.append(s)
                    if "error" in s:
                        log.info("[%d files %d/%d] %-9s ERROR %s", files, rep + 1, args.repeat,
                                 name, s["error"].splitlines()[0])
                    else:
                        log.info("[%d files %d/%d] %-9s %s", files, rep + 1, args.repeat, name,
                                 " ".join(f"{k}={v:.3g}" for k, v in s["metrics"].items()))
    except KeyboardInterrupt:
        interrupted = True
        log.error("interrupted; reporting what was measured")
    finally:
        kill_all()
        signal.signal(signal.SIGTERM, previous)
    elapsed = time.perf_counter() - t_run

    text, rows = report(samples, sizes)
    load_after = os.getloadavg()
    print()
    print(f"worklist benchmark, {started:%Y-%m-%d %H:%M}, {args.repeat} repetition(s), medians "
          f"(change max: max); {elapsed:.0f} s; load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(text)
    print(f"orth/app = orthanc / appliance, before/app = before / appliance (speed-up for "
          f"ms/s, memory ratio for MB); before = --baseline {args.baseline}; ceiling = pynetdicom "
          f"writing pre-encoded answers in one send (the clients' own cost). Query: Modality US "
          f"on one day, "
          f"{PER_DAY // 2} answers; findscu-echoscu = medians of {args.cli_runs} runs each; "
          f"whole folder: every item, median of {args.full_runs} runs.")
    for s in samples:
        if "error" in s:
            print(f"error: {s['files']} files rep {s['rep'] + 1} {s['server']}: "
                  f"{s['error'].splitlines()[0]}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"worklist-{started:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"), "seconds": elapsed,
        "args": vars(args),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "loadavg_before": load_before, "loadavg_after": load_after},
        "versions": versions(),
        "data": {"sizes": sizes, "per_day": PER_DAY, "modalities": MODALITIES,
                 "generation_s": generation,
                 "query_dates": {f: query_date(f) for f in sizes}},
        "table": rows, "samples": samples, "interrupted": interrupted,
    }, indent=2, default=str))
    finish(out, root, args.keep)
    if interrupted:
        return 130
    return 0 if any("error" not in s for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
