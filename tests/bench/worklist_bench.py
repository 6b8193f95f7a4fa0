"""Modality Worklist benchmark: pacs-appliance vs Orthanc's ModalityWorklists plugin.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.worklist_bench [--files 1000,10000] [--repeat N]
                                                   [--only orthanc,appliance,ceiling] [--keep]

For each folder size, a folder of that many .wl files is generated (deterministic; see
``generate``) and served by BOTH servers, one at a time, with the same Orthanc-format config
(``Plugins`` [libModalityWorklists.so], ``Worklists`` {Enable, Database},
``DicomAlwaysAllowFindWorklist`` true). The servers alternate (order reversed on every other
repetition). Per trial, on a fresh server process:

- start-up: spawn to the first C-ECHO, and spawn to the first complete answer of the query;
- ``findscu -W`` with the query file, minus ``echoscu`` (client start-up + association),
  interleaved, median of ``--cli-runs`` each;
- in-process pynetdicom SCU over one held association: latency per C-FIND, p50/p95;
- a changed .wl file: one answered item's PatientName rewritten (temp file + rename, as a
  clinic tool does), the query repeated until the new name appears: seconds.

The query is "one day's US procedures": ScheduledProcedureStepSequence with Modality US and
one ScheduledProcedureStepStartDate, plus the usual return keys. The folder spans
``files / 100`` days with 100 items a day, half of them US, so the query returns 50 answers at
every folder size (the folder grows with days kept, not with the day's load).

The *ceiling* is a bare pynetdicom SCP that has the 50 answers encoded before the first
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
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from tests.bench.servers import (  # noqa: E402
    finish,
    CALLED_AET, CALLING_AET, LOOPBACK, ApplianceServer, OrthancServer, Server, ServerError,
    base_env, kill_all, orthanc_style_config, tail,
)

log = logging.getLogger("wlbench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLIST_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
MWL_FIND = "1.2.840.10008.5.1.4.31"
SERVER_ORDER = ("orthanc", "appliance", "ceiling")
PER_DAY = 100
MODALITIES = ("US", "CT", "US", "MR")   # half of each day's items are US
FIRST_DAY = date(2026, 12, 1)
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


# --------------------------------------------------------------------------- data


def n_days(files: int) -> int:
    return max(1, files // PER_DAY)


def query_date(files: int) -> str:
    return (FIRST_DAY + timedelta(days=n_days(files) // 2)).strftime("%Y%m%d")


def item(i: int, files: int, patient_name: str | None = None) -> Dataset:
    """Worklist item ``i`` of a folder of ``files`` items."""
    days = n_days(files)
    day = FIRST_DAY + timedelta(days=i % days)
    slot = i // days                       # 0..PER_DAY-1 within its day
    modality = MODALITIES[slot % len(MODALITIES)]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient_name or f"BENCH^PATIENT{i:05d}"
    ds.PatientID = f"PID{i:05d}"
    ds.PatientBirthDate = f"19{50 + i % 50:02d}0{1 + i % 9}1{i % 10}"
    ds.PatientSex = "FM"[i % 2]
    ds.AccessionNumber = f"ACC{i:06d}"
    ds.ReferringPhysicianName = "REFERRER^DR"
    ds.StudyInstanceUID = f"{UID_ROOT}.{files}.{i}"
    ds.RequestedProcedureID = f"RP{i:05d}"
    ds.RequestedProcedureDescription = f"{modality} examination"
    sps = Dataset()
    sps.Modality = modality
    station = 1 + slot % 4
    sps.ScheduledStationAETitle = f"{modality}{station}"
    sps.ScheduledStationName = f"ROOM{station}"
    sps.ScheduledProcedureStepStartDate = day.strftime("%Y%m%d")
    minutes = 7 * 60 + (slot * 6) % (11 * 60)
    sps.ScheduledProcedureStepStartTime = f"{minutes // 60:02d}{minutes % 60:02d}00"
    sps.ScheduledPerformingPhysicianName = "SONO^GRAPHER"
    sps.ScheduledProcedureStepID = f"SPS{i:05d}"
    sps.ScheduledProcedureStepDescription = f"{modality} abdomen"
    sps.ScheduledProcedureStepLocation = f"ROOM{station}"
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


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


def query(files: int) -> Dataset:
    """One day's US procedures, with the return keys a scanner typically asks for."""
    ds = Dataset()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
               "ReferringPhysicianName", "StudyInstanceUID", "RequestedProcedureID",
               "RequestedProcedureDescription"):
        setattr(ds, kw, "")
    sps = Dataset()
    sps.Modality = "US"
    sps.ScheduledProcedureStepStartDate = query_date(files)
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


CLASSES = {"orthanc": WlOrthanc, "appliance": WlAppliance, "ceiling": WlCeiling}


def serve_ceiling(port: int, files: int) -> int:
    """Run the ceiling SCP (see the module docstring) on ``port`` until killed."""
    import struct

    from pynetdicom import AE, evt
    from pynetdicom import _config as pynetdicom_config

    from appliance.dicom.mwl import pending_command
    from appliance.worklist.encoded import answer_bytes, encode_item
    from appliance.worklist.matching import answer_charset, attrs_from_dataset, compile_query

    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    compiled = compile_query(attrs_from_dataset(query(files)))
    matching = [attrs for attrs in (attrs_from_dataset(item(i, files)) for i in range(files))
                if compiled.matches(attrs)]
    answers = {implicit: [answer_bytes(compiled, attrs, encode_item(
        attrs, answer_charset(attrs), implicit), implicit) for attrs in matching]
        for implicit in (False, True)}

    def pdu(context_id: int, command: bytes, identifier: bytes) -> bytes:
        # PS3.8 9.3.5: a P-DATA-TF PDU with the command PDV and the data PDV.
        body = b"".join(struct.pack(">IB", len(data) + 1, context_id) + data
                        for data in (b"\x03" + command, b"\x02" + identifier))
        return struct.pack(">BBI", 0x04, 0, len(body)) + body

    def on_find(event):
        command = pending_command(event.request.MessageID, MWL_FIND)
        implicit = event.context.transfer_syntax == "1.2.840.10008.1.2"
        event.assoc.dul.socket.send(b"".join(pdu(event.context.context_id, command, data)
                                             for data in answers[implicit]))
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
        """Make sure pynetdicom's requestor reactor thread is blocked (call before timing).

        pynetdicom's send_c_find pauses that thread with a flag that is not a handshake: the
        thread can be between its checkpoint and its get_msg() when the request goes out, and
        then takes the first C-FIND-RSP off the queue ("Received unexpected C-FIND service
        message"), so the SCU sees one answer fewer. Clearing the checkpoint a few ms before
        the request closes the window (send_c_find sets it again when it returns).
        """
        checkpoint = self.assoc._reactor_checkpoint
        if not checkpoint.is_set() and self.assoc._is_paused:
            return  # paused by a previous call and not restarted since
        checkpoint.clear()
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            time.sleep(0.003)
            if self.assoc._is_paused:
                break

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


def one_find(port: int, identifier: Dataset, timeout: float = 5.0) -> tuple[int, list[Dataset]]:
    scu = Scu(port, timeout)
    try:
        return scu.find(identifier)
    finally:
        scu.close()


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


def trial(name: str, files: int, folder: Path, expected: list[int], qfile: Path, root: Path,
          args: argparse.Namespace, env: dict[str, str], change_seq: list[int]) -> dict:
    server = CLASSES[name](name=name, root=root, keep=args.keep)
    server.folder = folder
    server.files = files
    ident = query(files)
    n_expected = len(expected)
    m: dict[str, float] = {}
    sample: dict = {"server": name, "files": files, "metrics": m}
    try:
        server.start(env)
        m["startup_echo_s"] = server.wait_ready(timeout=120.0)
        # Start-up to the first complete answer (the appliance parses the folder at start).
        deadline = server.spawned_at + 180.0
        while True:
            try:
                status, answers = one_find(server.port, ident, timeout=30.0)
                if status == 0 and len(answers) == n_expected:
                    break
            except ServerError:
                pass
            if time.perf_counter() > deadline:
                raise ServerError(f"no complete answer ({n_expected}) within 180 s")
            time.sleep(0.02)
        m["startup_answer_s"] = time.perf_counter() - server.spawned_at
        assert server.proc is not None
        try:
            m["idle_rss_mb"] = psutil.Process(server.proc.pid).memory_info().rss / 1e6
        except psutil.Error:
            pass

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

        # In-process: one held association, a few warm-up queries, then bounded by count+time.
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

        # A changed .wl file: rename lands, then query until the new name is answered.
        changes = []
        scu = Scu(server.port)
        try:
            for c in range(args.changes if name != "ceiling" else 0):
                change_seq[0] += 1
                i = expected[(change_seq[0] * 7) % n_expected]
                new = f"CHANGED^N{change_seq[0]:04d}"
                rewrite(folder, i, files, new)
                t0 = time.perf_counter()
                seen = None
                while time.perf_counter() - t0 < args.change_timeout:
                    _status, answers = scu.find(ident)
                    if any(str(a.get("PatientName", "")) == new for a in answers):
                        seen = time.perf_counter() - t0
                        break
                    time.sleep(0.005)
                if seen is None:
                    raise ServerError(f"changed item {i} not answered within "
                                      f"{args.change_timeout:.0f} s")
                changes.append(seen)
        finally:
            scu.close()
        if changes:
            m["change_median_s"] = statistics.median(changes)
            m["change_max_s"] = max(changes)
            sample["change_s"] = changes
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
    return sample


# --------------------------------------------------------------------------- report

# (metric, label, unit); per folder size. Ratio = orthanc / appliance (speed-up).
METRICS = [
    ("findscu_net_ms", "C-FIND findscu-echoscu", "ms"),
    ("scu_p50_ms", "C-FIND in-process p50", "ms"),
    ("scu_p95_ms", "C-FIND in-process p95", "ms"),
    ("findscu_ms", "findscu wall", "ms"),
    ("echoscu_ms", "echoscu wall", "ms"),
    ("change_median_s", "changed .wl answered (median)", "s"),
    ("change_max_s", "changed .wl answered (max)", "s"),
    ("startup_echo_s", "start-up to C-ECHO", "s"),
    ("startup_answer_s", "start-up to full answer", "s"),
    ("idle_rss_mb", "RSS after start-up", "MB"),
]


def target(metric: str, files: int, o: float | None, a: float | None,
           big: int) -> tuple[str, bool | None]:
    if a is None:
        return "", None
    if metric in ("scu_p50_ms", "findscu_net_ms") and files == big:
        ok = a < 5.0 and (o is not None and o / a >= 10.0 if o is not None else None)
        return "< 5 ms and >= 10x faster", ok
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
    med = {k: (max(v) if k[1] == "change_max_s" else statistics.median(v))
           for k, v in values.items()}
    rows, out = [], []
    header = ["metric", "files", "unit", "orthanc", "appliance", "ceiling", "orth/app", "target",
              "met"]
    for files in sizes:
        for metric, label, unit in METRICS:
            o, a = med.get((files, metric, "orthanc")), med.get((files, metric, "appliance"))
            c = med.get((files, metric, "ceiling"))
            if o is None and a is None and c is None:
                continue
            ratio = o / a if o is not None and a else None
            desc, met = target(metric, files, o, a, max(sizes))
            rows.append({"metric": metric, "label": label, "files": files, "unit": unit,
                         "orthanc": o, "appliance": a, "ceiling": c, "orthanc_over_appliance": ratio,
                         "target": desc, "met": met})
            out.append([label, str(files), unit, fmt(o, unit), fmt(a, unit), fmt(c, unit),
                        "-" if ratio is None else f"{ratio:.1f}", desc,
                        "" if not desc else {True: "yes", False: "NO", None: "?"}[met]])
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
    p.add_argument("--only", default="orthanc,appliance,ceiling")
    p.add_argument("--cli-runs", type=int, default=20, help="findscu and echoscu runs (20)")
    p.add_argument("--scu-queries", type=int, default=200,
                   help="in-process C-FINDs per trial, at most (200)")
    p.add_argument("--scu-seconds", type=float, default=15.0,
                   help="time bound of the in-process C-FINDs per trial (15 s)")
    p.add_argument("--changes", type=int, default=3, help="changed files per trial (3)")
    p.add_argument("--change-timeout", type=float, default=10.0)
    p.add_argument("--keep", action="store_true", help="keep folders, configs and logs")
    p.add_argument("--serve-ceiling", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_ceiling:  # the ceiling server's own process (WlCeiling)
        return serve_ceiling(args.serve_ceiling, int(args.files))
    try:
        sizes = sorted({int(x) for x in args.files.split(",") if x.strip()})
        servers = [s for s in SERVER_ORDER if s in args.only.split(",")]
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
                    s = trial(name, files, folder, expected, qfile, root, args, env, change_seq)
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
    print(f"orth/app = orthanc / appliance (speed-up for ms/s); ceiling = pynetdicom writing "
          f"pre-encoded answers in one send (the clients' own cost). Query: Modality US on one day, "
          f"{PER_DAY // 2} answers; findscu-echoscu = medians of {args.cli_runs} runs each.")
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
