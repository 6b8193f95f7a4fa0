"""Outbound benchmark (issue 13): pacs-appliance's send queue vs Orthanc's jobs.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.outbound_bench [--repeat N] [--soak N] [--commitments N]
                                                   [--only forward,commitment,soak]

- forward: the 200 x 0.92 MB US images of tests/bench/datagen in one study are first
  stored in each server (pynetdicom, one association), then sent on demand to DCMTK's
  ``storescp --ignore`` (a sink that answers Success without writing): Orthanc by
  ``POST /modalities/sink/store`` with ``"Synchronous": true`` (the answer comes once the
  C-STOREs are done), the appliance by the same request (its queue's task, answered when
  delivered). Seconds from the POST to the answer, as instances/s; with and without
  TCP_NODELAY=1 in the environment of the
  servers and of storescp (DCMTK, Orthanc's network layer included, only disables Nagle
  when it is set). Servers alternate, order reversed every other repetition.
- commitment: a pynetdicom "scanner" sends N-ACTION Request Storage Commitment for the
  200 stored instances and listens for the N-EVENT-REPORT on its own port (declared in
  DicomModalities); seconds from sending the N-ACTION to the report received, per request,
  p50 and p95 over ``--commitments`` requests, both servers (Orthanc does the same SCP,
  without checksums).
- soak (appliance only: Orthanc's jobs do not survive a SIGKILL): a forwarding rule to a
  storescp that writes what it gets; the 200 images stored while it is down, then it comes
  up and the daemon is SIGKILLed ``--soak`` times at random moments of the forwarding
  and restarted; lost = instances never received; duplicated = C-STOREs received beyond
  one per instance (counted in storescp's log).

Prints a table and writes all samples to tests/bench/results/outbound-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import requests

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import datagen  # noqa: E402
from tests.bench.servers import (  # noqa: E402
    CALLED_AET, LOOPBACK, REPO_ROOT, ServerError, base_env, echo_once, forget, free_port,
    kill_all, orthanc_style_config, spawn, tail,
)

log = logging.getLogger("outbound-bench")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SINK_AET = "SINK"
SCANNER_AET = "SCANNER"
PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")


class Proc:
    """One spawned server (Orthanc or the appliance) with its HTTP port."""

    def __init__(self, kind: str, root: Path, env: dict[str, str], extra: dict) -> None:
        self.kind = kind
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
        self.dicom_port, self.http_port = free_port(), free_port()
        config = orthanc_style_config(self.workdir, self.dicom_port, self.http_port) | extra
        path = self.workdir / "config.json"
        path.write_text(json.dumps(config, indent=2))
        self.config_path = path
        self.env = env
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        cmd = (["/usr/sbin/Orthanc", str(self.config_path)] if self.kind == "orthanc" else
               [PYTHON, "-m", "appliance", "serve", "--config", str(self.config_path)])
        self.proc = spawn(cmd, self.log_path, self.env, self.workdir if self.kind == "orthanc" else REPO_ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.kind} exited: {tail(self.log_path)}")
            if echo_once(self.dicom_port, 2.0):
                return
            time.sleep(0.02)
        raise ServerError(f"{self.kind} not ready: {tail(self.log_path)}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            forget(self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            forget(self.proc)

    @property
    def http(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"


def store_all(port: int, files: list[Path], attempts: int = 3) -> None:
    """Store ``files`` with pynetdicom (byte for byte), one association, a new one
    for the rest when a store gets no answer (it happens on a loaded machine)."""
    from pynetdicom import AE, _config
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BENCH")
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 300
    ae.add_requested_context(datagen.US_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    left = list(files)
    for _ in range(attempts):
        assoc = ae.associate(LOOPBACK, port, ae_title=CALLED_AET)
        assert assoc.is_established, "store association"
        try:
            while left:
                rsp = assoc.send_c_store(left[0], msg_id=len(files) - len(left) + 1)
                if "Status" not in rsp:
                    break
                assert rsp.Status == 0, f"store status 0x{rsp.Status:04X}"
                left.pop(0)
        finally:
            if assoc.is_established:
                assoc.release()
        if not left:
            return
    raise ServerError(f"{len(left)} images not stored")


def sink(env: dict[str, str], root: Path, ignore: bool = True) -> tuple[subprocess.Popen, int, Path]:
    """DCMTK storescp: ``--ignore`` (answers without writing) or writing into a folder."""
    port = free_port()
    out = Path(tempfile.mkdtemp(prefix="sink-", dir=root))
    cmd = ["storescp", "-v", "-aet", SINK_AET, str(port)]
    cmd[1:1] = ["--ignore"] if ignore else ["-od", str(out)]
    log_path = out.with_suffix(".log")
    proc = spawn(cmd, log_path, env)
    deadline = time.monotonic() + 10
    import socket
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOOPBACK, port), 0.2).close()
            return proc, port, out
        except OSError:
            time.sleep(0.02)
    raise ServerError("storescp not listening")


def forward_once(kind: str, files: list[Path], study_uid: str, nodelay: bool, root: Path) -> float:
    """Seconds to send the study to storescp --ignore."""
    env = base_env(nodelay)
    sink_proc, sink_port, _ = sink(env, root)
    server = Proc(kind, root, env, {"DicomModalities": {"sink": [SINK_AET, LOOPBACK, sink_port]}})
    try:
        store_all(server.dicom_port, files)
        # Both the same request, answered once the C-STOREs are done (Orthanc's
        # default; the appliance's on "Synchronous": true).
        resource = (requests.get(f"{server.http}/studies", timeout=30).json()[0]
                    if kind == "orthanc" else study_uid)
        t0 = time.perf_counter()
        r = requests.post(f"{server.http}/modalities/sink/store", timeout=600,
                          json={"Resources": [resource], "Synchronous": True})
        r.raise_for_status()
        seconds = time.perf_counter() - t0
        if kind == "appliance" and r.json().get("Sent") != len(files):
            raise ServerError(f"appliance job: {r.json()}")
        return seconds
    finally:
        server.stop()
        sink_proc.kill()
        sink_proc.wait()
        forget(sink_proc)
        shutil.rmtree(server.workdir, ignore_errors=True)


class Scanner:
    """A pynetdicom storage commitment SCU that listens for the reports."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import StorageCommitmentPushModel
        self.port = free_port()
        self.reports: dict[str, float] = {}
        self._cond = threading.Condition()
        ae = AE(ae_title=SCANNER_AET)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)

        def on_report(event):
            with self._cond:
                self.reports[str(event.event_information.TransactionUID)] = time.perf_counter()
                self._cond.notify_all()
            return 0x0000, None
        self._server = ae.start_server((LOOPBACK, self.port), block=False,
                                       evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])

    def request(self, port: int, references: list[tuple[str, str]]) -> float:
        """Seconds from the N-ACTION to its report."""
        from pydicom.dataset import Dataset
        from pydicom.uid import generate_uid
        from pynetdicom import AE
        from pynetdicom.sop_class import StorageCommitmentPushModel
        ds = Dataset()
        ds.TransactionUID = generate_uid()
        seq = []
        for sop_class, uid in references:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
            seq.append(item)
        ds.ReferencedSOPSequence = seq
        ae = AE(ae_title=SCANNER_AET)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(LOOPBACK, port, ae_title=CALLED_AET)
        assert assoc.is_established
        t0 = time.perf_counter()
        try:
            status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            assert status.Status == 0, f"N-ACTION status 0x{status.Status:04X}"
        finally:
            assoc.release()
        with self._cond:
            assert self._cond.wait_for(lambda: ds.TransactionUID in self.reports, 60), "no report"
            return self.reports[ds.TransactionUID] - t0

    def stop(self) -> None:
        self._server.shutdown()


def commitment_run(kind: str, files: list[Path], count: int, root: Path) -> list[float]:
    """``count`` commitment requests of all the files; seconds to each report."""
    from pydicom import dcmread
    refs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
            for ds in (dcmread(f, stop_before_pixels=True) for f in files)]
    scanner = Scanner()
    modality = {"AET": SCANNER_AET, "Host": LOOPBACK, "Port": scanner.port}
    server = Proc(kind, root, base_env(True), {"DicomModalities": {"scanner": modality}})
    try:
        store_all(server.dicom_port, files)
        return [scanner.request(server.dicom_port, refs) for _ in range(count)]
    finally:
        server.stop()
        scanner.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def soak(files: list[Path], kills: int, root: Path) -> dict:
    """The appliance forwarding to a writing storescp, SIGKILLed ``kills`` times."""
    env = base_env(True)
    port = free_port()
    out = Path(tempfile.mkdtemp(prefix="soak-sink-", dir=root))
    server = Proc("appliance", root, env, {
        "DicomModalities": {"sink": [SINK_AET, LOOPBACK, port]},
        "Forwarding": {"Rules": [{"Destination": "sink"}], "MaxRetrySeconds": 1}})
    store_all(server.dicom_port, files)
    log_path = out.with_suffix(".log")
    sink_proc = spawn(["storescp", "-v", "-aet", SINK_AET, "-od", str(out), str(port)], log_path, env)
    rng = random.Random(2026)
    t0 = time.perf_counter()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, 1.5))
            server.kill()
            server.start()
        deadline = time.monotonic() + 300
        wanted = len(files)
        while time.monotonic() < deadline and len(list(out.iterdir())) < wanted:
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        time.sleep(2)  # anything still in flight
    finally:
        server.stop()
        sink_proc.terminate()
        sink_proc.wait()
        forget(sink_proc)
    received = len(list(out.iterdir()))
    stores = len(re.findall(r"Received Store Request", log_path.read_text(errors="replace")))
    shutil.rmtree(server.workdir, ignore_errors=True)
    return {"kills": kills, "instances": len(files), "received": received,
            "lost": len(files) - received, "c_store_requests": stores,
            "duplicated": max(0, stores - received), "seconds": elapsed}


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv: list[str] | None = None) -> int:
    """Run the outbound benchmark; 0 when it ran."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--commitments", type=int, default=10)
    parser.add_argument("--soak", type=int, default=20, help="SIGKILLs in the soak")
    parser.add_argument("--only", default="forward,commitment,soak")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    parts = set(args.only.split(","))
    data = datagen.ensure_data()
    files = data.singles
    from pydicom import dcmread
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    root = Path(tempfile.mkdtemp(prefix="outbound-bench-"))
    results: dict = {"time": datetime.now().isoformat(), "instances": len(files),
                     "bytes": data.single_bytes, "forward": {}, "commitment": {}}
    try:
        if "forward" in parts:
            for nodelay in (False, True):
                key = "nodelay" if nodelay else "default"
                samples: dict[str, list[float]] = {"orthanc": [], "appliance": []}
                for r in range(args.repeat):
                    order = ("orthanc", "appliance") if r % 2 == 0 else ("appliance", "orthanc")
                    for kind in order:
                        seconds = forward_once(kind, files, study_uid, nodelay, root)
                        samples[kind].append(seconds)
                        log.info("forward %s %s: %.2f s (%.0f inst/s)", key, kind, seconds,
                                 len(files) / seconds)
                results["forward"][key] = samples
        if "commitment" in parts:
            for kind in ("orthanc", "appliance"):
                lat = commitment_run(kind, files, args.commitments, root)
                results["commitment"][kind] = lat
                log.info("commitment %s: p50 %.3f s, p95 %.3f s", kind, _p(lat, .5), _p(lat, .95))
        if "soak" in parts:
            results["soak"] = soak(files, args.soak, root)
            log.info("soak: %s", results["soak"])
    finally:
        kill_all()
        shutil.rmtree(root, ignore_errors=True)
    print("\n== outbound benchmark ==")
    for key, samples in results["forward"].items():
        o, a = statistics.median(samples["orthanc"]), statistics.median(samples["appliance"])
        n = len(files)
        print(f"forward 200 x 0.92 MB ({key:7}): Orthanc {n / o:6.1f} inst/s, appliance "
              f"{n / a:6.1f} inst/s, ratio {o / a:.2f}x (target >= 150 inst/s and >= Orthanc nodelay)")
    for kind, lat in results["commitment"].items():
        print(f"commitment report, 200 refs, {kind:9}: p50 {_p(lat, .5):.3f} s, p95 {_p(lat, .95):.3f} s"
              " (target p95 < 2 s)")
    if "soak" in results:
        s = results["soak"]
        print(f"soak: {s['kills']} SIGKILLs, {s['lost']} lost, {s['duplicated']} duplicated "
              f"C-STOREs of {s['instances']}, {s['seconds']:.1f} s (target 0 lost)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"outbound-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
