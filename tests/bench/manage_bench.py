"""Benchmark the delete and the fix-patient of a 200-image study, against Orthanc.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.manage_bench [--repeat 3] [--keep]

Each repetition, for each server (Debian's Orthanc 1.10 and this checkout), on a fresh
data folder: the 200 single-frame US images of the main benchmark (640x480 RGB, about
0.9 MB each, tests/bench/datagen.py) are sent over one storescu association; then

- fix-patient: Orthanc's ``POST /studies/{id}/modify`` with ``{"Replace": {PatientName,
  PatientBirthDate, PatientSex}, "Force": true}`` (synchronous, new UIDs, the
  original kept, as Orthanc does by default), ours ``POST /studies/{uid}/modify`` with the
  same Replace (new UIDs, the original removed once the new one is durable);
- delete: Orthanc's ``DELETE /studies/{id}`` of the modified study, ours ``DELETE
  /dicom-web/studies/{uid}``.

Wall time of each HTTP request, client side, and the CPU time (user + system) the server
process used for it (this machine is shared: wall times move with the others' load, CPU
times much less). Orthanc keeps the original study after a
modify (it is deleted too before the next repetition); we do less work on the
delete side (the modified study only) and more on the modify side (the old one goes).
Targets (issue 16): delete under 1 s, fix-patient under 5 s. Figures are medians; every
sample goes to tests/bench/results/manage-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import requests

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import datagen  # noqa: E402
from tests.bench.servers import (  # noqa: E402
    CALLED_AET, LOOPBACK, REPO_ROOT, ApplianceServer, OrthancServer, Server, ServerError, base_env,
    free_port, orthanc_style_config,
)

log = logging.getLogger("manage-bench")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Orthanc 1.10 refuses PatientID at the study level ("the parent PatientID cannot be
# manually modified"): both get the same three patient attributes, so both rewrite
# every file for the same change.
FIX = {"PatientName": "Right^Patient", "PatientBirthDate": "19910203", "PatientSex": "M"}
TARGETS = {"delete": 1.0, "modify": 5.0}


class _Measured:
    """A server of this benchmark: its HTTP port remembered, the Orthanc-style config
    written; subclasses say how to launch it and what the measured REST calls are."""

    http_port = 0
    config_name = ""

    def command(self):
        self.http_port = free_port()
        path = self.workdir / self.config_name
        path.write_text(json.dumps(orthanc_style_config(self.workdir, self.port, self.http_port),
                                   indent=2))
        return self.launch(path)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.http_port}{path}"


class Orthanc(_Measured, OrthancServer):
    """Debian's Orthanc: /studies/{id}/modify and DELETE /studies/{id}."""

    config_name = "orthanc.json"

    def launch(self, path: Path):
        return [str(self.binary), str(path)], self.workdir

    def study(self) -> str:
        (study,) = requests.get(self.url("/studies"), timeout=30).json()
        return study

    def modify(self, study: str) -> str:
        r = requests.post(self.url(f"/studies/{study}/modify"),
                          json={"Replace": FIX, "Force": True}, timeout=600)
        r.raise_for_status()
        return r.json()["ID"]

    def delete(self, study: str) -> None:
        requests.delete(self.url(f"/studies/{study}"), timeout=600).raise_for_status()


class Appliance(_Measured, ApplianceServer):
    """This checkout: /studies/{uid}/modify and DELETE /dicom-web/studies/{uid}."""

    config_name = "config.json"

    def launch(self, path: Path):
        # cwd = repo root so `-m appliance` resolves to this checkout.
        return [self.python, "-m", "appliance", "serve", "--config", str(path)], REPO_ROOT

    def study(self) -> str:
        (study,) = requests.get(self.url("/dicom-web/studies"), timeout=30).json()
        return study["0020000D"]["Value"][0]

    def modify(self, study: str) -> str:
        r = requests.post(self.url(f"/studies/{study}/modify"), json={"Replace": FIX}, timeout=600)
        r.raise_for_status()
        return r.json()["StudyInstanceUID"]

    def delete(self, study: str) -> None:
        r = requests.delete(self.url(f"/dicom-web/studies/{study}"), timeout=600)
        if r.status_code != 204:
            raise ServerError(f"DELETE answered {r.status_code}: {r.text[:200]}")


def _send(server: Server, files: list[Path]) -> None:
    done = subprocess.run(["storescu", "-aet", "BENCH", "-aec", CALLED_AET, LOOPBACK,
                           str(server.port), *map(str, files)], capture_output=True, text=True,
                          timeout=600, env=base_env(True))
    if done.returncode != 0:
        raise ServerError(f"storescu failed: {done.stderr[-500:]}")


def _cpu(process: psutil.Process) -> float:
    """CPU seconds (user + system) the server has used so far: a figure the other
    engineers' load on this shared machine moves much less than wall time."""
    times = process.cpu_times()
    return times.user + times.system


def trial(kind, root: Path, files: list[Path], keep: bool) -> dict[str, float]:
    """One repetition on one server: send, fix, delete; seconds of each step."""
    server = kind(kind.__name__.lower(), root, keep)
    server.start(base_env(True))
    try:
        server.wait_ready()
        t0 = time.perf_counter()
        _send(server, files)
        sent = time.perf_counter() - t0
        study = server.study()
        process = psutil.Process(server.proc.pid)
        result = {"send": sent}

        def timed(step: str, call):
            cpu0, t0 = _cpu(process), time.perf_counter()
            value = call()
            result[step] = time.perf_counter() - t0
            result[f"{step}_cpu"] = _cpu(process) - cpu0
            return value

        new = timed("modify", lambda: server.modify(study))
        timed("delete", lambda: server.delete(new))
        return result
    finally:
        server.stop()
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; exit 0 when it ran."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the data folders and logs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # the readiness C-ECHOs
    if shutil.which("storescu") is None or not Path("/usr/sbin/Orthanc").exists():
        log.error("needs DCMTK's storescu and /usr/sbin/Orthanc")
        return 1
    data = datagen.ensure_data()
    root = Path(tempfile.mkdtemp(prefix="manage-bench-"))
    samples: dict[str, list[dict[str, float]]] = {"orthanc": [], "appliance": []}
    try:
        for n in range(args.repeat):
            # Alternate which server goes first, so neither always meets a warmer cache.
            order = (Orthanc, Appliance) if n % 2 == 0 else (Appliance, Orthanc)
            for kind in order:
                result = trial(kind, root, data.singles, args.keep)
                samples[kind.__name__.lower()].append(result)
                log.info("%-9s #%d: send %.2f s, fix-patient %.3f s (CPU %.2f s), delete %.3f s "
                         "(CPU %.2f s)", kind.__name__, n + 1, result["send"], result["modify"],
                         result["modify_cpu"], result["delete"], result["delete_cpu"])
    except ServerError as e:
        log.error("%s", e)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    keys = ("send", "modify", "delete", "modify_cpu", "delete_cpu")
    med = {server: {k: statistics.median(s[k] for s in runs) for k in keys}
           for server, runs in samples.items()}
    print(f"\n200 US images ({data.single_bytes / 1e6:.0f} MB), medians of {args.repeat}:")
    print(f"{'':14}{'pacs-appliance':>16}{'Orthanc 1.10':>14}{'ratio':>8}{'target':>9}")
    for key, label in (("modify", "fix-patient"), ("delete", "delete")):
        ours, theirs = med["appliance"][key], med["orthanc"][key]
        print(f"{label:14}{ours:>14.3f} s{theirs:>12.3f} s{theirs / ours:>7.1f}x"
              f"{'< %.0f s' % TARGETS[key]:>9} {'met' if ours < TARGETS[key] else 'MISSED'}")
        ours, theirs = med["appliance"][key + "_cpu"], med["orthanc"][key + "_cpu"]
        print(f"{'  server CPU':14}{ours:>14.3f} s{theirs:>12.3f} s{theirs / ours:>7.1f}x")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"manage-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"samples": samples, "medians": med}, indent=2))
    print(f"samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
