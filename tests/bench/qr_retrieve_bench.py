"""C-MOVE and C-GET: pacs-appliance beside Debian's Orthanc, in the same run (issue 12).

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.qr_retrieve_bench [--repeat N] [--keep]

For each server (Orthanc, then pacs-appliance; the order flips on each repetition) and
each network setting (Nagle on, then TCP_NODELAY=1 for the servers and the DCMTK tools):
a fresh server with the benchmark data (tests/bench/datagen.py: 200 single-frame
0.92 MB US images in one series, and the 150-frame cine in another series of the same
study) loaded by storescu, then

* C-MOVE of the 200-image series to a DCMTK ``storescp --ignore`` (movescu -S, SERIES
  level): instances per second, wall clock of movescu;
* C-GET of the same series (getscu -S --ignore): instances per second;
* with TCP_NODELAY=1 only (with Nagle on, Orthanc's 10 C-GETs would take minutes):
  RSS growth of the server over 10 repeated C-GETs (RSS after the 10th minus RSS before
  the first, the first load done), and the peak RSS of the server while it moves the
  cine (C-MOVE at SERIES level).

Medians over the repetitions are printed with the ratio appliance/Orthanc and the
issue's targets; every sample goes to tests/bench/results/qr_retrieve-<time>.json.
A benchmark, not a test: never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402
import pydicom  # noqa: E402

from tests.bench.datagen import ensure_data  # noqa: E402
from tests.bench.servers import (  # noqa: E402
    CALLED_AET, CALLING_AET, LOOPBACK, ApplianceServer, OrthancServer, RssSampler, base_env,
    forget, free_port, kill_all, orthanc_style_config, spawn, tail,
)

log = logging.getLogger("qr_retrieve_bench")
RESULTS = Path(__file__).resolve().parent / "results"
DEST_AET = "DEST"
MB = 1 << 20


def retrieve_config(workdir: Path, dicom_port: int, http_port: int, dest_port: int) -> dict:
    """The shared Orthanc-format config plus the two modalities: the C-MOVE destination
    and the benchmark's own AE (allowed to move and get), in Orthanc's object form."""
    config = orthanc_style_config(workdir, dicom_port, http_port)
    config["DicomModalities"] = {
        "dest": {"AET": DEST_AET, "Host": LOOPBACK, "Port": dest_port},
        "bench": {"AET": CALLING_AET, "Host": LOOPBACK, "Port": free_port(),
                  "AllowMove": True, "AllowGet": True},
    }
    return config


@dataclass
class RetrieveOrthanc(OrthancServer):
    dest_port: int = 0

    def command(self):
        cmd, cwd = super().command()
        path = Path(cmd[-1])
        path.write_text(json.dumps(retrieve_config(self.workdir, self.port, free_port(),
                                                   self.dest_port), indent=2))
        return cmd, cwd


@dataclass
class RetrieveAppliance(ApplianceServer):
    dest_port: int = 0

    def command(self):
        cmd, cwd = super().command()
        path = Path(cmd[-1])
        path.write_text(json.dumps(retrieve_config(self.workdir, self.port, free_port(),
                                                   self.dest_port), indent=2))
        return cmd, cwd


SERVERS = {"orthanc": RetrieveOrthanc, "appliance": RetrieveAppliance}


def _tool(cmd: list[str], env: dict[str, str], timeout: float = 600) -> float:
    """Run a DCMTK tool; seconds it took. Raises on failure."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    # DCMTK prints "E: " lines for a failed association or final status; "W: " for warnings.
    if r.returncode != 0 or "E: " in r.stderr or "W: " in r.stderr:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-800:]}")
    return elapsed


def _rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


@dataclass
class Trial:
    server: str
    nodelay: bool
    move_per_s: float = 0.0
    get_per_s: float = 0.0
    move_s: float = 0.0
    get_s: float = 0.0
    rss_growth_mb: float | None = None
    cine_peak_mb: float | None = None
    cine_move_s: float | None = None
    idle_mb: float = 0.0
    notes: list[str] = field(default_factory=list)


def run_trial(name: str, nodelay: bool, root: Path, data, keep: bool) -> Trial:
    env = base_env(nodelay)
    dest_port = free_port()
    dest_dir = Path(tempfile.mkdtemp(prefix="storescp-", dir=root))
    dest = spawn(["storescp", "--ignore", "-aet", DEST_AET, str(dest_port)],
                 dest_dir / "storescp.log", env)
    server = SERVERS[name](name=name, root=root, keep=keep, dest_port=dest_port)
    trial = Trial(name, nodelay)
    try:
        server.start(env)
        server.wait_ready()
        port = str(server.port)
        # Loading is not measured: always without Nagle, so Orthanc's receiver does not stall.
        _tool(["storescu", "-aet", CALLING_AET, "-aec", CALLED_AET, LOOPBACK, port,
               *map(str, data.singles), str(data.cine)], base_env(True))
        first = pydicom.dcmread(data.singles[0], stop_before_pixels=True)
        cine = pydicom.dcmread(data.cine, stop_before_pixels=True)
        n = len(data.singles)

        def keys(series: str) -> list[str]:
            return ["-k", "QueryRetrieveLevel=SERIES", "-k",
                    f"StudyInstanceUID={first.StudyInstanceUID}", "-k",
                    f"SeriesInstanceUID={series}"]

        move = ["movescu", "-S", "-aet", CALLING_AET, "-aec", CALLED_AET, "-aem", DEST_AET,
                LOOPBACK, port]
        get = ["getscu", "-S", "--ignore", "-aet", CALLING_AET, "-aec", CALLED_AET,
               LOOPBACK, port]
        trial.idle_mb = _rss(server.proc.pid) / MB
        trial.move_s = _tool(move + keys(first.SeriesInstanceUID), env)
        trial.move_per_s = n / trial.move_s
        trial.get_s = _tool(get + keys(first.SeriesInstanceUID), env)
        trial.get_per_s = n / trial.get_s
        if nodelay:
            before = _rss(server.proc.pid)
            for _ in range(10):
                _tool(get + keys(first.SeriesInstanceUID), env)
            time.sleep(0.5)
            trial.rss_growth_mb = (_rss(server.proc.pid) - before) / MB
            with RssSampler(server.proc.pid, interval=0.02) as sampler:
                trial.cine_move_s = _tool(move + keys(cine.SeriesInstanceUID), env)
            trial.cine_peak_mb = (sampler.peak or 0) / MB
        return trial
    except Exception:
        log.error("%s failed; its log:\n%s", name, tail(server.log_path, 30))
        raise
    finally:
        server.stop()
        server.cleanup()
        dest.kill()
        dest.wait()
        forget(dest)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the medians and ratios; write the samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--keep", action="store_true", help="keep the servers' data folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = ensure_data()
    RESULTS.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="qr-bench-", dir=RESULTS))
    trials: list[Trial] = []
    try:
        for rep in range(args.repeat):
            order = ["orthanc", "appliance"] if rep % 2 == 0 else ["appliance", "orthanc"]
            for nodelay in (False, True):
                for name in order:
                    t = run_trial(name, nodelay, root, data, args.keep)
                    log.info("%s", t)
                    trials.append(t)
    finally:
        kill_all()
    out = RESULTS / f"qr_retrieve-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps([t.__dict__ for t in trials], indent=2))

    def med(server: str, nodelay: bool, attr: str):
        return _median([getattr(t, attr) for t in trials
                        if t.server == server and t.nodelay == nodelay])

    rows = [("C-MOVE 200 x 0.92 MB, inst/s", "move_per_s", False, "appliance >= 5x Orthanc"),
            ("C-MOVE 200 x 0.92 MB, inst/s", "move_per_s", True, "appliance >= Orthanc"),
            ("C-GET 200 x 0.92 MB, inst/s", "get_per_s", False, "appliance >= 5x Orthanc"),
            ("C-GET 200 x 0.92 MB, inst/s", "get_per_s", True, "appliance >= Orthanc"),
            ("RSS growth over 10 C-GETs, MB", "rss_growth_mb", True, "< 10 MB"),
            ("peak RSS moving the 150-frame cine, MB", "cine_peak_mb", True, "< 150 MB"),
            ("idle RSS after loading, MB", "idle_mb", True, "")]
    print(f"\n{'figure':42} {'network':9} {'Orthanc':>9} {'appliance':>10} {'ratio':>7}  target")
    for label, attr, nodelay, target in rows:
        o, a = med("orthanc", nodelay, attr), med("appliance", nodelay, attr)
        ratio = f"{a / o:.2f}" if o and a is not None else "-"
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{label:42} {'nodelay' if nodelay else 'Nagle':9} {fmt(o):>9} {fmt(a):>10} "
              f"{ratio:>7}  {target}")
    print(f"\nsamples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
