"""Benchmark the online backup: ingest with and without a backup running, and the time
to back up an index of 100,000 instances.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.backup_bench [--instances 100000] [--repeat 3] [--keep]

1. An index of ``--instances`` synthetic instances is built once through the real
   insert path (appliance.store.index.insert_many, records made by
   appliance.store.archive.instance_record from a real header of the benchmark's
   US images, one patient per 200 instances, 40 per study, 20 per series).
   Only the index: a backup copies the index, not the images.
2. Backup time: a daemon on a copy of that index, idle; ``pacs-appliance backup now``
   timed from the CLI (wall time, and the manifest's own copy time).
3. Ingest: the 200 single-frame images of the main benchmark over one DCMTK storescu
   association (TCP_NODELAY=1, as the main harness's ``ingest_nodelay``), against a
   daemon on a copy of the same index, with OverwriteInstances true so every repetition
   writes every file again:
   - ``without``: no backup;
   - ``scheduled``: the daemon's own schedule with IntervalHours so short that backups
     run back to back, so one is running during the whole send (checked from the log);
   - ``cli``: ``pacs-appliance backup now`` started in another process just before the
     send (checked: it ends after the send).
   Target: ingest during a backup >= 70 % of ingest without.

Figures are medians of ``--repeat`` repetitions (the order of the variants alternates);
every sample goes to tests/bench/results/backup-<timestamp>.json. Exit code 0 when it
ran (targets met or not), 1 when it could not measure.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.store.archive import Origin, header_uids, instance_record  # noqa: E402
from appliance.store.blobs import BlobStore  # noqa: E402
from appliance.dicomfile.header import read_header  # noqa: E402
from appliance.store.index import DB_NAME, Index, Snapshot  # noqa: E402
from tests.bench import datagen  # noqa: E402
from tests.bench.run import STORESCU_CFG, Client, warm_page_cache  # noqa: E402
from tests.bench.servers import ServerError, base_env  # noqa: E402
from tests.support import Daemon, base_config  # noqa: E402

log = logging.getLogger("backup-bench")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET = 0.70
_BACKUP_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO appliance\.ops\.backup: backup \(scheduled\) "
    r"backup-\S+: .*, ([\d.]+) s")


def build_index(folder: Path, instances: int, template: Path) -> Path:
    """An index of ``instances`` synthetic instances built through the real insert path."""
    header = read_header(template)
    uids = header_uids(header)
    base = instance_record(header, uids, template.stat().st_size, Origin("DICOM", "bench", "BENCH"))
    index = Index(folder, BlobStore.sync_dirs)
    index.open()
    now = time.time()
    try:
        batch = []
        for i in range(instances):
            p, st, se = i // 200, i // 40, i // 20
            study = f"1.2.826.0.1.3680043.10.1.{st}"
            series = f"{study}.{se}"
            batch.append(base.__class__(**{
                **base.__dict__, "patient_id": f"BENCH{p:06d}", "study_instance_uid": study,
                "series_instance_uid": series, "sop_instance_uid": f"{series}.{i}",
                "instance_number": i % 20 + 1, "file_path": BlobStore.relpath(f"{i:032x}"),
                "sha256": f"{i:064x}", "received_at": now - (instances - i) * 6.0}))
            if len(batch) == 2000:
                index.insert_many(batch, overwrite=False)
                batch = []
        if batch:
            index.insert_many(batch, overwrite=False)
    finally:
        index.close()
    Snapshot.checkpoint(folder / DB_NAME)
    return folder / DB_NAME


def start_daemon(root: Path, template_index: Path, **config) -> Daemon:
    """A daemon on a copy of the template index."""
    (root / "index").mkdir(parents=True)
    shutil.copyfile(template_index, root / "index" / DB_NAME)
    cfg = base_config(root, OverwriteInstances=True, **config)
    # The storage's MinimumFreeMB default (500) is far below what this host has free.
    return Daemon(root, cfg, env={"TCP_NODELAY": "1"}).start(timeout=120)


def cli(daemon: Daemon, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "appliance", *args, "--config",
                             str(daemon.config_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def backup_intervals(daemon: Daemon) -> list[tuple[float, float]]:
    """(start, end) unix times of the scheduled backups the daemon logged."""
    spans = []
    for line in daemon.log().splitlines():
        m = _BACKUP_LINE.match(line)
        if m:
            end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            spans.append((end - float(m.group(2)), end))
    return spans


def coverage(window: tuple[float, float], spans: list[tuple[float, float]]) -> float:
    """Fraction of ``window`` covered by ``spans``."""
    a, b = window
    covered = sum(max(0.0, min(b, e) - max(a, s)) for s, e in spans)
    return min(1.0, covered / (b - a))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures; write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.backup_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    if shutil.which("storescu") is None:
        log.error("storescu not found: apt-get install dcmtk")
        return 1

    data = datagen.ensure_data()
    warm_page_cache(data)
    work = Path(tempfile.mkdtemp(prefix="pacs-backup-bench-"))
    cfg = work / "storescu.cfg"
    cfg.write_text(STORESCU_CFG)
    client = Client(work, cfg, timeout=300)
    env = base_env(tcp_nodelay=True)
    started = datetime.now()
    samples: dict[str, list[float]] = {"without": [], "scheduled": [], "cli": []}
    extra: dict[str, list[float]] = {"scheduled_coverage": [], "cli_backup_s": []}
    try:
        t0 = time.perf_counter()
        template = build_index(work / "template", args.instances, data.singles[0])
        build_s = time.perf_counter() - t0
        size = template.stat().st_size
        log.info("index of %d instances built in %.1f s: %.0f MB", args.instances, build_s, size / 1e6)

        # -- backup seconds, idle daemon
        d = start_daemon(work / "idle", template, Backups={"IntervalHours": 0})
        try:
            backup_s, manifest_s = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                proc = cli(d, "backup", "now")
                out, err = proc.communicate(timeout=600)
                if proc.returncode != 0:
                    raise ServerError(f"backup now failed: {err}")
                backup_s.append(time.perf_counter() - t0)
                newest = sorted((work / "idle" / "index" / "backups").glob("backup-*"))[-1]
                manifest_s.append(json.loads((newest / "manifest.json").read_text())["seconds"])
                log.info("backup now: %.2f s (copy %.2f s)", backup_s[-1], manifest_s[-1])
        finally:
            d.stop()
            shutil.rmtree(work / "idle", ignore_errors=True)

        # -- ingest without / with a backup
        plain = start_daemon(work / "plain", template, Backups={"IntervalHours": 0, "Keep": 1})
        busy = start_daemon(work / "busy", template, Backups={"IntervalHours": 0.0003, "Keep": 1})
        try:
            for d in (plain, busy):  # first stores create the rows; later ones overwrite
                client.send(d.dicom_port, data.singles, env, "warmup")
            deadline = time.monotonic() + 600
            while not backup_intervals(busy):
                if time.monotonic() > deadline:
                    raise ServerError("no scheduled backup finished in 600 s")
                time.sleep(0.2)
            for rep in range(args.repeat):
                order = ["without", "scheduled", "cli"]
                if rep % 2:
                    order.reverse()
                for variant in order:
                    d = busy if variant == "scheduled" else plain
                    backup = cli(d, "backup", "now") if variant == "cli" else None
                    if backup is not None:
                        time.sleep(0.3)  # past its start-up: copying when the send begins
                    t_start = time.time()
                    seconds = client.send(d.dicom_port, data.singles, env, variant)
                    t_end = time.time()
                    rate = len(data.singles) / seconds
                    samples[variant].append(rate)
                    note = ""
                    if variant == "scheduled":
                        time.sleep(0.5)
                        spans = backup_intervals(busy)
                        # The backup running at the end has not logged yet: it covers
                        # from the end of the last logged one.
                        spans.append((spans[-1][1] if spans else t_start, t_end))
                        extra["scheduled_coverage"].append(coverage((t_start, t_end), spans))
                        note = f" (backup during {extra['scheduled_coverage'][-1]:.0%} of the send)"
                    if backup is not None:
                        backup.communicate(timeout=600)
                        ended = time.time()
                        extra["cli_backup_s"].append(ended - t_start + 0.3)
                        note = f" (backup ended {ended - t_end:.1f} s after the send)"
                        if backup.returncode != 0 or ended < t_end:
                            note += " NOT OVERLAPPING"
                    log.info("[%d/%d] %-9s %.1f inst/s%s", rep + 1, args.repeat, variant, rate, note)
        finally:
            plain.stop()
            busy.stop()
    except (ServerError, OSError, subprocess.TimeoutExpired) as e:
        log.error("benchmark failed: %s", e)
        return 1
    finally:
        if args.keep:
            log.info("work folder kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    print()
    print(f"backup benchmark, {started:%Y-%m-%d %H:%M}, {args.repeat} repetition(s), medians")
    print(f"index: {args.instances} instances, {size / 1e6:.0f} MB (built in {build_s:.0f} s)")
    print(f"backup now (idle daemon): {statistics.median(backup_s):.2f} s wall, "
          f"{statistics.median(manifest_s):.2f} s copy + check")
    print(f"ingest without backup:              {med['without']:.1f} inst/s")
    for variant, label in (("scheduled", "during the daemon's own backup:"),
                           ("cli", "during `backup now` (other process):")):
        ratio = med[variant] / med["without"]
        print(f"ingest {label:<29} {med[variant]:.1f} inst/s = {ratio:.2f} x without "
              f"(target >= {TARGET:.2f}: {'met' if ratio >= TARGET else 'NOT MET'})")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"backup-{started:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"), "instances": args.instances,
        "index_bytes": size, "build_s": build_s, "backup_now_s": backup_s,
        "backup_copy_s": manifest_s, "ingest": samples, "medians": med, **extra,
    }, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
