"""A/B of a glibc allocator setting in the daemon's environment: speed, CPU and RSS.

    .venv/bin/python -m tests.bench.allocator_ab [--env MALLOC_MMAP_THRESHOLD_=131072]
                                                 [--rounds 3] [--requests 100]

Two daemons from this checkout side by side, both with the systemd unit's ``Environment=``
lines; B also gets ``--env``. Each round, alternating which goes first: the 200 single frames
over one storescu association (TCP_NODELAY=1), the 150-frame cine (138 MB), then
``--requests`` WADO-RS ``rendered`` JPEGs and as many frames of the stored singles over one
keep-alive connection. Reported per daemon: the medians of wall time, of the daemon's CPU
seconds for each step, and its RSS (anonymous) after each round. The soak
(``soak.py --env``) tells what a setting does to memory over a day; this tells what it
costs on the paths that allocate large blocks (tests/bench/README.md, "Memory over a day").
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread

from tests.bench import datagen
from tests.bench.run import STORESCU_CFG, Client
from tests.bench.servers import (
    LOOPBACK, ApplianceServer, base_env, kill_all, orthanc_style_config, tree_cpu,
)
from tests.bench.soak import DICOMWEB, RESULTS_DIR, rss_parts, unit_environment

log = logging.getLogger("allocator_ab")


class WebAppliance(ApplianceServer):
    """The benchmark's appliance with DICOMweb on (rendered images and frames)."""

    def command(self):
        cmd, cwd = super().command()
        path = Path(cmd[-1])
        config = orthanc_style_config(self.workdir, self.port, self.http_port)
        config["DicomWeb"] = {"Enable": True, "Root": DICOMWEB + "/"}
        path.write_text(json.dumps(config, indent=2))
        return cmd, cwd


def web_requests(port: int, paths: list[tuple[str, str]]) -> float:
    """GET each (path, accept) over one keep-alive connection; seconds for all."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    t = time.perf_counter()
    try:
        for path, accept in paths:
            conn.request("GET", DICOMWEB + path, headers={"Accept": accept})
            rsp = conn.getresponse()
            body = rsp.read()
            if rsp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {rsp.status} {body[:200]!r}")
    finally:
        conn.close()
    return time.perf_counter() - t


def timed(server: ApplianceServer, fn) -> tuple[float, float]:
    """(wall seconds, daemon CPU seconds) of ``fn()``."""
    cpu = tree_cpu(server.proc.pid)
    wall = fn()
    return wall, tree_cpu(server.proc.pid) - cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="B's extra environment (default MALLOC_MMAP_THRESHOLD_=131072)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=100,
                   help="rendered images, and as many frames, per round")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ab %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    extra = dict(item.partition("=")[::2] for item in
                 (args.env or ["MALLOC_MMAP_THRESHOLD_=131072"]))
    data = datagen.ensure_data(datagen.DEFAULT_CACHE)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="allocator-ab-", dir=RESULTS_DIR))
    cfg = root / "storescu.cfg"
    cfg.write_text(STORESCU_CFG)
    client = Client(root, cfg, 300)
    env = {**base_env(tcp_nodelay=True), **unit_environment()}
    uids = []
    for path in data.singles:
        ds = dcmread(path, stop_before_pixels=True)
        uids.append(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}")
    rendered = [(uids[i % len(uids)] + "/rendered", "image/jpeg") for i in range(args.requests)]
    frames = [(uids[i % len(uids)] + "/frames/1",
               'multipart/related; type="application/octet-stream"; transfer-syntax=*')
              for i in range(args.requests)]
    servers = {"A": WebAppliance("A", root), "B": WebAppliance("B", root)}
    figures: dict[str, dict[str, list[float]]] = {k: {} for k in servers}
    try:
        for name, server in servers.items():
            server.start({**env, **extra} if name == "B" else env)
            server.wait_ready(timeout=60)
        log.info("A: unit environment %s; B: the same and %s", unit_environment(), extra)
        for r in range(args.rounds):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for name in order:
                server, out = servers[name], figures[name]
                steps = {
                    "ingest": lambda s=server: client.send(s.port, data.singles, env, f"{s.name}{r}"),
                    "cine": lambda s=server: client.send(s.port, [data.cine], env, f"{s.name}c{r}"),
                    "rendered": lambda s=server: web_requests(s.http_port, rendered),
                    "frames": lambda s=server: web_requests(s.http_port, frames),
                }
                for step, fn in steps.items():
                    wall, cpu = timed(server, fn)
                    out.setdefault(f"{step} s", []).append(wall)
                    out.setdefault(f"{step} cpu s", []).append(cpu)
                parts = rss_parts(server.proc.pid)
                out.setdefault("anon MB", []).append(parts.get("anon_mb", 0.0))
                log.info("round %d %s: %s, load %.2f", r + 1, name,
                         {k: round(v[-1], 3) for k, v in out.items()}, os.getloadavg()[0])
    finally:
        for server in servers.values():
            server.stop()
            server.cleanup()
        kill_all()
    print(f"{'median':<16} {'A':>10} {'B':>10}   B: {extra}")
    for key in figures["A"]:
        a, b = (statistics.median(figures[k][key]) for k in ("A", "B"))
        print(f"{key:<16} {a:>10.3f} {b:>10.3f}   B/A {b / a if a else float('nan'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
