"""Soak: a compressed clinic day against the real pacs-appliance daemon.

Run from the repository root with the venv's interpreter (on demand only; pytest never
collects tests/bench)::

    .venv/bin/python -m tests.bench.soak [--minutes 30] [--seed N] [--out FILE] [--keep]

One daemon (``python -m appliance serve``, spawned like tests/bench/servers.py does, on free
loopback ports, with a worklist folder, MPPS on and scheduled backups every
``--backup-minutes``) gets, for ``--minutes``:

- 4 scanners (threads, AE titles US1-US4, pynetdicom): per exam an MWL C-FIND for their
  station, an MPPS N-CREATE, single US frames as acquired (one association per image, an
  image every few seconds) or, for about one exam in four, the whole exam (30-50 images) at
  once over one association; now and then a small cine; MPPS N-SET COMPLETED (sometimes
  DISCONTINUED) at the end. Every image that did not get a Success response (failure
  status, no response, association lost) stays in the scanner's queue and is resent.
- worklist churn: .wl items added, rewritten and removed continuously (the appliance's own
  worklist authoring: temp file, fsync, rename).
- 2 EMR readers over HTTP (keep-alive): QIDO-RS study/series/instance searches, WADO-RS
  metadata, frames, rendered and whole instances.
- a SIGHUP every minute (the config rewritten with a harmless change first), one SIGKILL at a
  random point of the middle third (during a scanner's burst when one comes, so that an
  association is cut mid-transfer), then a restart on the same folders and ports.
- psutil samples of the daemon every 10 s: RSS, open file descriptors, threads, CPU.

At the end the scanners drain their queues, and the acknowledged instances are compared with
what QIDO-RS answers and with the index (read after a clean SIGTERM), and with the files in
the storage folder. The report (stdout) and a JSON file (``tests/bench/results/``) give the
counts, RSS/fd over time, latencies and errors per service and every ERROR line of the
daemon's log. Exit code 0 when acknowledged == present everywhere, 1 otherwise, 130 on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from appliance.dicom.requestor import pause_reactor  # noqa: E402
from appliance.worklist.authoring import dataset_from_tags, delete_item, write_item  # noqa: E402
from tests.bench.datagen import (  # noqa: E402
    DEFAULT_CACHE, US_IMAGE_STORAGE, US_MULTIFRAME_STORAGE, base_dataset, ensure_data,
    generate_cine,
)
from tests.bench.servers import (  # noqa: E402
    CALLED_AET, LOOPBACK, REPO_ROOT, base_env, echo_once, forget, free_port, kill_all,
    orthanc_style_config, spawn, tail,
)

log = logging.getLogger("soak")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MWL_FIND = "1.2.840.10008.5.1.4.31"
MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
STATIONS = ("US1", "US2", "US3", "US4")
DICOMWEB = "/dicom-web"
SAMPLE_EVERY = 10.0
HUP_EVERY = 60.0
OUTAGE_GRACE = 3.0          # errors this long after the restart still count as the outage's
TEMPLATES = 16              # distinct pixel buffers taken from the cached single frames
CINE_FRAMES = 12            # 640x480 RGB: 11 MB
SERVICES = ("C-STORE", "MWL C-FIND", "MPPS", "QIDO", "WADO")


def now() -> float:
    return time.monotonic()


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def today() -> str:
    return datetime.now().strftime("%Y%m%d")


def hhmmss() -> str:
    return datetime.now().strftime("%H%M%S")


def service_of(op: str) -> str:
    """The service an operation belongs to (``QIDO studies`` -> ``QIDO``)."""
    for name in SERVICES:
        if op.startswith(name):
            return name
    return op


# --------------------------------------------------------------------------- bookkeeping


class Stats:
    """Latencies and errors per operation, thread-safe; errors during the SIGKILL outage
    (from the kill to OUTAGE_GRACE after the restarted daemon answered) are kept apart."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, Counter] = defaultdict(Counter)
        self.outage_errors: dict[str, Counter] = defaultdict(Counter)
        self.error_samples: dict[str, list[str]] = defaultdict(list)
        self.outages: list[list[float | None]] = []
        self.counters: Counter = Counter()

    def time(self, op: str, seconds: float) -> None:
        with self.lock:
            self.latencies[op].append(seconds)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def outage_begin(self) -> None:
        with self.lock:
            self.outages.append([now(), None])

    def outage_end(self) -> None:
        with self.lock:
            self.outages[-1][1] = now()

    def in_outage(self, t: float) -> bool:
        for start, end in self.outages:
            if start <= t and (end is None or t <= end + OUTAGE_GRACE):
                return True
        return False

    def error(self, op: str, kind: str, detail: str = "") -> None:
        t = now()
        with self.lock:
            outage = self.in_outage(t)
            (self.outage_errors if outage else self.errors)[op][kind] += 1
            samples = self.error_samples[op]
            if len(samples) < 20:
                samples.append(f"+{t - self.t0:.1f}s{' (outage)' if outage else ''} {kind}"
                               f"{': ' + detail[:300] if detail else ''}")
        if not outage:
            log.warning("%s: %s %s", op, kind, detail[:200])


@dataclass
class ImageSpec:
    """One image a scanner has to deliver (rebuilt from this at every attempt)."""

    sop_uid: str
    kind: str                 # "single" | "cine"
    template: int
    series_uid: str
    series_number: int
    instance_number: int
    study: "Study"
    attempts: int = 0


@dataclass
class Study:
    """One exam: who, and which worklist item it performs (None for a walk-in)."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    accession: str
    requested_procedure_id: str
    sps_id: str
    description: str
    from_worklist: bool
    time: str = field(default_factory=hhmmss)
    images: list[ImageSpec] = field(default_factory=list)


class Ledger:
    """What the scanners sent and what the daemon acknowledged with Success."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, dict] = {}
        self.recent: list[tuple[str, str, str]] = []   # (study, series, sop) acknowledged
        self.inflight: dict[str, str] = {}             # sop -> scanner, C-STORE without answer
        self.attempts: Counter = Counter()
        self.statuses: Counter = Counter()
        self.created: int = 0
        self.inflight_at_kill: list[str] = []
        self.gave_up: list[str] = []

    def sending(self, spec: ImageSpec, scanner: str) -> None:
        with self.lock:
            self.inflight[spec.sop_uid] = scanner
            self.attempts[spec.sop_uid] += 1

    def answered(self, spec: ImageSpec, status: int | None, scanner: str, seconds: float) -> None:
        with self.lock:
            self.inflight.pop(spec.sop_uid, None)
            self.statuses["none" if status is None else f"0x{status:04X}"] += 1
            if status == 0x0000 and spec.sop_uid not in self.acked:
                self.acked[spec.sop_uid] = {
                    "scanner": scanner, "study": spec.study.study_uid, "series": spec.series_uid,
                    "kind": spec.kind, "attempts": spec.attempts, "t": time.time()}
                self.recent.append((spec.study.study_uid, spec.series_uid, spec.sop_uid))
                if len(self.recent) > 400:
                    del self.recent[:200]

    def pick_recent(self, rng: random.Random) -> tuple[str, str, str] | None:
        with self.lock:
            return rng.choice(self.recent) if self.recent else None

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """The daemon under test: fixed ports and folders, so a restart is what systemd does."""

    def __init__(self, workdir: Path, backup_minutes: float, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.storage = workdir / "storage"
        self.index = workdir / "index"
        self.worklists = workdir / "worklists"
        for folder in (self.index, self.worklists):
            folder.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.json"
        self.log_path = workdir / "daemon.log"
        self.backup_minutes = backup_minutes
        self.proc = None
        self.ready = threading.Event()
        self.starts: list[dict] = []
        self.hups = 0
        self.write_config(0)

    def write_config(self, limit_answers: int) -> None:
        """The Orthanc-format config of servers.py plus worklists, MPPS and backups; the
        SIGHUP test toggles Worklists.LimitAnswers (harmless: far above any answer count)."""
        config = orthanc_style_config(self.workdir, self.dicom_port, self.http_port)
        config["IndexDirectory"] = str(self.index)
        config["Worklists"] = {"Enable": True, "Database": str(self.worklists),
                               "LimitAnswers": limit_answers}
        config["Mpps"] = {"Enable": True, "ArchiveFinishedWorklists": True}
        config["Backups"] = {"IntervalHours": self.backup_minutes / 60.0, "Keep": 3}
        if not self.backup_minutes:
            config["Backups"] = {"IntervalHours": 0}
        config["DicomWeb"] = {"Enable": True, "Root": DICOMWEB + "/"}
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, self.config_path)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, t0: float, timeout: float = 60.0) -> float:
        """Spawn and wait for the first C-ECHO; returns seconds to it.

        Then also waits for the runtime file naming the new pid (written once HTTP is up
        and the SIGHUP handler installed: the DICOM port answers a little earlier, and a
        SIGHUP before the handler exists would end the process; under systemd, reload
        waits for READY=1, which comes after the runtime file)."""
        cmd = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "appliance", "serve",
               "--config", str(self.config_path)]
        spawned = now()
        self.proc = spawn(cmd, self.log_path, self.env, REPO_ROOT)
        deadline = spawned + timeout
        echo = None
        while now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode} at start; log "
                                   f"{self.log_path}:\n{tail(self.log_path)}")
            if echo is None:
                try:
                    if echo_once(self.dicom_port, timeout=2.0):
                        echo = now() - spawned
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
            if echo is not None and self._runtime_pid() == self.proc.pid:
                self.starts.append({"pid": self.proc.pid, "at": round(spawned - t0, 1),
                                    "ready_seconds": round(echo, 3),
                                    "runtime_file_seconds": round(now() - spawned, 3)})
                self.ready.set()
                return echo
            time.sleep(0.02)
        raise RuntimeError(f"daemon not ready within {timeout:.0f} s (C-ECHO after {echo} s); "
                           f"log {self.log_path}:\n{tail(self.log_path)}")

    def _runtime_pid(self) -> int | None:
        try:
            return json.loads((self.index / "pacs-appliance.runtime.json").read_text()).get("pid")
        except (OSError, ValueError, AttributeError):
            return None

    def sighup(self) -> None:
        self.write_config(500 if self.hups % 2 == 0 else 0)
        os.kill(self.proc.pid, signal.SIGHUP)
        self.hups += 1

    def sigkill(self) -> None:
        self.ready.clear()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        forget(self.proc)

    def stop(self, timeout: float = 60.0) -> float | None:
        """SIGTERM; seconds to exit, None if it had to be killed."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        self.ready.clear()
        t = now()
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            seconds = now() - t
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            log.error("daemon ignored SIGTERM for %.0f s: killed", timeout)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            seconds = None
        forget(proc)
        return seconds


# --------------------------------------------------------------------------- shared state


class Run:
    """What every actor shares: the daemon, the books, the clock and the stop flags."""

    def __init__(self, args: argparse.Namespace, daemon: Daemon, t0: float) -> None:
        self.args = args
        self.daemon = daemon
        self.t0 = t0
        self.stats = Stats(t0)
        self.ledger = Ledger()
        self.stop_load = threading.Event()     # end of the day: finish the exam, drain
        self.abort = threading.Event()         # give up at once (Ctrl-C, drain deadline)
        self.taken_lock = threading.Lock()
        self.taken: set[str] = set()           # accession numbers a scanner has started
        self.force_burst = threading.Event()   # the kill is armed: next exam dumps at once
        self.bursts: dict[str, tuple[int, int]] = {}  # scanner -> (sent, of) while bursting
        self.mpps: Counter = Counter()
        self.unexpected_exits: list[dict] = []
        self.pixels: list[bytes] = []
        self.cine_pixels: bytes = b""

    def elapsed(self) -> float:
        return now() - self.t0


# --------------------------------------------------------------------------- DICOM clients


def _ae(contexts: list[str], calling: str):
    from pynetdicom import AE
    ae = AE(ae_title=calling)
    for uid in contexts:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian])
    ae.acse_timeout = 15
    ae.connection_timeout = 5
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    return ae


def _status_of(rsp) -> int | None:
    """The Status of a DIMSE response dataset, None when there was no response."""
    if rsp is None or "Status" not in rsp:
        return None
    return int(rsp.Status)


class Scanner(threading.Thread):
    """One ultrasound room: worklist query, MPPS, images as acquired or in a burst, resends."""

    def __init__(self, n: int, run: Run) -> None:
        super().__init__(name=f"scanner-{STATIONS[n]}", daemon=True)
        self.n = n
        self.aet = STATIONS[n]
        self.run_ = run
        self.rng = random.Random(f"{run.args.seed}-scanner-{n}")
        self.outbox: list[ImageSpec] = []
        self.mpps_outbox: list[dict] = []
        self.next_try = 0.0
        self.failures = 0
        self.exams = 0
        self.store_ae = _ae([US_IMAGE_STORAGE, US_MULTIFRAME_STORAGE], self.aet)
        self.mwl_ae = _ae([MWL_FIND], self.aet)
        self.mpps_ae = _ae([MPPS_CLASS], self.aet)
        self.takes = True   # a worklist query takes a free item for the next exam

    # -- helpers -------------------------------------------------------------------------
    def uid(self) -> str:
        return f"2.25.{self.rng.getrandbits(120)}"

    def pause(self, seconds: float) -> None:
        """Wait, retrying what failed before when its time comes; returns early at
        stop_load. (Images held for a burst are not sent here unless a retry is due.)"""
        end = now() + seconds
        run = self.run_
        while not run.stop_load.is_set() and not run.abort.is_set():
            if self.failures and (self.outbox or self.mpps_outbox) and now() >= self.next_try:
                self.flush()
            left = end - now()
            if left <= 0:
                return
            run.stop_load.wait(min(left, 0.5))

    def _failed(self) -> None:
        self.failures += 1
        self.next_try = now() + min(1.0 * 2 ** (self.failures - 1), 8.0)

    def associate(self, ae, op: str):
        run = self.run_
        t = now()
        try:
            assoc = ae.associate(LOOPBACK, run.daemon.dicom_port, ae_title=CALLED_AET)
        except Exception as e:  # noqa: BLE001
            run.stats.error(op, "association", f"{type(e).__name__}: {e}")
            return None
        if not assoc.is_established:
            kind = "association rejected" if assoc.is_rejected else "association failed"
            run.stats.error(op, kind)
            return None
        run.stats.time("association", now() - t)
        return assoc

    @staticmethod
    def close(assoc) -> None:
        try:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        except Exception:  # noqa: BLE001
            pass

    # -- the day ---------------------------------------------------------------------------
    def run(self) -> None:
        run = self.run_
        try:
            # Stagger the rooms' first patients.
            self.pause(self.rng.uniform(0, 8))
            while not run.stop_load.is_set() and not run.abort.is_set():
                self.exam()
                self.pause(self.rng.uniform(5, 20))   # next patient
        except Exception as e:  # noqa: BLE001 - a harness bug must not look like a pass
            log.exception("%s crashed", self.name)
            run.stats.error("harness", f"{self.name} crashed", repr(e))
        finally:
            self.drain()

    def drain(self) -> None:
        """After the day: deliver whatever is still queued (the daemon is up by then)."""
        run = self.run_
        deadline = now() + run.args.drain_seconds
        while (self.outbox or self.mpps_outbox) and now() < deadline and not run.abort.is_set():
            if now() >= self.next_try:
                self.flush()
            else:
                time.sleep(0.2)

    def exam(self) -> None:
        run = self.run_
        self.exams += 1
        study = self.query_worklist() or self.walk_in()
        mpps_uid = self.uid()
        self.mpps_outbox.append({"op": "N-CREATE", "uid": mpps_uid,
                                 "ds": self.mpps_create(study, mpps_uid), "attempts": 0})
        self.flush()
        burst = run.force_burst.is_set() or self.rng.random() < run.args.burst_share
        if burst:
            run.force_burst.clear()
        series_uid = self.uid()
        count = self.rng.randint(30, 50) if burst else self.rng.randint(6, 20)
        for i in range(count):
            if run.stop_load.is_set():
                break
            spec = ImageSpec(self.uid(), "single", self.rng.randrange(TEMPLATES), series_uid, 1,
                             i + 1, study)
            study.images.append(spec)
            self.outbox.append(spec)
            if burst:   # acquired and kept on the scanner: the exam is sent at the end
                self.pause(self.rng.uniform(0.1, 0.4))
            else:       # sent as acquired
                if now() >= self.next_try:
                    self.flush()
                self.pause(min(self.rng.expovariate(1 / run.args.image_seconds), 15))
        if burst and not run.stop_load.is_set():
            self.flush(burst=True)
        if self.rng.random() < run.args.cine_share and not run.stop_load.is_set():
            spec = ImageSpec(self.uid(), "cine", 0, self.uid(), 2, 1, study)
            study.images.append(spec)
            self.outbox.append(spec)
            self.flush()
        final = "DISCONTINUED" if self.rng.random() < 0.05 else "COMPLETED"
        self.mpps_outbox.append({"op": "N-SET", "uid": mpps_uid, "final": final,
                                 "ds": self.mpps_set(study, final), "attempts": 0})
        if now() >= self.next_try:
            self.flush()

    # -- worklist --------------------------------------------------------------------------
    def query_worklist(self) -> Study | None:
        run = self.run_
        ident = Dataset()
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                   "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID",
                   "RequestedProcedureDescription"):
            setattr(ident, kw, "")
        sps = Dataset()
        sps.Modality = "US"
        sps.ScheduledStationAETitle = self.aet
        sps.ScheduledProcedureStepStartDate = today()
        sps.ScheduledProcedureStepStartTime = ""
        sps.ScheduledProcedureStepID = ""
        sps.ScheduledProcedureStepDescription = ""
        ident.ScheduledProcedureStepSequence = [sps]
        assoc = self.associate(self.mwl_ae, "MWL C-FIND")
        if assoc is None:
            return None
        answers, final = [], None
        try:
            pause_reactor(assoc)
            t = now()
            for status, found in assoc.send_c_find(ident, MWL_FIND):
                code = _status_of(status)
                if code in (0xFF00, 0xFF01):
                    answers.append(found)
                else:
                    final = code
            if final == 0x0000:
                run.stats.time("MWL C-FIND", now() - t)
                run.stats.count("mwl answers", len(answers))
            else:
                run.stats.error("MWL C-FIND", "no response" if final is None
                                else f"status 0x{final:04X}")
        except Exception as e:  # noqa: BLE001
            run.stats.error("MWL C-FIND", type(e).__name__, str(e))
        finally:
            self.close(assoc)
        if not self.takes:
            return None
        self.rng.shuffle(answers)
        for found in answers:
            if found is None:
                continue
            accession = str(found.get("AccessionNumber", "") or "")
            with run.taken_lock:
                if not accession or accession in run.taken:
                    continue
                run.taken.add(accession)
            item = (found.get("ScheduledProcedureStepSequence") or [Dataset()])[0]
            return Study(
                patient_name=str(found.get("PatientName", "") or "SOAK^UNKNOWN"),
                patient_id=str(found.get("PatientID", "") or "UNKNOWN"),
                birth_date=str(found.get("PatientBirthDate", "") or ""),
                sex=str(found.get("PatientSex", "") or ""),
                study_uid=str(found.get("StudyInstanceUID", "") or self.uid()),
                accession=accession,
                requested_procedure_id=str(found.get("RequestedProcedureID", "") or ""),
                sps_id=str(item.get("ScheduledProcedureStepID", "") or ""),
                description=str(item.get("ScheduledProcedureStepDescription", "") or "US EXAM"),
                from_worklist=True)
        return None

    def walk_in(self) -> Study:
        """No worklist item (none free, or the query failed): the patient typed in."""
        self.run_.stats.count("walk-in exams")
        k = self.rng.randrange(10**6)
        return Study(patient_name=f"SOAK^WALKIN{k:06d}", patient_id=f"W{self.n}{k:06d}",
                     birth_date="19700101", sex="O", study_uid=self.uid(), accession="",
                     requested_procedure_id="", sps_id="", description="US WALK-IN",
                     from_worklist=False)

    # -- images ----------------------------------------------------------------------------
    def dataset(self, spec: ImageSpec) -> Dataset:
        run = self.run_
        study = spec.study
        sop_class = US_MULTIFRAME_STORAGE if spec.kind == "cine" else US_IMAGE_STORAGE
        ds = base_dataset(sop_class, spec.sop_uid, study.study_uid, spec.series_uid,
                           spec.series_number, spec.instance_number)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today()
        ds.StudyTime = ds.SeriesTime = study.time
        ds.ContentTime = hhmmss()
        ds.PatientName = study.patient_name
        ds.PatientID = study.patient_id
        ds.PatientBirthDate = study.birth_date
        ds.PatientSex = study.sex
        ds.AccessionNumber = study.accession
        ds.StudyDescription = study.description
        ds.StationName = f"ROOM-{self.aet}"
        ds.DeviceSerialNumber = f"SN-{self.aet}"
        if spec.kind == "cine":
            ds.SeriesDescription = "cine"
            ds.NumberOfFrames = CINE_FRAMES
            ds.FrameIncrementPointer = 0x00181063
            ds.FrameTime = 33.3
            ds.CineRate = 30
            ds.PixelData = run.cine_pixels
        else:
            ds.PixelData = run.pixels[spec.template]
        return ds

    def flush(self, burst: bool = False) -> None:
        """Send the MPPS queue, then the image queue, over one association each; whatever
        did not get Success stays queued for the next try."""
        if self.mpps_outbox:
            self.flush_mpps()
        if not self.outbox or self.mpps_outbox and self.failures:
            return
        run = self.run_
        assoc = self.associate(self.store_ae, "C-STORE")
        if assoc is None:
            self._failed()
            return
        ok = True
        try:
            queue = list(self.outbox)
            for i, spec in enumerate(queue):
                if burst or len(queue) > 1:
                    run.bursts[self.aet] = (i, len(queue))
                spec.attempts += 1
                try:
                    ds = self.dataset(spec)
                except Exception as e:  # noqa: BLE001 - harness bug
                    run.stats.error("harness", "dataset", repr(e))
                    self.outbox.remove(spec)
                    continue
                run.ledger.sending(spec, self.aet)
                pause_reactor(assoc)   # pynetdicom's requestor race (appliance.dicom.requestor)
                t = now()
                try:
                    rsp = assoc.send_c_store(ds)
                    code = _status_of(rsp)
                except Exception as e:  # noqa: BLE001 - association gone mid-send
                    code = None
                    run.stats.error("C-STORE", "no response", f"{type(e).__name__}: {e}")
                    run.ledger.answered(spec, None, self.aet, now() - t)
                    ok = False
                    break
                seconds = now() - t
                run.ledger.answered(spec, code, self.aet, seconds)
                if code == 0x0000:
                    run.stats.time("C-STORE cine" if spec.kind == "cine" else "C-STORE", seconds)
                    self.outbox.remove(spec)
                    continue
                if code is None:
                    run.stats.error("C-STORE", "no response")
                    ok = False
                    break
                run.stats.error("C-STORE", f"status 0x{code:04X}", spec.sop_uid)
                ok = False
                if spec.attempts >= 10:
                    run.ledger.gave_up.append(spec.sop_uid)
                    self.outbox.remove(spec)
        finally:
            run.bursts.pop(self.aet, None)
            self.close(assoc)
        if ok:
            self.failures = 0
        else:
            self._failed()

    # -- MPPS ------------------------------------------------------------------------------
    def mpps_create(self, study: Study, uid: str) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = study.patient_name
        ds.PatientID = study.patient_id
        ds.PatientBirthDate = study.birth_date
        ds.PatientSex = study.sex
        ds.Modality = "US"
        ds.PerformedStationAETitle = self.aet
        ds.PerformedStationName = f"ROOM-{self.aet}"
        ds.PerformedLocation = f"ROOM-{self.aet}"
        ds.PerformedProcedureStepStartDate = today()
        ds.PerformedProcedureStepStartTime = hhmmss()
        ds.PerformedProcedureStepEndDate = None
        ds.PerformedProcedureStepEndTime = None
        ds.PerformedProcedureStepStatus = "IN PROGRESS"
        ds.PerformedProcedureStepID = uid[-16:]
        ds.PerformedProcedureStepDescription = study.description
        ds.StudyID = "1"
        sched = Dataset()
        sched.StudyInstanceUID = study.study_uid
        sched.AccessionNumber = study.accession
        sched.RequestedProcedureID = study.requested_procedure_id
        sched.ScheduledProcedureStepID = study.sps_id
        sched.ScheduledProcedureStepDescription = study.description
        ds.ScheduledStepAttributesSequence = [sched]
        ds.PerformedSeriesSequence = []
        return ds

    def mpps_set(self, study: Study, final: str) -> Dataset:
        ds = Dataset()
        ds.PerformedProcedureStepStatus = final
        ds.PerformedProcedureStepEndDate = today()
        ds.PerformedProcedureStepEndTime = hhmmss()
        by_series: dict[str, list[ImageSpec]] = defaultdict(list)
        for spec in study.images:
            by_series[spec.series_uid].append(spec)
        items = []
        for series_uid, specs in by_series.items():
            item = Dataset()
            item.SeriesInstanceUID = series_uid
            item.SeriesDescription = "cine" if specs[0].kind == "cine" else "Abdomen B-mode"
            item.PerformingPhysicianName = ""
            item.ProtocolName = "ABDOMEN"
            item.RetrieveAETitle = CALLED_AET
            refs = []
            for spec in specs:
                ref = Dataset()
                ref.ReferencedSOPClassUID = (US_MULTIFRAME_STORAGE if spec.kind == "cine"
                                             else US_IMAGE_STORAGE)
                ref.ReferencedSOPInstanceUID = spec.sop_uid
                refs.append(ref)
            item.ReferencedImageSequence = refs
            item.ReferencedNonImageCompositeSOPInstanceSequence = []
            items.append(item)
        ds.PerformedSeriesSequence = items
        return ds

    def flush_mpps(self) -> None:
        run = self.run_
        assoc = self.associate(self.mpps_ae, "MPPS")
        if assoc is None:
            self._failed()
            return
        try:
            while self.mpps_outbox:
                op = self.mpps_outbox[0]
                op["attempts"] += 1
                pause_reactor(assoc)   # pynetdicom's requestor race (appliance.dicom.requestor)
                t = now()
                try:
                    if op["op"] == "N-CREATE":
                        rsp, _ = assoc.send_n_create(op["ds"], MPPS_CLASS, op["uid"])
                    else:
                        rsp, _ = assoc.send_n_set(op["ds"], MPPS_CLASS, op["uid"])
                    code = _status_of(rsp)
                except Exception as e:  # noqa: BLE001
                    run.stats.error("MPPS " + op["op"], "no response", f"{type(e).__name__}: {e}")
                    self._failed()
                    return
                name = "MPPS " + op["op"]
                if code is None:
                    run.stats.error(name, "no response")
                    self._failed()
                    return
                retried = op["attempts"] > 1
                if code == 0x0000:
                    run.stats.time(name, now() - t)
                    run.mpps[op.get("final", "IN PROGRESS")] += 1
                elif retried and (code == 0x0111 or code == 0x0110 and op["op"] == "N-SET"):
                    # The first attempt got through but its answer was lost in the kill.
                    run.mpps[f"{op['op']} already applied on resend (0x{code:04X})"] += 1
                else:
                    run.stats.error(name, f"status 0x{code:04X}")
                    if op["attempts"] < 5:
                        self._failed()
                        return
                self.mpps_outbox.pop(0)
            self.failures = 0
        finally:
            self.close(assoc)


# --------------------------------------------------------------------------- worklist churn


class WorklistQuerier(Scanner):
    """The worklist's readers without the scanners (``--services`` without store): a
    station's MWL C-FIND every 1-4 s, taking nothing (the churn keeps every item)."""

    def __init__(self, n: int, run: Run) -> None:
        super().__init__(n, run)
        self.name = f"mwl-{STATIONS[n]}"
        self.takes = False

    def run(self) -> None:
        run = self.run_
        while not run.stop_load.wait(self.rng.uniform(1.0, 4.0)):
            self.query_worklist()

    def drain(self) -> None:
        pass


def preload(run: Run, count: int) -> None:
    """``--preload``: one walk-in exam of ``count`` images sent over one association before
    the day, so that readers alone (``--services readers``) have something to read."""
    scanner = Scanner(0, run)
    study = scanner.walk_in()
    series = scanner.uid()
    for i in range(count):
        spec = ImageSpec(scanner.uid(), "single", i % TEMPLATES, series, 1, i + 1, study)
        study.images.append(spec)
        scanner.outbox.append(spec)
    for _ in range(5):
        if scanner.outbox:
            scanner.flush(burst=True)
    log.info("preloaded %d images (%d left unsent)", count - len(scanner.outbox),
             len(scanner.outbox))


class WorklistChurn(threading.Thread):
    """The RIS: adds, rewrites and removes .wl items all day, through the appliance's own
    worklist authoring (atomic write). Items a scanner has started are left alone."""

    def __init__(self, run: Run) -> None:
        super().__init__(name="worklist-churn", daemon=True)
        self.run_ = run
        self.rng = random.Random(f"{run.args.seed}-churn")
        self.items: dict[str, dict] = {}
        self.serial = 0
        self.done = Counter()

    def tags(self, item: dict) -> dict:
        return {
            "SpecificCharacterSet": "ISO_IR 192",
            "PatientName": item["name"], "PatientID": item["pid"],
            "PatientBirthDate": item["birth"], "PatientSex": item["sex"],
            "AccessionNumber": item["accession"], "StudyInstanceUID": item["study"],
            "RequestedProcedureID": item["rp"],
            "RequestedProcedureDescription": item["description"],
            "ReferringPhysicianName": "REFERRER^RITA",
            "ScheduledProcedureStepSequence": [{
                "Modality": item["modality"], "ScheduledStationAETitle": item["station"],
                "ScheduledStationName": f"ROOM-{item['station']}",
                "ScheduledProcedureStepStartDate": today(),
                "ScheduledProcedureStepStartTime": item["time"],
                "ScheduledPerformingPhysicianName": "SONO^GRAPHER",
                "ScheduledProcedureStepID": f"SPS{item['rp'][2:]}",
                "ScheduledProcedureStepDescription": item["description"],
                "ScheduledProcedureStepLocation": f"ROOM-{item['station']}",
            }],
        }

    def write(self, wl_id: str, item: dict, op: str) -> None:
        t = now()
        try:
            write_item(self.run_.daemon.worklists, dataset_from_tags(self.tags(item)), wl_id)
        except Exception as e:  # noqa: BLE001
            self.run_.stats.error("harness", f"worklist {op}", repr(e))
            return
        self.run_.stats.time("worklist write", now() - t)
        self.done[op] += 1

    def add(self, station: str | None = None) -> None:
        self.serial += 1
        k = self.serial
        modality = "US"
        if station is None:
            station = self.rng.choice(STATIONS + ("CT1", "MR1"))
            modality = station[:2]
        minutes = 7 * 60 + self.rng.randrange(11 * 60)
        item = {
            "name": f"SOAK^PATIENT{k:05d}", "pid": f"SK{self.run_.args.seed % 1000:03d}{k:05d}",
            "birth": f"19{self.rng.randrange(30, 99)}0{self.rng.randrange(1, 10)}1{self.rng.randrange(10)}",
            "sex": self.rng.choice("FMO"), "accession": f"A{self.run_.args.seed % 1000:03d}{k:06d}",
            "study": f"2.25.{self.rng.getrandbits(120)}", "rp": f"RP{k:06d}",
            "description": f"{modality} ABDOMEN", "modality": modality, "station": station,
            "time": f"{minutes // 60:02d}{minutes % 60:02d}00",
        }
        wl_id = f"soak-{k:06d}"
        self.items[wl_id] = item
        self.write(wl_id, item, "added")

    def free(self) -> list[str]:
        with self.run_.taken_lock:
            taken = set(self.run_.taken)
        for wl_id in [i for i, item in self.items.items() if item["accession"] in taken]:
            del self.items[wl_id]   # being performed: the scanner's MPPS will archive it
        return list(self.items)

    def run(self) -> None:
        run = self.run_
        try:
            for station in STATIONS:
                for _ in range(4):
                    self.add(station)
            for _ in range(8):
                self.add()
            while not run.stop_load.wait(self.rng.uniform(1.0, 4.0)):
                free = self.free()
                per_station = Counter(self.items[i]["station"] for i in free)
                short = [s for s in STATIONS if per_station[s] < 3]
                roll = self.rng.random()
                if short:
                    self.add(self.rng.choice(short))
                elif roll < 0.4 and len(free) < 80:
                    self.add()
                elif roll < 0.75 and free:
                    wl_id = self.rng.choice(free)
                    item = self.items[wl_id]
                    item["time"] = f"{self.rng.randrange(7, 18):02d}{self.rng.randrange(60):02d}00"
                    item["description"] = self.rng.choice(
                        ("US ABDOMEN", "US PELVIS", "US THYROID", "US RENAL"))
                    self.write(wl_id, item, "rewritten")
                elif free and len(free) > 12:
                    wl_id = self.rng.choice(free)
                    del self.items[wl_id]
                    if delete_item(run.daemon.worklists, wl_id):
                        self.done["removed"] += 1
        except Exception as e:  # noqa: BLE001
            log.exception("worklist churn crashed")
            run.stats.error("harness", "worklist churn crashed", repr(e))


# --------------------------------------------------------------------------- EMR readers


class Reader(threading.Thread):
    """An EMR viewer: QIDO-RS searches, then WADO-RS of what it found, keep-alive HTTP."""

    def __init__(self, n: int, run: Run) -> None:
        super().__init__(name=f"reader-{n}", daemon=True)
        self.run_ = run
        self.rng = random.Random(f"{run.args.seed}-reader-{n}")
        self.conn: http.client.HTTPConnection | None = None

    def get(self, op: str, path: str, accept: str) -> tuple[int, bytes] | None:
        run = self.run_
        for attempt in (1, 2):   # a keep-alive connection closed by the server: once more
            if self.conn is None:
                self.conn = http.client.HTTPConnection(LOOPBACK, run.daemon.http_port, timeout=60)
            t = now()
            try:
                self.conn.request("GET", DICOMWEB + path, headers={"Accept": accept})
                rsp = self.conn.getresponse()
                body = rsp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    continue
                run.stats.error(op, "connection", f"{type(e).__name__}: {e}")
                return None
            except Exception as e:  # noqa: BLE001 - refused, timeout...
                self.conn.close()
                self.conn = None
                run.stats.error(op, "connection", f"{type(e).__name__}: {e}")
                return None
            seconds = now() - t
            if rsp.status >= 400:
                kind = f"HTTP {rsp.status}"
                run.stats.error(op, kind, f"{path}: {body[:200]!r}")
                return rsp.status, body
            run.stats.time(op, seconds)
            return rsp.status, body
        return None

    def qido(self, op: str, path: str) -> list[dict] | None:
        """The answers ([] for 204 No Content), None when the request failed."""
        got = self.get(op, path, "application/dicom+json")
        if got is None or got[0] not in (200, 204):
            return None
        if got[0] == 204 or not got[1]:
            return []
        try:
            return json.loads(got[1])
        except ValueError:
            self.run_.stats.error(op, "bad JSON", path)
            return None

    @staticmethod
    def value(obj: dict, tag: str) -> str | None:
        v = (obj.get(tag) or {}).get("Value") or [None]
        return v[0]

    def think(self) -> None:
        self.run_.stop_load.wait(self.rng.uniform(0.3, 1.5))

    def browse(self, study: str, series: str | None, sop: str | None,
               frames: int = 1, acked: bool = False) -> None:
        run = self.run_
        if series is None:
            found = self.qido("QIDO series", f"/studies/{study}/series")
            if not found:
                return
            series = self.value(self.rng.choice(found), "0020000E")
            self.think()
        if sop is None:
            found = self.qido("QIDO instances", f"/studies/{study}/series/{series}/instances")
            if not found:
                return
            chosen = self.rng.choice(found)
            sop = self.value(chosen, "00080018")
            frames = int(self.value(chosen, "00280008") or 1)
            self.think()
        base = f"/studies/{study}/series/{series}/instances/{sop}"
        roll = self.rng.random()
        if roll < 0.3:
            got = self.get("WADO metadata", f"/studies/{study}/series/{series}/metadata",
                           "application/dicom+json")
        elif roll < 0.6:
            got = self.get("WADO frame", f"{base}/frames/{self.rng.randint(1, frames)}",
                           'multipart/related; type="application/octet-stream"; '
                           'transfer-syntax=*')
        elif roll < 0.9:
            got = self.get("WADO rendered", f"{base}/rendered", "image/jpeg")
        else:
            got = self.get("WADO instance", base,
                           'multipart/related; type="application/dicom"; transfer-syntax=*')
        if acked and got is not None and got[0] == 404:
            run.stats.error("WADO", "acknowledged instance not found", base)

    def run(self) -> None:
        run = self.run_
        try:
            while not run.stop_load.is_set() and not run.abort.is_set():
                roll = self.rng.random()
                if roll < 0.4:
                    recent = run.ledger.pick_recent(self.rng)
                    if recent is not None:
                        study, series, sop = recent
                        check = self.qido("QIDO instances", f"/instances?SOPInstanceUID={sop}")
                        if check == []:
                            run.stats.error("QIDO", "acknowledged instance not found", sop)
                        self.think()
                        self.browse(study, series, sop, frames=1, acked=True)
                else:
                    queries = [
                        f"/studies?StudyDate={today()}&limit=50&includefield=PatientName",
                        "/studies?PatientName=SOAK*&limit=20",
                        "/studies?ModalitiesInStudy=US&limit=100&offset=0",
                        "/series?Modality=US&limit=50",
                    ]
                    found = self.qido("QIDO studies", self.rng.choice(queries))
                    if found:
                        self.think()
                        study = self.value(self.rng.choice(found), "0020000D")
                        if study:
                            self.browse(study, None, None)
                self.think()
        except Exception as e:  # noqa: BLE001
            log.exception("%s crashed", self.name)
            run.stats.error("harness", f"{self.name} crashed", repr(e))
        finally:
            if self.conn is not None:
                self.conn.close()


# --------------------------------------------------------------------------- sampling


def rss_parts(pid: int) -> dict[str, float]:
    """RSS split as the kernel counts it (/proc/PID/status): anonymous memory (the heap:
    malloc arenas, Python objects, SQLite's caches) apart from file pages (the code of
    the modules and libraries touched so far, which grows as new paths run)."""
    parts = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("RssAnon", "RssFile"):
                    parts["anon_mb" if name == "RssAnon" else "file_mb"] = round(
                        int(value.split()[0]) * 1024 / 1e6, 1)
    except (OSError, ValueError):
        pass
    return parts


class Sampler(threading.Thread):
    """Every SAMPLE_EVERY s: RSS, open fds, threads and CPU of the daemon (psutil)."""

    def __init__(self, run: Run) -> None:
        super().__init__(name="sampler", daemon=True)
        self.run_ = run
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self._cpu: dict[int, tuple[float, float]] = {}

    def sample(self) -> None:
        run = self.run_
        pid = run.daemon.pid
        row = {"t": round(run.elapsed(), 1), "pid": pid, "acked": run.ledger.acked_count()}
        if pid is not None and run.daemon.ready.is_set():
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    row["rss_mb"] = round(p.memory_info().rss / 1e6, 1)
                    row.update(rss_parts(pid))
                    row["fds"] = p.num_fds()
                    row["threads"] = p.num_threads()
                    cpu = p.cpu_times()
                total = cpu.user + cpu.system
                last = self._cpu.get(pid)
                t = now()
                if last is not None:
                    row["cpu_pct"] = round(100 * (total - last[1]) / (t - last[0]), 1)
                self._cpu[pid] = (t, total)
            except psutil.Error:
                pass
        row["load1"] = round(os.getloadavg()[0], 2)
        self.samples.append(row)

    def run(self) -> None:
        next_at = now()
        while not self.stop.is_set():
            self.sample()
            next_at += SAMPLE_EVERY
            self.stop.wait(max(0.0, next_at - now()))


# --------------------------------------------------------------------------- the conductor


def prepare_data(run: Run) -> None:
    """Pixel buffers from the benchmark's cached images (tests/bench/datagen.py)."""
    data = ensure_data(DEFAULT_CACHE)
    run.pixels = [dcmread(p).PixelData for p in data.singles[:TEMPLATES]]
    cine = DEFAULT_CACHE / "cine" / f"soak_cine_{CINE_FRAMES}.dcm"
    if not cine.exists():
        generate_cine(cine, CINE_FRAMES)
    run.cine_pixels = dcmread(cine).PixelData


def kill_mid_association(run: Run, rng: random.Random) -> dict:
    """SIGKILL during a burst (waiting for one, and asking for one, for a while), else
    during any C-STORE in flight, else now. Returns what was cut."""
    args = run.args
    run.force_burst.set()
    want = rng.randint(3, 25)
    how = "no store in flight"
    wait_burst = now() + max(30.0, 0.15 * args.minutes * 60)
    while now() < wait_burst and not run.abort.is_set():
        bursting = {k: v for k, v in dict(run.bursts).items() if v[0] >= min(want, v[1] - 2)}
        if bursting:
            name, (i, of) = next(iter(bursting.items()))
            how = f"mid-burst: {name} sending image {i + 1} of {of}"
            break
        time.sleep(0.005)
    else:
        wait_any = now() + 30
        while now() < wait_any:
            with run.ledger.lock:
                flying = dict(run.ledger.inflight)
            if flying:
                how = f"mid C-STORE ({', '.join(sorted(set(flying.values())))})"
                break
            time.sleep(0.002)
    run.force_burst.clear()
    run.stats.outage_begin()
    with run.ledger.lock:
        at = run.elapsed()
        pid = run.daemon.pid
        run.daemon.sigkill()
        run.ledger.inflight_at_kill = sorted(run.ledger.inflight)
    log.warning("SIGKILL %s at +%.1f s (%s; C-STOREs in flight: %d)", pid, at, how,
                len(run.ledger.inflight_at_kill))
    time.sleep(args.restart_delay)
    ready = run.daemon.start(run.t0)
    run.stats.outage_end()
    log.info("restarted on the same folders: C-ECHO after %.2f s", ready)
    return {"at": round(at, 1), "pid": pid, "how": how,
            "inflight": list(run.ledger.inflight_at_kill), "restart_ready_seconds": round(ready, 3),
            "outage_seconds": round(run.stats.outages[-1][1] - run.stats.outages[-1][0], 2)}


def conduct(run: Run, rng: random.Random, sampler: Sampler) -> dict:
    """The day: SIGHUP every minute, the SIGKILL, progress lines; returns the kill record."""
    duration = run.args.minutes * 60
    kill_at = rng.uniform(0.35, 0.65) * duration if not run.args.no_kill else None
    next_hup = HUP_EVERY
    next_progress = 60.0
    kill: dict = {}
    while run.elapsed() < duration and not run.abort.is_set():
        t = run.elapsed()
        proc = run.daemon.proc
        if run.daemon.ready.is_set() and proc is not None and proc.poll() is not None:
            run.daemon.ready.clear()
            forget(proc)
            log.error("the daemon DIED by itself (exit %s) at +%.1f s: restarting it",
                      proc.returncode, t)
            run.unexpected_exits.append({"at": round(t, 1), "pid": proc.pid,
                                         "returncode": proc.returncode})
            run.daemon.start(run.t0)
            continue
        if kill_at is not None and not kill and t >= kill_at:
            kill = kill_mid_association(run, rng)
            continue
        if t >= next_hup:
            next_hup += HUP_EVERY
            if run.daemon.ready.is_set() and "sighup" in run.args.services:
                run.daemon.sighup()
        if t >= next_progress:
            next_progress += 60
            last = sampler.samples[-1] if sampler.samples else {}
            log.info("+%3.0f min: %d acknowledged, RSS %s MB (anonymous %s), %s fds, load %s",
                     t / 60, run.ledger.acked_count(), last.get("rss_mb"), last.get("anon_mb"),
                     last.get("fds"), last.get("load1"))
        time.sleep(0.2)
    return kill


# --------------------------------------------------------------------------- verification


def qido_all(port: int) -> tuple[set[str], list[str]]:
    """Every SOP Instance UID QIDO-RS answers (paged), and any problem met."""
    uids: set[str] = set()
    problems = []
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=120)
    offset, page = 0, 1000
    try:
        while True:
            conn.request("GET", f"{DICOMWEB}/instances?limit={page}&offset={offset}",
                         headers={"Accept": "application/dicom+json"})
            rsp = conn.getresponse()
            body = rsp.read()
            if rsp.status == 204:
                break
            if rsp.status != 200:
                problems.append(f"QIDO /instances offset {offset}: HTTP {rsp.status}")
                break
            found = json.loads(body)
            for obj in found:
                uids.add(((obj.get("00080018") or {}).get("Value") or [""])[0])
            if len(found) < page:
                break
            offset += page
    finally:
        conn.close()
    return uids, problems


def http_json(port: int, path: str) -> dict | None:
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        conn.request("GET", path)
        rsp = conn.getresponse()
        body = rsp.read()
        conn.close()
        return json.loads(body) if rsp.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None


def read_index(index_dir: Path) -> dict:
    """Rows of the index after the clean stop (read-only)."""
    db = index_dir / "pacs-appliance.sqlite"
    out: dict = {"wal_left": None}
    wal = db.with_name(db.name + "-wal")
    out["wal_left"] = wal.stat().st_size if wal.exists() else 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT sop_instance_uid, file_path, file_size FROM instances").fetchall()
        out["uids"] = {r[0] for r in rows}
        out["files"] = {r[1]: r[2] for r in rows}
        out["mpps"] = dict(conn.execute("SELECT status, count(*) FROM mpps GROUP BY status").fetchall())
        out["mpps_linked"] = conn.execute(
            "SELECT count(*) FROM mpps WHERE worklist_item IS NOT NULL").fetchone()[0]
        out["integrity"] = conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()
    return out


def storage_files(storage: Path) -> tuple[dict[str, int], list[str]]:
    """Stored files (``ab/<hex>.dcm``, relative path -> size) and anything left in .incoming."""
    files = {}
    for sub in storage.iterdir():
        if sub.is_dir() and re.fullmatch(r"[0-9a-f]{2}", sub.name):
            for f in sub.iterdir():
                if f.suffix == ".dcm":
                    files[f"{sub.name}/{f.name}"] = f.stat().st_size
    incoming = storage / ".incoming"
    left = sorted(p.name for p in incoming.iterdir()) if incoming.is_dir() else []
    return files, left


def scan_log(path: Path) -> dict:
    """ERROR/CRITICAL lines with their tracebacks, stray stderr tracebacks, and counts."""
    line_re = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ([\w.]+): (.*)$")
    errors: list[str] = []
    warnings: Counter = Counter()
    levels: Counter = Counter()
    counts: Counter = Counter()
    current: list[str] | None = None
    stray: list[str] = []
    for raw in path.read_text(errors="replace").splitlines():
        m = line_re.match(raw)
        if m is None:
            if current is not None:
                current.append(raw)
            elif raw.strip():
                stray.append(raw)       # not a log record: a thread's traceback, a print
            continue
        if current is not None:
            errors.append("\n".join(current))
            current = None
        level, name, message = m.groups()
        levels[level] += 1
        if level in ("ERROR", "CRITICAL"):
            current = [raw]
        elif level == "WARNING":
            warnings[f"{name}: " + re.sub(r"\d+(\.\d+)*", "#", message)[:140]] += 1
        if message.startswith("SIGHUP: users"):
            counts["sighup reloads"] += 1
        elif message.startswith("ready in"):
            counts["starts"] += 1
        elif re.match(r"backup \(scheduled\) backup-", message):
            counts["scheduled backups"] += 1
        elif message.startswith("backup ("):
            counts["backup other"] += 1
    if current is not None:
        errors.append("\n".join(current))
    return {"errors": errors, "stray": stray[:200], "stray_lines": len(stray),
            "levels": dict(levels), "counts": dict(counts),
            "warnings": warnings.most_common(15)}


def verify_last_backup(daemon: Daemon) -> dict:
    """``pacs-appliance backup verify`` (the restore drill) on the newest backup, daemon
    stopped."""
    cmd = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "appliance", "backup", "verify",
           "--config", str(daemon.config_path)]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "output": "timed out after 300 s"}
    return {"returncode": proc.returncode,
            "output": (proc.stdout + proc.stderr).strip().splitlines()[-6:]}


def backups_made(index_dir: Path) -> list[dict]:
    out = []
    folder = index_dir / "backups"
    if not folder.is_dir():
        return out
    for b in sorted(folder.glob("backup-*")):
        try:
            manifest = json.loads((b / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        out.append({"name": b.name, "counts": manifest.get("counts")})
    return out


# --------------------------------------------------------------------------- report


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (seconds), per 10 minutes; None if undefined."""
    if len(xs) < 3 or max(xs) == min(xs):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx * 600, 2)


def trend(samples: list[dict], key: str, starts: list[dict], warmup: float) -> list[dict]:
    """Per daemon process: first, after warm-up, max (after warm-up), last, and the slope
    after warm-up (per 10 min, least squares) of every sample, of each minute's lowest
    and of each minute's highest.

    The daemon gives freed heap back every 30 s (appliance/ops/memory.py), so its RSS is a
    saw-tooth between trims; a slope of all samples moves with where the last ones fall
    on a tooth. Each minute's lowest (just after a trim) follows the memory that stays,
    its highest the peaks: a growth is real when the floor rises."""
    out = []
    for i, start in enumerate(starts):
        rows = [s for s in samples if s.get("pid") == start["pid"] and key in s]
        if not rows:
            continue
        begin = start["at"]
        warm = [s for s in rows if s["t"] >= begin + warmup] or rows[-1:]
        xs = [s["t"] for s in warm]
        ys = [s[key] for s in warm]
        minutes: dict[int, list[dict]] = defaultdict(list)
        for s in warm:
            minutes[int((s["t"] - warm[0]["t"]) // 60)].append(s)
        whole = [m for m in minutes.values() if len(m) >= 3]   # a minute's end may be short
        floor = [min(m, key=lambda s: s[key]) for m in whole]
        peak = [max(m, key=lambda s: s[key]) for m in whole]
        out.append({"process": i + 1, "pid": start["pid"], "first": rows[0][key],
                    "after_warmup": warm[0][key], "after_warmup_t": warm[0]["t"],
                    "max": max(ys), "last": rows[-1][key], "last_t": rows[-1]["t"],
                    "slope_per_10min": _slope(xs, ys),
                    "floor_slope_per_10min": _slope([s["t"] for s in floor],
                                                    [s[key] for s in floor]),
                    "peak_slope_per_10min": _slope([s["t"] for s in peak],
                                                   [s[key] for s in peak])})
    return out


def latency_table(stats: Stats) -> list[dict]:
    rows = []
    ops = sorted(set(stats.latencies) | set(stats.errors) | set(stats.outage_errors),
                 key=lambda op: (SERVICES.index(service_of(op)) if service_of(op) in SERVICES
                                 else 99, op))
    for op in ops:
        values = stats.latencies.get(op, [])
        rows.append({
            "op": op, "service": service_of(op), "n": len(values),
            "p50_ms": None if not values else round(pct(values, 50) * 1000, 1),
            "p95_ms": None if not values else round(pct(values, 95) * 1000, 1),
            "max_ms": None if not values else round(max(values) * 1000, 1),
            "errors": sum(stats.errors.get(op, Counter()).values()),
            "outage_errors": sum(stats.outage_errors.get(op, Counter()).values()),
        })
    return rows


def service_table(stats: Stats) -> list[dict]:
    rows = []
    for svc in SERVICES:
        values = [v for op, vs in stats.latencies.items() if service_of(op) == svc
                  and op != "C-STORE cine" for v in vs]
        errors = sum(sum(c.values()) for op, c in stats.errors.items() if service_of(op) == svc)
        outage = sum(sum(c.values()) for op, c in stats.outage_errors.items()
                     if service_of(op) == svc)
        rows.append({"service": svc, "n": len(values),
                     "p50_ms": None if not values else round(pct(values, 50) * 1000, 1),
                     "p95_ms": None if not values else round(pct(values, 95) * 1000, 1),
                     "errors": errors, "outage_errors": outage})
    return rows


def fmt(v) -> str:
    return "-" if v is None else str(v)


def render(result: dict) -> str:
    lines = []
    v = result["verification"]
    lines.append(f"Soak: {result['minutes']} min, seed {result['seed']}, "
                 f"{result['started']} ({result['machine']})")
    lines.append("")
    lines.append("Instances")
    lines.append(f"  acknowledged (Success)      {v['acknowledged']}")
    lines.append(f"  present, QIDO-RS            {v['qido']}")
    lines.append(f"  present, /statistics        {fmt(v['statistics'])}")
    lines.append(f"  present, index (stopped)    {v['index']}")
    lines.append(f"  stored files                {v['files']}")
    lines.append(f"  acked but not in QIDO       {len(v['acked_not_qido'])}")
    lines.append(f"  acked but not in index      {len(v['acked_not_index'])}")
    lines.append(f"  present but never acked     {len(v['index_not_acked'])}")
    lines.append(f"  index rows without file     {len(v['rows_without_file'])}")
    lines.append(f"  files without index row     {len(v['files_without_row'])}")
    lines.append(f"  left in .incoming           {len(v['incoming_left'])}")
    lines.append(f"  C-STORE attempts / resends  {v['attempts']} / {v['resends']}")
    lines.append(f"  still queued at the end     {v['unsent']} (gave up: {v['gave_up']})")
    lines.append(f"  => {'EQUAL' if v['equal'] else 'NOT EQUAL'}")
    lines.append(f"  index after SIGTERM: quick_check {v['index_integrity']}, WAL left "
                 f"{v['wal_bytes_after_stop']} bytes, stop took {fmt(v['stop_seconds'])} s")
    k = result["kill"]
    if k:
        lines.append("")
        lines.append(f"SIGKILL at +{k['at']} s ({k['how']}), {len(k['inflight'])} C-STOREs in "
                     f"flight, all acknowledged later: {k['inflight_acked_later']}; "
                     f"restart C-ECHO {k['restart_ready_seconds']} s, outage {k['outage_seconds']} s")
    lines.append("")
    e = result["events"]
    lines.append(f"Exams {e['exams']} ({e['counters'].get('walk-in exams', 0)} walk-in); MPPS sent "
                 f"{e['mpps']}; in the index {e['mpps_in_index']}, "
                 f"{e['mpps_linked_to_worklist']} linked to a worklist item")
    lines.append(f"Worklist churn {e['worklist']}; items archived by MPPS {e['worklist_archived']}")
    lines.append(f"SIGHUP sent {e['sighup_sent']}, reloads logged {e['sighup_reloaded']}; "
                 f"scheduled backups logged {e['backups_scheduled_ok']}, kept "
                 f"{[(b['name'], (b['counts'] or {}).get('instances')) for b in e['backups_kept']]}")
    if e["backup_verify"] is not None:
        lines.append(f"backup verify (newest, daemon stopped): exit {e['backup_verify']['returncode']}: "
                     f"{' | '.join(e['backup_verify']['output'])}")
    lines.append(f"Daemon starts {[(s['pid'], s['at'], s['ready_seconds']) for s in e['daemon_starts']]}"
                 f" (pid, at s, to C-ECHO s); died by itself: {e['unexpected_exits'] or 'never'}")
    lines.append("")
    for key, unit in (("rss_mb", "RSS MB"), ("anon_mb", "RSS anonymous MB"),
                      ("file_mb", "RSS file pages MB"), ("fds", "open fds"),
                      ("threads", "threads")):
        lines.append(f"{unit} (warm-up {result['warmup_seconds']:.0f} s)")
        lines.append(f"  {'process':<8} {'first':>8} {'warm':>8} {'max':>8} {'last':>8} "
                     f"{'per 10min':>10} {'floor':>7} {'peaks':>7}")
        for row in result["trend"][key]:
            lines.append(f"  {row['process']:<8} {row['first']:>8} {row['after_warmup']:>8} "
                         f"{row['max']:>8} {row['last']:>8} {fmt(row['slope_per_10min']):>10} "
                         f"{fmt(row.get('floor_slope_per_10min')):>7} "
                         f"{fmt(row.get('peak_slope_per_10min')):>7}")
    lines.append("")
    lines.append("Samples (every 60 s of the 10 s ones): t, pid, RSS MB (anonymous, file), fds, "
                 "threads, CPU %, load")
    shown = [s for s in result["samples"] if int(s["t"]) % 60 < SAMPLE_EVERY] or result["samples"]
    for s in shown:
        lines.append(f"  {s['t']:>7.0f} {fmt(s.get('pid')):>8} {fmt(s.get('rss_mb')):>7} "
                     f"({fmt(s.get('anon_mb'))}, {fmt(s.get('file_mb'))}) "
                     f"{fmt(s.get('fds')):>5} {fmt(s.get('threads')):>4} "
                     f"{fmt(s.get('cpu_pct')):>6} {s['load1']:>6} acked {s['acked']}")
    lines.append("")
    lines.append("Per service (errors outside the SIGKILL outage; outage errors apart)")
    lines.append(f"  {'service':<12} {'n':>7} {'p50 ms':>9} {'p95 ms':>9} {'errors':>7} {'outage':>7}")
    for r in result["services"]:
        lines.append(f"  {r['service']:<12} {r['n']:>7} {fmt(r['p50_ms']):>9} {fmt(r['p95_ms']):>9} "
                     f"{r['errors']:>7} {r['outage_errors']:>7}")
    lines.append("")
    lines.append(f"  {'operation':<22} {'n':>7} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} "
                 f"{'errors':>7} {'outage':>7}")
    for r in result["operations"]:
        lines.append(f"  {r['op']:<22} {r['n']:>7} {fmt(r['p50_ms']):>9} {fmt(r['p95_ms']):>9} "
                     f"{fmt(r['max_ms']):>9} {r['errors']:>7} {r['outage_errors']:>7}")
    if result["error_samples"]:
        lines.append("")
        lines.append("Error samples")
        for op, samples in result["error_samples"].items():
            for s in samples[:5]:
                lines.append(f"  {op}: {s}")
    lg = result["daemon_log"]
    lines.append("")
    lines.append(f"Daemon log: {lg['levels']}, {lg['counts']}")
    if lg["warnings"]:
        lines.append("  WARNING lines (by message, numbers as #):")
        for message, n in lg["warnings"]:
            lines.append(f"  {n:>6} {message}")
    lines.append(f"  ERROR lines: {len(lg['errors'])}")
    for e in lg["errors"]:
        for i, line in enumerate(e.splitlines()[:25]):
            lines.append(("  " if i == 0 else "      ") + line)
    if lg["stray_lines"]:
        lines.append(f"  lines that are not log records (tracebacks?): {lg['stray_lines']}")
        for line in lg["stray"][:30]:
            lines.append("      " + line)
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30, help="length of the day (default 30)")
    p.add_argument("--seed", type=int, default=None, help="seed of every random choice")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON report (default tests/bench/results/soak-<time>.json)")
    p.add_argument("--backup-minutes", type=float, default=5,
                   help="Backups.IntervalHours in minutes (default 5)")
    p.add_argument("--image-seconds", type=float, default=4,
                   help="mean time between images of a scanner sending as it acquires")
    p.add_argument("--burst-share", type=float, default=0.25,
                   help="share of exams sent at once at the end (30-50 images)")
    p.add_argument("--cine-share", type=float, default=0.3, help="share of exams with a cine")
    p.add_argument("--readers", type=int, default=2, help="EMR reader threads")
    p.add_argument("--restart-delay", type=float, default=2.0,
                   help="seconds between the SIGKILL and the restart")
    p.add_argument("--drain-seconds", type=float, default=180,
                   help="at most this long for the scanners to deliver their queues")
    p.add_argument("--no-kill", action="store_true", help="no SIGKILL (for comparison)")
    p.add_argument("--services", default=",".join(LOADS),
                   help="the load's parts to run, comma-separated, to find which one makes "
                        "memory grow: store (the scanners, with their MWL queries and MPPS), "
                        "worklist (the churn; without store, MWL C-FINDs that take nothing), "
                        "readers, backups, sighup (default: all)")
    p.add_argument("--preload", type=int, default=0,
                   help="images sent in one burst before the day (for readers without store)")
    p.add_argument("--no-unit-env", action="store_true",
                   help="run the daemon without the systemd unit's Environment= lines "
                        "(MALLOC_ARENA_MAX=2)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set in the daemon's environment after the unit's lines (repeatable; "
                        "e.g. an allocator setting to compare)")
    p.add_argument("--probe", action="store_true",
                   help="load tests/bench/memprobe into the daemon: its heap's parts (glibc "
                        "arenas, SQLite, Python objects) every 15 s into <out>.probe.jsonl; "
                        "PACS_MEMPROBE_TRACE=1 in the environment adds tracemalloc")
    p.add_argument("--keep", action="store_true", help="keep the data folder")
    p.add_argument("--workdir", type=Path, default=None,
                   help="parent of the run's data folder (default tests/bench/results)")
    args = p.parse_args(argv)
    args.services = {s.strip() for s in args.services.split(",") if s.strip()}
    if args.services - set(LOADS):
        p.error(f"--services: unknown {sorted(args.services - set(LOADS))}; "
                f"known: {','.join(LOADS)}")
    if "backups" not in args.services:
        args.backup_minutes = 0
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(10**6)
    return args


UNIT_FILE = REPO_ROOT / "systemd" / "pacs-appliance.service"
LOADS = ("store", "worklist", "readers", "backups", "sighup")
MEMPROBE = Path(__file__).resolve().parent / "memprobe"


def unit_environment(unit: Path = UNIT_FILE) -> dict[str, str]:
    """The ``Environment=KEY=VALUE`` lines of the daemon's systemd unit: the soak runs the
    daemon as the unit does (its allocator settings change what RSS does)."""
    env = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment="):].strip().strip('"').partition("=")
            env[key] = value
    return env


class DroppedResponses(logging.Handler):
    """Counts pynetdicom's "Received unexpected ... service message" in the harness: its
    requestor reactor took a response off the queue (appliance.dicom.requestor), which
    the scanners then miss. pause_reactor() should make this never happen."""

    def __init__(self, stats: "Stats") -> None:
        super().__init__(logging.WARNING)
        self.stats = stats

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Received unexpected"):
            self.stats.error("harness", "pynetdicom dropped a response", message)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s soak %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS_DIR / f"soak-{stamp}.json"
    parent = args.workdir or RESULTS_DIR
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"soak-{stamp}-", dir=parent))
    log.info("seed %d, %.1f minutes, data in %s", args.seed, args.minutes, workdir)
    rng = random.Random(f"{args.seed}-conductor")
    env = base_env(tcp_nodelay=False)
    unit_env = {} if args.no_unit_env else unit_environment()
    env.update(unit_env)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
        unit_env = {**unit_env, key: value}
    log.info("daemon environment (the systemd unit's, then --env): %s", unit_env or "none")
    if args.probe:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(MEMPROBE), env.get("PYTHONPATH")) if p)
        env["PACS_MEMPROBE"] = str(out.with_suffix(".probe.jsonl"))
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("memory probe: %s", env["PACS_MEMPROBE"])
    daemon = Daemon(workdir, args.backup_minutes, env)
    run = Run(args, daemon, now())
    requestor_log = logging.getLogger("pynetdicom.association")
    requestor_log.setLevel(logging.WARNING)   # its parent is silenced: this one is counted
    requestor_log.propagate = False
    requestor_log.addHandler(DroppedResponses(run.stats))
    interrupted = False
    try:
        prepare_data(run)
        run.t0 = run.stats.t0 = now()
        ready = daemon.start(run.t0)
        log.info("daemon pid %d ready in %.2f s (DICOM %d, HTTP %d)", daemon.pid, ready,
                 daemon.dicom_port, daemon.http_port)
        if args.preload:
            preload(run, args.preload)
        sampler = Sampler(run)
        churn = WorklistChurn(run)
        sampler.start()
        if "worklist" in args.services:
            churn.start()
            time.sleep(1.0)   # the first worklist items are written
        if "store" in args.services:
            scanners = [Scanner(n, run) for n in range(len(STATIONS))]
        elif "worklist" in args.services:
            scanners = [WorklistQuerier(n, run) for n in range(len(STATIONS))]
        else:
            scanners = []
        readers = [Reader(n, run) for n in range(args.readers if "readers" in args.services
                                                 else 0)]
        for actor in (*scanners, *readers):
            actor.start()
        kill = conduct(run, rng, sampler)
        log.info("end of the day: scanners finish their exams and drain their queues")
        run.stop_load.set()
        if churn.ident is not None:
            churn.join(timeout=30)
        for actor in readers:
            actor.join(timeout=90)
        for actor in scanners:
            actor.join(timeout=args.drain_seconds + 120)
        sampler.stop.set()
        sampler.join(timeout=15)
        sampler.sample()
        result = verify_and_report(run, sampler, scanners, churn, kill, stamp)
    except KeyboardInterrupt:
        interrupted = True
        run.abort.set()
        run.stop_load.set()
        log.error("interrupted")
        result = None
    except Exception:  # noqa: BLE001 - e.g. the daemon does not come back after the kill
        log.exception("soak failed; daemon log %s (kept with the data in %s)",
                      daemon.log_path, workdir)
        args.keep = True
        result = None
    finally:
        run.abort.set()
        daemon.stop()
        kill_all()
    if result is None:
        if interrupted:
            return 130
        return 1
    log_copy = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(daemon.log_path, log_copy)
    result["daemon_log_copy"] = str(log_copy)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(render(result))
    print(f"\nresults: {out}\ndaemon log: {log_copy}")
    if args.keep:
        print(f"data kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result["verification"]["equal"] else 1


def verify_and_report(run: Run, sampler: Sampler, scanners: list[Scanner],
                      churn: WorklistChurn, kill: dict, stamp: str) -> dict:
    daemon = run.daemon
    ledger = run.ledger
    acked = set(ledger.acked)
    if not daemon.ready.is_set():
        raise RuntimeError("the daemon is not running at the end of the day")
    qido, qido_problems = qido_all(daemon.http_port)
    statistics_json = http_json(daemon.http_port, "/statistics") or {}
    stop_seconds = daemon.stop()
    index = read_index(daemon.index)
    files, incoming_left = storage_files(daemon.storage)
    log_scan = scan_log(daemon.log_path)
    index_uids = index["uids"]
    rows_without_file = sorted(p for p in index["files"] if p not in files)
    files_without_row = sorted(p for p in files if p not in index["files"])
    unsent = sum(len(s.outbox) for s in scanners)
    attempts = sum(ledger.attempts.values())
    verification = {
        "acknowledged": len(acked), "qido": len(qido),
        "statistics": statistics_json.get("CountInstances"),
        "index": len(index_uids), "files": len(files),
        "acked_not_qido": sorted(acked - qido)[:50],
        "qido_not_acked": sorted(qido - acked)[:50],
        "acked_not_index": sorted(acked - index_uids)[:50],
        "index_not_acked": sorted(index_uids - acked)[:50],
        "rows_without_file": rows_without_file[:50],
        "files_without_row": files_without_row[:50],
        "incoming_left": incoming_left[:50],
        "qido_problems": qido_problems,
        "attempts": attempts, "resends": attempts - len(ledger.attempts),
        "statuses": dict(ledger.statuses),
        "unsent": unsent, "gave_up": len(ledger.gave_up),
        "index_integrity": index["integrity"], "wal_bytes_after_stop": index["wal_left"],
        "stop_seconds": None if stop_seconds is None else round(stop_seconds, 2),
    }
    verification["equal"] = (len(acked) == len(qido) == len(index_uids)
                             and acked == qido == index_uids and not rows_without_file
                             and unsent == 0 and not ledger.gave_up and not qido_problems)
    if kill:
        kill["inflight_acked_later"] = all(uid in acked for uid in kill["inflight"])
    warmup = min(300.0, 0.2 * run.args.minutes * 60)
    samples = sampler.samples
    events = {
        "exams": sum(s.exams for s in scanners),
        "mpps": dict(run.mpps), "mpps_in_index": index["mpps"],
        "mpps_linked_to_worklist": index["mpps_linked"],
        "worklist": dict(churn.done),
        "worklist_archived": len(list((daemon.worklists / "archive").glob("*.wl")))
        if (daemon.worklists / "archive").is_dir() else 0,
        "sighup_sent": daemon.hups, "sighup_reloaded": log_scan["counts"].get("sighup reloads", 0),
        "backups_scheduled_ok": log_scan["counts"].get("scheduled backups", 0),
        "backups_kept": backups_made(daemon.index),
        "backup_verify": verify_last_backup(daemon) if backups_made(daemon.index) else None,
        "daemon_starts": daemon.starts, "unexpected_exits": run.unexpected_exits,
        "counters": dict(run.stats.counters),
    }
    return {
        "started": stamp, "minutes": run.args.minutes, "seed": run.args.seed,
        "args": {k: str(v) for k, v in vars(run.args).items()},
        "machine": f"{platform.node()}, {os.cpu_count()} cpus, {platform.python_version()}",
        "daemon_env": {k: v for k, v in run.daemon.env.items() if k.startswith("MALLOC")},
        "verification": verification, "kill": kill, "events": events,
        "warmup_seconds": warmup,
        "trend": {key: trend(samples, key, daemon.starts, warmup)
                  for key in ("rss_mb", "anon_mb", "file_mb", "fds", "threads")},
        "samples": samples,
        "services": service_table(run.stats), "operations": latency_table(run.stats),
        "errors": {op: dict(c) for op, c in run.stats.errors.items()},
        "outage_errors": {op: dict(c) for op, c in run.stats.outage_errors.items()},
        "error_samples": dict(run.stats.error_samples),
        "daemon_log": log_scan,
    }


if __name__ == "__main__":
    sys.exit(main())
