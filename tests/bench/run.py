"""Benchmark pacs-appliance against Orthanc (Debian's) and the bare pynetdicom receiver.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.run [--scenarios a,b] [--repeat N]
                                        [--only orthanc|appliance|ceiling] [--keep]

Each scenario is run ``--repeat`` times; within a repetition the servers take turns
(orthanc, appliance, ceiling, then reversed on the next repetition) so that drift on this
shared machine hits all of them alike. Every trial starts a fresh server on free loopback
ports with an empty data folder, and stops it afterwards. Medians are reported, with
ratios and the targets of the issue; all samples go to tests/bench/results/<timestamp>.json.

This is a benchmark, not a test: the exit code is 0 when it ran (whether targets were met or
not), 1 when nothing could be measured, 2 on bad arguments, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    # Run as a script (python tests/bench/run.py): make `tests.bench` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import datagen  # noqa: E402
from tests.bench.orthanc_install import InstallError, ensure_orthanc  # noqa: E402
from tests.bench.servers import (  # noqa: E402
    finish,
    CALLED_AET, CALLING_AET, LOOPBACK, REPO_ROOT, SERVER_CLASSES, RssSampler, Server,
    ServerError, base_env, byte_compile, forget, kill_all, spawn, tail, http_answers, tree_cpu, tree_rss,
)

log = logging.getLogger("bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_ORDER = ("orthanc", "appliance", "ceiling")
PARALLEL = 4

# storescu proposes exactly one presentation context per SOP class, Explicit VR Little
# Endian only, so every server receives the files as they are on disk (no conversion, no
# transfer-syntax choice that could differ between servers). Names: /etc/dcmtk/storescu.cfg.
STORESCU_PROFILE = "Bench"
STORESCU_CFG = """\
[[TransferSyntaxes]]
[ExplicitLE]
TransferSyntax1 = LittleEndianExplicit

[[PresentationContexts]]
[USExplicitLE]
PresentationContext1 = UltrasoundImageStorage\\ExplicitLE
PresentationContext2 = UltrasoundMultiframeImageStorage\\ExplicitLE

[[Profiles]]
[Bench]
PresentationContexts = USExplicitLE
"""

# Medians of one run: {(metric, server): value}.
Medians = dict[tuple[str, str], float]


@dataclass
class Client:
    """Paths and settings shared by every storescu invocation of a run."""

    run_dir: Path
    cfg: Path
    timeout: float
    last_pdv: int = 0

    def storescu(self, port: int, files: list[Path], env: dict[str, str],
                 tag: str) -> tuple[subprocess.Popen, Path]:
        """Start one storescu association sending ``files`` (not waited for); (proc, log)."""
        log_path = self.run_dir / f"storescu-{tag}.log"
        log_path.unlink(missing_ok=True)
        cmd = ["storescu", "-v", "-aet", CALLING_AET, "-aec", CALLED_AET,
               "-xf", str(self.cfg), STORESCU_PROFILE,
               "-to", "10", "-ta", "30", "-td", str(int(self.timeout)),
               "-ts", str(int(self.timeout)),
               LOOPBACK, str(port), *map(str, files)]
        return spawn(cmd, log_path, env), log_path

    def finish(self, proc: subprocess.Popen, log_path: Path, expected: int) -> None:
        """Wait for a storescu; raise unless it exited 0 with ``expected`` Success responses."""
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise ServerError(f"storescu timed out after {self.timeout:.0f} s")
        finally:
            forget(proc)
        text = log_path.read_text(errors="replace")
        pdv = re.search(r"Max Send PDV: (\d+)", text)
        if pdv:
            # What the server offered as its max PDU: differing values would skew the rates.
            self.last_pdv = int(pdv.group(1))
        ok = text.count("Received Store Response (Success)")
        if proc.returncode != 0 or ok != expected:
            raise ServerError(f"storescu exit {proc.returncode}, {ok}/{expected} Success; "
                              f"{log_path}:\n{tail(log_path, 8)}")

    def send(self, port: int, files: list[Path], env: dict[str, str], tag: str) -> float:
        """One association sending ``files``; seconds from spawn to exit of storescu."""
        t0 = time.perf_counter()
        proc, log_path = self.storescu(port, files, env, tag)
        self.finish(proc, log_path, len(files))
        return time.perf_counter() - t0

    def send_parallel(self, port: int, chunks: list[list[Path]], env: dict[str, str],
                      tag: str) -> float:
        """One association per chunk, all at once; seconds until the last one exits."""
        t0 = time.perf_counter()
        procs = [self.storescu(port, chunk, env, f"{tag}-{i}") for i, chunk in enumerate(chunks)]
        errors = []
        for (proc, log_path), chunk in zip(procs, chunks):
            try:
                self.finish(proc, log_path, len(chunk))
            except ServerError as exc:
                errors.append(str(exc))
        if errors:
            raise ServerError("; ".join(errors))
        return time.perf_counter() - t0


@dataclass
class Ctx:
    """What a workload needs: the data, the client, and the server under test."""

    data: datagen.BenchData
    client: Client
    env: dict[str, str]


Workload = Callable[[Ctx, Server], dict[str, float]]


def stored_bytes(server: Server) -> int:
    """Bytes under the server's storage folder (sanity check that it really stored)."""
    total = 0
    for dirpath, _dirs, files in os.walk(server.workdir / "storage"):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def wl_ingest(ctx: Ctx, server: Server) -> dict[str, float]:
    """All single frames over one association: instances/s."""
    seconds = ctx.client.send(server.port, ctx.data.singles, ctx.env, f"{server.name}-ingest")
    return {"ingest": len(ctx.data.singles) / seconds, "ingest_s": seconds,
            "ingest_max_send_pdv": ctx.client.last_pdv}


def wl_parallel(ctx: Ctx, server: Server) -> dict[str, float]:
    """The single frames split over PARALLEL simultaneous associations: aggregate instances/s."""
    files = ctx.data.singles
    size = -(-len(files) // PARALLEL)
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    seconds = ctx.client.send_parallel(server.port, chunks, ctx.env, f"{server.name}-par")
    return {"parallel": len(files) / seconds, "parallel_s": seconds}


def wl_cine(ctx: Ctx, server: Server) -> dict[str, float]:
    """The multi-frame cine over one association: seconds, and the server's RSS meanwhile."""
    assert server.proc is not None
    with RssSampler(server.proc.pid, interval=0.050) as rss:
        seconds = ctx.client.send(server.port, [ctx.data.cine], ctx.env, f"{server.name}-cine")
    mb = 1024 * 1024
    return {"cine_s": seconds, "cine_peak_rss_mb": (rss.peak or 0) / mb,
            "cine_idle_rss_mb": (rss.baseline or 0) / mb, "cine_rss_samples": len(rss.samples)}


def wl_none(ctx: Ctx, server: Server) -> dict[str, float]:
    """Nothing: the scenario only needs the readiness time."""
    return {}


IDLE_AFTER = 1.0  # s after readiness at which the idle RSS is read


def wl_startup(ctx: Ctx, server: Server) -> dict[str, float]:
    """After the first C-ECHO (timed by the trial): spawn to the first HTTP answer too
    (GET /system, polled every 10 ms), the CPU time the server used to get there (what
    the wall time becomes on a loaded machine), then the idle RSS IDLE_AFTER s later."""
    metrics: dict[str, float] = {}
    assert server.proc is not None
    if server.http_port:
        deadline = time.perf_counter() + 30.0
        while not http_answers(server.http_port):
            if time.perf_counter() > deadline:
                raise ServerError(f"{server.name} answered C-ECHO but not HTTP in 30 s")
            time.sleep(0.010)
        metrics["ready"] = time.perf_counter() - server.spawned_at
    cpu = tree_cpu(server.proc.pid)
    if cpu is not None:
        metrics["ready_cpu"] = cpu
    time.sleep(IDLE_AFTER)
    rss = tree_rss(server.proc.pid)
    if rss is not None:
        metrics["idle_rss_mb"] = rss / 1e6
    return metrics


SHUTDOWN_FILES = 50


def wl_before_shutdown(ctx: Ctx, server: Server) -> dict[str, float]:
    """A finished store run (so there is state to close), then nothing in flight."""
    ctx.client.send(server.port, ctx.data.singles[:SHUTDOWN_FILES], ctx.env,
                    f"{server.name}-pre-stop")
    return {}


@dataclass(frozen=True)
class Scenario:
    """A workload, the environment it runs in, and which servers take part."""

    name: str
    description: str
    workload: Workload
    tcp_nodelay: bool = False
    servers: tuple[str, ...] = SERVER_ORDER
    check_stored: float = 0.0  # fraction of the sent bytes that must be on disk afterwards


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("ingest", "the single frames (200 unless --singles), one storescu association "
             "(Nagle on: DCMTK default)",
             wl_ingest, check_stored=0.95),
    Scenario("ingest_nodelay", "the same with TCP_NODELAY=1 for the server and storescu",
             wl_ingest, tcp_nodelay=True, check_stored=0.95),
    Scenario("parallel", f"the single frames split over {PARALLEL} parallel storescu "
             "associations (Nagle on)",
             wl_parallel, check_stored=0.95),
    Scenario("parallel_nodelay", f"the same over {PARALLEL} parallel associations, TCP_NODELAY=1",
             wl_parallel, tcp_nodelay=True, check_stored=0.95),
    Scenario("cine", "one 150-frame 640x480 RGB cine (138 MB), server RSS sampled every 50 ms",
             wl_cine, check_stored=0.95),
    Scenario("startup", "spawn to first C-ECHO, and to C-ECHO and HTTP answered (polled "
             f"every 10 ms); RSS {IDLE_AFTER:g} s later", wl_startup),
    Scenario("shutdown", f"SIGTERM to exit, after a finished {SHUTDOWN_FILES}-image store",
             wl_before_shutdown),
)}

# (metric, label, unit, higher_is_better, scenario)
METRICS = [
    ("ingest", "ingest 1 assoc", "inst/s", True, "ingest"),
    ("ingest_nodelay", "ingest 1 assoc NODELAY", "inst/s", True, "ingest_nodelay"),
    ("parallel", f"ingest {PARALLEL} assoc", "inst/s", True, "parallel"),
    ("parallel_nodelay", f"ingest {PARALLEL} assoc NODELAY", "inst/s", True, "parallel_nodelay"),
    ("cine_s", "cine 150 frames", "s", False, "cine"),
    ("cine_peak_rss_mb", "cine peak RSS", "MB", False, "cine"),
    ("startup", "start-up to C-ECHO", "s", False, "startup"),
    ("ready", "start-up to C-ECHO + HTTP", "s", False, "startup"),
    ("ready_cpu", "CPU used to get ready", "s", False, "startup"),
    ("idle_rss_mb", "idle RSS after start", "MB", False, "startup"),
    ("shutdown", "SIGTERM to exit", "s", False, "shutdown"),
]


def _metric_key(scenario: Scenario, raw: str) -> str:
    """Workloads report 'ingest*'/'parallel*'; the NODELAY scenarios file them separately."""
    for prefix in ("ingest", "parallel"):
        if scenario.tcp_nodelay and raw.startswith(prefix):
            return raw.replace(prefix, f"{prefix}_nodelay", 1)
    return raw


# Targets from the issue. Each takes the medians and returns (description, met); met is
# None when a figure it needs was not measured in this run.
def _target_ingest(metric: str, m: Medians) -> tuple[str, bool | None]:
    app, ceil = m.get((metric, "appliance")), m.get((metric, "ceiling"))
    orth_nd = m.get(("ingest_nodelay", "orthanc"))
    desc = ">=0.85x ceiling & >=orthanc NODELAY"
    if app is None or ceil is None or orth_nd is None:
        return desc, None
    return desc, app >= 0.85 * ceil and app >= orth_nd


def _target_parallel(single_metric: str) -> Callable[[str, Medians], tuple[str, bool | None]]:
    def target(metric: str, m: Medians) -> tuple[str, bool | None]:
        app, single = m.get((metric, "appliance")), m.get((single_metric, "appliance"))
        desc = f">= appliance {single_metric}"
        return desc, None if app is None or single is None else app >= single
    return target


def _target_below(limit: float, unit: str) -> Callable[[str, Medians], tuple[str, bool | None]]:
    def target(metric: str, m: Medians) -> tuple[str, bool | None]:
        app = m.get((metric, "appliance"))
        return f"< {limit:g} {unit}", None if app is None else app < limit
    return target


TARGETS: dict[str, Callable[[str, Medians], tuple[str, bool | None]]] = {
    "ingest": _target_ingest,
    "ingest_nodelay": _target_ingest,
    "parallel": _target_parallel("ingest"),
    "parallel_nodelay": _target_parallel("ingest_nodelay"),
    "cine_peak_rss_mb": _target_below(150, "MB"),
    "startup": _target_below(0.5, "s"),  # issue 11 point 8
    "ready": _target_below(0.5, "s"),
    "idle_rss_mb": _target_below(60, "MB"),
    "shutdown": _target_below(1.0, "s"),
}


@dataclass
class Runner:
    """Runs trials, keeps the samples, and benches servers that cannot start."""

    root: Path
    data: datagen.BenchData
    client: Client
    keep: bool
    samples: list[dict] = field(default_factory=list)
    disabled: dict[str, str] = field(default_factory=dict)
    _start_failures: dict[str, int] = field(default_factory=dict)

    def trial(self, server_name: str, scenario: Scenario, rep: int) -> dict:
        """Start ``server_name`` fresh, run the scenario's workload, stop it; one sample."""
        env = base_env(scenario.tcp_nodelay)
        server = SERVER_CLASSES[server_name](name=server_name, root=self.root, keep=self.keep)
        sample: dict = {"scenario": scenario.name, "server": server_name, "rep": rep,
                        "tcp_nodelay": scenario.tcp_nodelay, "metrics": {}}
        try:
            try:
                server.start(env)
                sample["startup"] = server.wait_ready()
                self._start_failures[server_name] = 0
            except (ServerError, OSError) as exc:
                fails = self._start_failures.get(server_name, 0) + 1
                self._start_failures[server_name] = fails
                if fails >= 2 or rep < 0:
                    self.disabled[server_name] = _brief(str(exc))
                raise
            metrics = scenario.workload(Ctx(self.data, self.client, env), server)
            sample["metrics"] = {_metric_key(scenario, k): v for k, v in metrics.items()}
            if scenario.check_stored and server_name != "ceiling":
                sent = (self.data.cine.stat().st_size if scenario.name == "cine"
                        else self.data.single_bytes)
                on_disk = stored_bytes(server)
                sample["stored_mb"] = on_disk / 1e6
                if on_disk < scenario.check_stored * sent:
                    sample["warning"] = (f"only {on_disk / 1e6:.1f} MB on disk of "
                                         f"{sent / 1e6:.1f} MB sent")
        except (ServerError, OSError) as exc:
            sample["error"] = str(exc)
        except BaseException:
            # Interrupted: don't wait for the server to drain a store in flight.
            kill_all()
            raise
        finally:
            sample["shutdown"] = server.stop()
            if server.proc is not None and server.proc.returncode not in (0, None):
                sample["exit_code"] = server.proc.returncode
            server.cleanup()
        if scenario.name == "startup" and "startup" in sample:
            sample["metrics"]["startup"] = sample["startup"]
        if scenario.name == "shutdown" and "error" not in sample:
            if sample["shutdown"] is None:
                sample["error"] = "did not exit within 30 s of SIGTERM"
            else:
                sample["metrics"]["shutdown"] = sample["shutdown"]
        self.samples.append(sample)
        return sample


def _brief(message: str) -> str:
    """First and last line of a multi-line error (the last is usually the log's verdict)."""
    lines = [line for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message.strip()
    return f"{lines[0]} ... {lines[-1].strip()}"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "inst/s" or unit == "MB":
        return f"{value:.1f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _progress(sample: dict, n_reps: int) -> str:
    head = f"[{sample['scenario']} {sample['rep'] + 1}/{n_reps}] {sample['server']:9}"
    if "error" in sample:
        return f"{head} ERROR {sample['error'].splitlines()[0]}"
    parts = []
    for key, value in sample["metrics"].items():
        if key.endswith(("_samples", "_pdv")):
            continue
        parts.append(f"{key}={value:.3g}")
    ready, stop = sample.get("startup"), sample.get("shutdown")
    parts.append(f"(ready {ready:.2f} s" if ready is not None else "(ready ?")
    parts.append(f"stop {stop:.2f} s)" if stop is not None else "stop: killed)")
    if "warning" in sample:
        parts.append(f"WARNING {sample['warning']}")
    return f"{head} " + " ".join(parts)


def summarise(samples: list[dict]) -> tuple[Medians, dict]:
    """Medians per (metric, server), and the spread for the results file."""
    values: dict[tuple[str, str], list[float]] = {}
    for sample in samples:
        if "error" in sample:
            continue
        for key, value in sample["metrics"].items():
            values.setdefault((key, sample["server"]), []).append(value)
    medians = {k: statistics.median(v) for k, v in values.items()}
    spread = {f"{m}/{s}": {"median": statistics.median(v), "min": min(v), "max": max(v),
                           "n": len(v), "samples": v}
              for (m, s), v in sorted(values.items())}
    return medians, spread


def table(medians: Medians, scenarios: list[str]) -> tuple[str, list[dict]]:
    """The printed table and its rows (for the JSON)."""
    header = ["metric", "unit", "orthanc", "appliance", "ceiling", "app/orth", "app/ceil",
              "target (appliance)", "met"]
    rows, out = [], []
    for metric, label, unit, _higher, scen in METRICS:
        if scen not in scenarios:
            continue
        o, a, c = (medians.get((metric, s)) for s in SERVER_ORDER)
        r_o = a / o if a is not None and o else None
        r_c = a / c if a is not None and c and metric.startswith(("ingest", "parallel")) \
            else None
        desc, met = TARGETS[metric](metric, medians) if metric in TARGETS else ("", None)
        met_s = "" if metric not in TARGETS else {True: "yes", False: "NO", None: "?"}[met]
        rows.append({"metric": metric, "label": label, "unit": unit, "orthanc": o,
                     "appliance": a, "ceiling": c, "appliance_over_orthanc": r_o,
                     "appliance_over_ceiling": r_c, "target": desc, "met": met})
        out.append([label, unit, _fmt(o, unit), _fmt(a, unit), _fmt(c, unit),
                    "-" if r_o is None else f"{r_o:.2f}", "-" if r_c is None else f"{r_c:.2f}",
                    desc, met_s])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *out)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *out]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines), rows


def versions() -> dict[str, str]:
    """Versions of everything measured, for the results file."""
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return "?"
    import pydicom
    import pynetdicom
    return {
        "orthanc": first_line(["/usr/sbin/Orthanc", "--version"]),
        "storescu": first_line(["storescu", "--version"]),
        "python": platform.python_version(),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "appliance_git": first_line(["git", "-C", str(REPO_ROOT), "describe", "--always",
                                     "--dirty"]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; --scenarios and --only take comma-separated lists."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run",
        description="Benchmark pacs-appliance against Orthanc and bare pynetdicom.",
        epilog="scenarios: " + "; ".join(f"{s.name}: {s.description}"
                                         for s in SCENARIOS.values()))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per scenario (3)")
    parser.add_argument("--only", default=",".join(SERVER_ORDER),
                        help="comma-separated servers: orthanc, appliance, ceiling (all)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the servers' data folders and logs (printed at the end)")
    parser.add_argument("--data", type=Path, default=None,
                        help="cache folder for the generated DICOM files (default: "
                             f"{datagen.DEFAULT_CACHE}, with the count appended when "
                             "--singles is not the default)")
    parser.add_argument("--singles", type=int, default=datagen.SINGLE_COUNT,
                        help=f"single frames sent by the ingest scenarios "
                             f"({datagen.SINGLE_COUNT}); a larger set makes a run last "
                             "long enough to tell a few per cent apart")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds before a storescu run is abandoned (300)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install Orthanc when it is missing")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    bad += [s for s in args.only if s not in SERVER_ORDER]
    if bad:
        parser.error(f"unknown scenario/server: {', '.join(bad)}")
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be 1-50")
    if not 8 <= args.singles <= 20000:
        parser.error("--singles must be 8-20000")
    if args.data is None:
        args.data = datagen.DEFAULT_CACHE
        if args.singles != datagen.SINGLE_COUNT:
            # Its own folder: the default cache is not regenerated back and forth.
            args.data = args.data.with_name(f"{args.data.name}-{args.singles}")
    return args


def warm_page_cache(data: datagen.BenchData) -> None:
    """Read every input file once so the first trial doesn't pay for cold disk reads."""
    for path in [*data.singles, data.cine]:
        with open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios; print the table; write the JSON. Returns an exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    # The readiness poll makes pynetdicom log every refused connection at ERROR.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    byte_compile()
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            log.error("%s not found: apt-get install dcmtk", tool)
            return 1

    servers = [s for s in SERVER_ORDER if s in args.only]
    disabled: dict[str, str] = {}
    if "orthanc" in servers:
        try:
            if args.no_install and not Path("/usr/sbin/Orthanc").exists():
                raise InstallError("/usr/sbin/Orthanc missing and --no-install given")
            ensure_orthanc()
        except (InstallError, subprocess.TimeoutExpired, OSError) as exc:
            log.error("Orthanc unavailable: %s", exc)
            disabled["orthanc"] = str(exc).splitlines()[0]

    data = datagen.ensure_data(args.data, singles=args.singles)
    warm_page_cache(data)

    started = datetime.now()
    root = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    cfg = root / "storescu.cfg"
    cfg.write_text(STORESCU_CFG)
    runner = Runner(root=root, data=data, client=Client(root, cfg, args.timeout),
                    keep=args.keep)
    runner.disabled.update(disabled)
    load_before = os.getloadavg()
    t_run = time.perf_counter()
    interrupted = False
    # SIGTERM to the harness: stop like Ctrl-C (servers killed, partial results written)
    # rather than dying with servers left running.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # Preflight: one untimed start/echo/stop per server — warms caches and benches a
        # server that cannot start at all, instead of failing every trial.
        for name in servers:
            if name in runner.disabled:
                continue
            sample = runner.trial(name, SCENARIOS["startup"], rep=-1)
            runner.samples.remove(sample)
            if "error" in sample:
                log.error("%s cannot start, skipped for this run: %s", name,
                          sample["error"])
            else:
                log.info("preflight %s: ready in %.2f s", name, sample["startup"])
        for scen_name in args.scenarios:
            scenario = SCENARIOS[scen_name]
            log.info("== %s: %s", scenario.name, scenario.description)
            for rep in range(args.repeat):
                order = [s for s in SERVER_ORDER if s in servers and s in scenario.servers]
                if rep % 2:
                    order.reverse()
                for name in order:
                    if name in runner.disabled:
                        continue
                    sample = runner.trial(name, scenario, rep)
                    log.info("%s", _progress(sample, args.repeat))
    except KeyboardInterrupt:
        interrupted = True
        log.error("interrupted; reporting what was measured")
    finally:
        kill_all()
        signal.signal(signal.SIGTERM, previous)
    elapsed = time.perf_counter() - t_run

    medians, spread = summarise(runner.samples)
    text, rows = table(medians, args.scenarios)
    print()
    print(f"pacs-appliance benchmark, {started:%Y-%m-%d %H:%M}, {args.repeat} repetition(s), "
          f"medians; {elapsed:.0f} s; load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print(text)
    print("ratios: app/orth = appliance / orthanc (for s and MB, lower is better); "
          "app/ceil = appliance / bare pynetdicom receive")
    for name, why in runner.disabled.items():
        print(f"NOT MEASURED: {name}: {why}")
    errors = [s for s in runner.samples if "error" in s]
    for sample in errors:
        print(f"error: {sample['scenario']} rep {sample['rep'] + 1} {sample['server']}: "
              f"{_brief(sample['error'])}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"),
        "seconds": elapsed,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": versions(),
        "data": {"singles": len(data.singles), "single_mb": data.single_bytes / 1e6,
                 "cine_mb": data.cine.stat().st_size / 1e6},
        "table": rows,
        "stats": spread,
        "samples": runner.samples,
        "not_measured": runner.disabled,
        "interrupted": interrupted,
    }, indent=2))
    finish(out, root, args.keep)
    if interrupted:
        return 130
    return 0 if any("error" not in s for s in runner.samples) else 1


if __name__ == "__main__":
    sys.exit(main())
