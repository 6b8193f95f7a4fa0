"""Benchmark the adoption of an Orthanc archive in place (issue 14), side by side
with Orthanc on the same archive.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.adopt_bench [--instances 10000] [--repeat 1] [--keep]
        [--work DIR] [--ways linked,referenced]

1. An Orthanc archive of ``--instances`` US images (640x480 RGB, Explicit VR Little
   Endian, the main benchmark's 200 cached images with new UIDs, 50 instances per
   study) is stored by Debian's Orthanc itself, through one DCMTK storescu
   association, in the guide's layout (StorageDirectory = IndexDirectory), with
   StorageCompression false; the input files are deleted once Orthanc has them.
   Orthanc's own rate for that is reported (instances/s received and stored).
2. Orthanc is started again on its archive: seconds until its REST API answers and
   ``/statistics`` counts every instance; its RSS then.
3. For each repetition, pacs-appliance ``serve`` is started on the unchanged
   orthanc.json (our index and links of a previous repetition removed first):
   seconds until QIDO-RS sees every instance (the sum of NumberOfStudyRelatedInstances),
   the adoption's own rate from its log, its CPU seconds per instance, peak RSS during
   the adoption, the disk used before and after (hard links: nothing but our index
   should grow), and the time of the MD5 comparison that follows once all is visible.
4. ``pacs-appliance import-orthanc`` (daemon stopped) on the same archive, timed.

``--ways linked,referenced`` alternates, within each repetition, a run where the
files are hard-linked and one where they are adopted by reference: Orthanc's
attachment files are given to ``nobody`` (as the ``orthanc`` user owns them on
Debian) and the daemon runs as root without CAP_FOWNER and CAP_DAC_OVERRIDE
(``setpriv``), so ``fs.protected_hardlinks`` refuses every link, as it does for
the Debian package's service user. ``--work DIR`` keeps (and reuses) the
archive Orthanc stored there.

Target: >= 500 instances/s for an uncompressed archive. Results go to
tests/bench/results/adopt-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402
import pydicom  # noqa: E402

from tests.bench import datagen  # noqa: E402
from tests.bench.servers import RssSampler, free_port  # noqa: E402

log = logging.getLogger("adopt-bench")
REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PYTHON = sys.executable  # the venv's (see above): a worktree has no .venv of its own
ORTHANC = "/usr/sbin/Orthanc"
TARGET = 500.0
PER_STUDY = 50
_UID_ROOT = "1.2.826.0.1.3680043.10.1414"
_RATE = re.compile(r"adopted Orthanc's archive in ([\d.]+) s \(([\d.]+)/s\)")
_VERIFIED = re.compile(r"with the MD5 in Orthanc's index in ([\d.]+) s")
_WAYS = ("linked", "referenced")
# The daemon as Debian's service user would be, for fs.protected_hardlinks.
_NO_OWNER_RIGHTS = ["setpriv", "--bounding-set", "-dac_override,-fowner", "--"]


def _uid(kind: int, n: int) -> str:
    return f"{_UID_ROOT}.{kind}.{n:010d}"   # one length for every n: patched in place


def make_inputs(folder: Path, count: int) -> None:
    """``count`` Part-10 files: the cached images, new UIDs patched into their bytes."""
    data = datagen.ensure_data()
    folder.mkdir(parents=True, exist_ok=True)
    placeholders = (_uid(1, 9_999_999_999), _uid(2, 9_999_999_999), _uid(3, 9_999_999_999))
    templates = []
    for src in data.singles:
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = placeholders[0], placeholders[1]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = placeholders[2]
        with tempfile.TemporaryFile() as f:
            ds.save_as(f, enforce_file_format=True)
            f.seek(0)
            templates.append(f.read())
    ph = [p.encode() for p in placeholders]
    for i in range(count):
        study = i // PER_STUDY
        body = templates[i % len(templates)]
        body = body.replace(ph[0], _uid(1, study).encode()).replace(
            ph[1], _uid(2, study).encode()).replace(ph[2], _uid(3, i).encode())
        (folder / f"in_{i:06d}.dcm").write_bytes(body)


class Orthanc:
    def __init__(self, config_path: Path, http_port: int) -> None:
        self.config_path, self.http_port = config_path, http_port
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([ORTHANC, str(self.config_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                return time.perf_counter() - t0 if self.statistics() is not None else 0.0
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("Orthanc exited") from None
                time.sleep(0.02)

    def statistics(self) -> dict:
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


def disk_used(folder: Path) -> int:
    """Bytes of the files under ``folder``, each inode counted once (du)."""
    seen, total = set(), 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def forget_adoption(db: Path) -> None:
    """Remove what the appliance added to the folder (its index and its links)."""
    for p in db.glob("pacs-appliance*"):
        p.unlink()
    for p in db.glob("[0-9a-f][0-9a-f]/*.dcm"):
        p.unlink()
    shutil.rmtree(db / ".incoming", ignore_errors=True)


def qido_total(port: int) -> int:
    url = f"http://127.0.0.1:{port}/dicom-web/studies?limit=10000&includefield=00201208"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return sum(int(s["00201208"]["Value"][0]) for s in json.loads(body or b"[]"))


def give_to_nobody(db: Path) -> None:
    """Orthanc's attachment files owned by another user (nobody), readable by all."""
    for p in db.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"):
        os.chown(p, 65534, 65534)
        os.chmod(p, 0o644)


def appliance_run(root: Path, config_path: Path, db: Path, count: int, tag: str,
                  way: str = "linked") -> dict:
    """serve on the archive: seconds until QIDO sees every instance, rate, RSS, disk.
    ``way``: referenced runs the daemon without the rights to link others' files."""
    forget_adoption(db)
    before = disk_used(db)
    runtime = db / "pacs-appliance.runtime.json"
    log_path = root / f"appliance-{tag}.log"
    prefix = _NO_OWNER_RIGHTS if way == "referenced" else []
    t0 = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([*prefix, PYTHON, "-m", "appliance", "serve", "--config",
                                 str(config_path)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        while not runtime.exists():
            if proc.poll() is not None:
                raise RuntimeError(log_path.read_text()[-3000:])
            time.sleep(0.01)
        port = json.loads(runtime.read_text())["http_port"]
        cpu0 = _cpu(proc.pid)
        with RssSampler(proc.pid, interval=0.1) as rss:
            while True:
                try:
                    if qido_total(port) >= count:
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.1)
            seen = time.perf_counter() - t0
            cpu = _cpu(proc.pid) - cpu0
        text = log_path.read_text()
        m = _RATE.search(text)
        while m is None or _VERIFIED.search(text) is None:
            time.sleep(0.1)
            text = log_path.read_text()
            m = _RATE.search(text)
        verified = float(_VERIFIED.search(text).group(1))
    finally:
        proc.terminate()
        proc.wait(60)
    # The machine is shared: CPU seconds per instance say what 2 idle cores would do.
    per = cpu / count
    outcomes = re.search(r"(\d+) linked \(.*?\), (\d+) referenced", text)
    if outcomes is None or int(outcomes.group(1 if way == "linked" else 2)) != count:
        raise RuntimeError(f"not every instance {way}: {outcomes and outcomes.group(0)}")
    return {"way": way, "qido_sees_all_s": round(seen, 2), "adoption_s": float(m.group(1)),
            "md5_check_after_s": verified,
            "cpu_ms_per_instance": round(per * 1000, 2),
            "projected_per_s_on_2_idle_cores": round(2 / per, 0) if per else None,
            "load_average": os.getloadavg()[0],
            "instances_per_s": float(m.group(2)), "rss_peak_mb": round(rss.peak / 2**20, 1),
            "disk_before": before, "disk_after": disk_used(db)}


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def cli_run(config_path: Path, db: Path) -> dict:
    forget_adoption(db)
    t0 = time.perf_counter()
    done = subprocess.run([PYTHON, "-m", "appliance", "import-orthanc", "--config", str(config_path)],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)
    return {"seconds": round(seconds, 2), "summary": done.stdout.strip().splitlines()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the archive and logs")
    p.add_argument("--work", type=Path, help="folder to work in (default: a temp folder)")
    p.add_argument("--ways", default="linked",
                   help="comma-separated, alternated in each repetition: linked, referenced")
    args = p.parse_args(argv)
    ways = args.ways.split(",")
    if not set(ways) <= set(_WAYS):
        p.error(f"--ways: {', '.join(_WAYS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = args.work or Path(tempfile.mkdtemp(prefix="adopt-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    db, tmp = root / "db", root / "tmp"
    db.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    http_port = free_port()
    config = {"Name": "bench", "StorageDirectory": str(db), "IndexDirectory": str(db),
              "TemporaryDirectory": str(tmp), "DicomAet": "ORTHANC", "DicomPort": free_port(),
              "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomCheckCalledAet": False, "Plugins": [], "StorageCompression": False}
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    result: dict = {"instances": args.instances, "time": datetime.now().isoformat(timespec="seconds"),
                    "load_before": os.getloadavg()}
    orthanc = Orthanc(config_path, http_port)
    try:
        if not (db / "index").exists():
            inputs = root / "inputs"
            log.info("writing %d input files", args.instances)
            make_inputs(inputs, args.instances)
            orthanc.start()
            log.info("Orthanc receives them (one storescu association)")
            t0 = time.perf_counter()
            subprocess.run(["storescu", "-aet", "BENCH", "-aec", "ORTHANC", "+sd", "-nh",
                            "127.0.0.1", str(config["DicomPort"]), str(inputs)], check=True,
                           capture_output=True)
            stored = time.perf_counter() - t0
            assert orthanc.statistics()["CountInstances"] == args.instances
            orthanc.stop()
            shutil.rmtree(inputs)
            result["orthanc_ingest_per_s"] = round(args.instances / stored, 1)
            log.info("Orthanc stored %d instances in %.1f s", args.instances, stored)
        forget_adoption(db)
        result["orthanc_disk"] = disk_used(db)
        result["orthanc_start_s"] = round(orthanc.start(), 2)
        result["orthanc_rss_mb"] = round(
            RssSampler(orthanc.proc.pid)._sample() / 2**20, 1)  # noqa: SLF001 - one sample
        assert orthanc.statistics()["CountInstances"] == args.instances
        orthanc.stop()
        if "referenced" in ways:
            give_to_nobody(db)
        runs = []
        for k in range(args.repeat):
            for way in ways:
                runs.append(appliance_run(root, config_path, db, args.instances, f"serve{k}-{way}",
                                          way))
                log.info("serve %d (%s): %s", k, way, runs[-1])
        result["serve"] = runs
        result["cli"] = cli_run(config_path, db)
        log.info("import-orthanc: %s", result["cli"])
        rate = statistics.median(r["instances_per_s"] for r in runs)
        result["median_instances_per_s"] = rate
        result["median_instances_per_s_by_way"] = {
            w: statistics.median(r["instances_per_s"] for r in runs if r["way"] == w) for w in ways}
        result["target_met"] = rate >= TARGET
        result["ratios"] = {
            "adoption_vs_orthanc_ingest": round(rate / result["orthanc_ingest_per_s"], 2)
            if "orthanc_ingest_per_s" in result else None,
            "qido_sees_all_vs_orthanc_start": round(
                statistics.median(r["qido_sees_all_s"] for r in runs) / result["orthanc_start_s"], 2),
        }
    finally:
        orthanc.stop()
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"adopt-{datetime.now():%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"results: {out}")
    if not args.keep and args.work is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
