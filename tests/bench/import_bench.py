"""Benchmark ``pacs-appliance import`` against storescu and Orthanc's own import.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.import_bench [--files 1000] [--repeat 1] [--keep]

Data: ``--files`` single-frame US images (640x480 RGB, 0.92 MB each, datagen.py),
cached in tests/bench/results/data-import. Each variant gets a fresh server with an
empty data folder (servers.py, the same Orthanc-format config for both) and sends
the same files, page cache warm:

- ``storescu``: DCMTK storescu, every file over ONE association (TCP_NODELAY=1), to
  the appliance and to Orthanc: the figure import must match (issue 14.4);
- ``import``: ``pacs-appliance import FOLDER`` with the daemon running (its
  ``POST /instances``), wall time of the whole command, Python start-up included;
- ``import-stopped``: the same with no daemon (the command stores itself);
- ``rest``: one curl process POSTing every file to ``/instances`` in turn on one
  keep-alive connection (``curl --data-binary @file http://.../instances`` chained
  with ``--next``), to Orthanc (its own import, as its ImportDicomFiles.py does) and
  to the appliance (the same endpoint, one file at a time).

Prints files/s per variant and the ratios; every sample goes to
tests/bench/results/import-<timestamp>.json. Exit 0 when it ran, 1 when it could not.
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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import datagen  # noqa: E402
from tests.bench.run import STORESCU_CFG, Client  # noqa: E402
from tests.bench.servers import (  # noqa: E402
    REPO_ROOT, ApplianceServer, OrthancServer, Server, ServerError, base_env, kill_all,
    orthanc_style_config,
)

log = logging.getLogger("import-bench")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")


def _http_port(server: Server) -> int:
    """The HTTP port servers.py wrote into the server's config."""
    for name in ("config.json", "orthanc.json"):
        path = server.workdir / name
        if path.exists():
            return int(json.loads(path.read_text())["HttpPort"])
    raise ServerError(f"no config in {server.workdir}")


def _count_stored(server: Server, expected: int, timeout: float = 60.0) -> None:
    """Wait until the server's /statistics counts ``expected`` instances (both
    answer it; Orthanc's name and fields)."""
    import requests

    url = f"http://127.0.0.1:{_http_port(server)}/statistics"
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = int(requests.get(url, timeout=10).json()["CountInstances"])
        if n >= expected:
            return
        time.sleep(0.1)
    raise ServerError(f"{server.name}: {n} of {expected} instances stored")


def _curl_posts(port: int, files: list[Path], config_dir: Path) -> float:
    """One curl process POSTing each file to /instances in turn; seconds."""
    cfg = config_dir / "curl.cfg"
    with open(cfg, "w") as out:
        for i, f in enumerate(files):
            if i:
                out.write("next\n")
            out.write(f'url = "http://127.0.0.1:{port}/instances"\n'
                      f'data-binary = "@{f}"\nheader = "Content-Type: application/dicom"\n'
                      'silent\nfail\noutput = "/dev/null"\n')
    t0 = time.perf_counter()
    done = subprocess.run(["curl", "-K", str(cfg)], capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise ServerError(f"curl exit {done.returncode}: {done.stderr[-400:]}")
    return elapsed


def _cli_import(config: Path, folder: Path, expect_where: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([PYTHON, "-m", "appliance", "import", "--json", "--config", str(config),
                           str(folder)], capture_output=True, text=True, timeout=1800,
                          cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise ServerError(f"import exit {done.returncode}: {done.stderr[-400:]}")
    summary = json.loads(done.stdout)
    if expect_where not in summary["where"] or summary["stored"] != summary["files"]:
        raise ServerError(f"import did not store everything as expected: {summary}")
    return elapsed


def _warm(files: list[Path]) -> None:
    for path in files:
        with open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass


def _trial(kind: str, variant: str, root: Path, files: list[Path], folder: Path,
           client: Client, keep: bool) -> float:
    """Seconds to store ``files`` with one fresh server (or none: import-stopped)."""
    env = base_env(tcp_nodelay=True)
    _warm(files)
    if variant == "import-stopped":
        work = Path(tempfile.mkdtemp(prefix="stopped-", dir=root))
        config = work / "config.json"
        config.write_text(json.dumps(orthanc_style_config(work, 0, 0)))
        try:
            return _cli_import(config, folder, "daemon stopped")
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
    server: Server = (OrthancServer if kind == "orthanc" else ApplianceServer)(kind, root, keep)
    server.start(env)
    try:
        server.wait_ready()
        if variant == "storescu":
            seconds = client.send(server.port, files, env, f"{kind}-{variant}")
        elif variant == "rest":
            seconds = _curl_posts(_http_port(server), files, server.workdir)
        else:  # import, daemon running
            seconds = _cli_import(server.workdir / "config.json", folder, "running daemon")
        _count_stored(server, len(files))
        return seconds
    finally:
        server.stop()
        server.cleanup()


VARIANTS = [("appliance", "storescu"), ("appliance", "import"), ("appliance", "import-stopped"),
            ("appliance", "rest"), ("orthanc", "storescu"), ("orthanc", "rest")]


def main(argv: list[str] | None = None) -> int:
    """Run the trials, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.import_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # the readiness C-ECHOs
    data = datagen.ensure_data(RESULTS_DIR / "data-import", singles=args.files)
    files = data.singles
    folder = files[0].parent
    size = sum(p.stat().st_size for p in files)
    root = Path(tempfile.mkdtemp(prefix="import-bench-"))
    (root / "storescu.cfg").write_text(STORESCU_CFG)
    client = Client(root, root / "storescu.cfg", timeout=1800)
    samples: dict[str, list[float]] = {}
    try:
        for rep in range(args.repeat):
            order = VARIANTS if rep % 2 == 0 else list(reversed(VARIANTS))
            for kind, variant in order:
                name = f"{kind} {variant}"
                seconds = _trial(kind, variant, root, files, folder, client, args.keep)
                samples.setdefault(name, []).append(seconds)
                log.info("%s: %.2f s, %.0f files/s", name, seconds, len(files) / seconds)
    except (ServerError, subprocess.TimeoutExpired) as e:
        log.error("not measured: %s", e)
        return 1
    finally:
        kill_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    rate = {k: len(files) / s for k, s in med.items()}
    print(f"\n{len(files)} files, {size / 1e6:.0f} MB, median of {args.repeat}")
    print(f"{'variant':<28} {'seconds':>8} {'files/s':>8} {'MB/s':>7}")
    for k in samples:
        print(f"{k:<28} {med[k]:>8.2f} {rate[k]:>8.1f} {size / 1e6 / med[k]:>7.1f}")
    base = rate["appliance storescu"]
    print("\nratios (files/s):")
    for k in ("appliance import", "appliance import-stopped", "appliance rest"):
        print(f"  {k} / appliance storescu: {rate[k] / base:.2f} (target >= 1.00)")
    print(f"  appliance import / orthanc storescu: {rate['appliance import'] / rate['orthanc storescu']:.2f}")
    print(f"  appliance import / orthanc rest (Orthanc's own import): "
          f"{rate['appliance import'] / rate['orthanc rest']:.2f}")
    print(f"  appliance rest / orthanc rest: {rate['appliance rest'] / rate['orthanc rest']:.2f}")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"import-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"files": len(files), "bytes": size, "samples": samples,
                               "median_seconds": med}, indent=2))
    print(f"\nsamples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
