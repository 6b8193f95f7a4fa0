"""DICOMweb benchmark: pacs-appliance against Orthanc + its DICOMweb plugin, same run.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.dicomweb_bench [--studies 2000,20000] [--repeat 50]
    .venv/bin/python -m tests.bench.dicomweb_bench --scenarios qido --studies 20000

Both servers are started once (fresh data folders, free loopback ports, the same
Orthanc-format config with the DICOMweb plugin enabled and auth off) and stay up for the
whole run. They are filled by C-STORE (DCMTK storescu, TCP_NODELAY=1, 4 parallel
associations) with small synthetic one-instance studies up to each ``--studies`` size in
turn; QIDO-RS is measured at every size, WADO-RS and metadata at the largest, STOW-RS at
the end (``--scenarios`` picks a subset). Every request is made through a keep-alive ``requests.Session``; each query is
warmed up before it is timed, and the timed repetitions alternate between the servers
(order reversed every repetition) so drift on this shared machine hits both alike.

A benchmark, not a test: exit 0 when it ran, 1 when nothing could be measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import requests  # noqa: E402

from tests.bench import datagen  # noqa: E402
from tests.bench.orthanc_install import InstallError, ensure_orthanc  # noqa: E402
from tests.bench.run import STORESCU_CFG, Client, versions, warm_page_cache  # noqa: E402
from tests.bench.servers import (  # noqa: E402
    finish,
    LOOPBACK, ApplianceServer, OrthancServer, Server, ServerError, base_env, free_port,
    kill_all, orthanc_style_config,
)

log = logging.getLogger("bench.dicomweb")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVERS = ("orthanc", "appliance")
SCENARIOS = ("qido", "wado", "stow")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ROOT = "/dicom-web"
PARALLEL = 4
STUDY20 = 20
STOW_BATCH = 10
SURNAMES = ["MUELLER", "MEIER", "SCHMIDT", "SCHNEIDER", "FISCHER", "WEBER", "WAGNER",
            "BECKER", "SCHULZ", "HOFFMANN", "KOCH", "RICHTER", "KLEIN", "WOLF", "NEUMANN",
            "SCHWARZ", "ZIMMERMANN", "BRAUN", "HARTMANN", "KRUEGER"]
FIRST_DATE = date(2015, 1, 1)
DATE_SPAN_DAYS = 3650
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_OCTET = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
SMALL_VERSION = 1


# -- data ---------------------------------------------------------------------------------

def small_study_fields(i: int) -> dict[str, str]:
    """Patient and date of synthetic study ``i`` (deterministic, varied)."""
    day = FIRST_DATE + timedelta(days=(i * 7919) % DATE_SPAN_DAYS)
    return {"PatientName": f"{SURNAMES[i % len(SURNAMES)]}^GIVEN{i:05d}",
            "PatientID": f"P{i // 2:06d}",  # two studies per patient
            "StudyDate": day.strftime("%Y%m%d")}


def ensure_small_studies(folder: Path, count: int) -> list[Path]:
    """``count`` one-instance studies, 64x64 RGB US, Explicit VR LE; cached in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"s{i:05d}.dcm" for i in range(count)]
    stamp = folder / "stamp.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("version") != SMALL_VERSION:
        for old in folder.glob("*.dcm"):
            old.unlink()
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        log.info("generating %d small studies in %s", len(missing), folder)
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8).tobytes()
    for i in missing:
        ds = datagen.base_dataset(datagen.US_IMAGE_STORAGE, datagen.uid("qido-sop", i),
                                   datagen.uid("qido-study", i), datagen.uid("qido-series", i),
                                   1, 1)
        for key, value in small_study_fields(i).items():
            setattr(ds, key, value)
        ds.SeriesDate = ds.ContentDate = ds.StudyDate
        ds.AccessionNumber = f"ACC{i:07d}"
        ds.Rows = ds.Columns = 64
        ds.PixelData = pixels
        datagen.write_file(ds, paths[i])
    stamp.write_text(json.dumps({"version": SMALL_VERSION}))
    return paths


def ensure_study20(folder: Path, singles: list[Path]) -> list[Path]:
    """A 20-instance study: the first 20 datagen single frames under new UIDs (one series)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"w{i:02d}.dcm" for i in range(STUDY20)]
    study, series = datagen.uid("wado20-study"), datagen.uid("wado20-series")
    for i, path in enumerate(paths):
        if path.exists():
            continue
        ds = pydicom.dcmread(singles[i])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = datagen.uid("wado20", i)
        ds.PatientID, ds.PatientName = "WADO20", "WADO^TWENTY"
        datagen.write_file(ds, path)
    return paths


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


# -- servers ------------------------------------------------------------------------------

def dicomweb_config(workdir: Path, dicom_port: int, http_port: int) -> dict:
    """The shared Orthanc-format config plus the DICOMweb plugin (ignored by the appliance)."""
    config = orthanc_style_config(workdir, dicom_port, http_port)
    config["Plugins"] = [DICOMWEB_PLUGIN]
    config["DicomWeb"] = {"Enable": True, "Root": ROOT + "/"}
    return config


class _WebMixin:
    http_port: int = 0

    def _config(self: Server) -> Path:  # type: ignore[misc]
        self.http_port = free_port()
        path = self.workdir / "config.json"
        path.write_text(json.dumps(dicomweb_config(self.workdir, self.port, self.http_port),
                                   indent=2))
        return path


@dataclass
class WebOrthanc(_WebMixin, OrthancServer):
    def command(self) -> tuple[list[str], Path | None]:
        return [str(self.binary), str(self._config())], self.workdir


@dataclass
class WebAppliance(_WebMixin, ApplianceServer):
    def command(self) -> tuple[list[str], Path | None]:
        from tests.bench.servers import REPO_ROOT
        return [self.python, "-m", "appliance", "serve", "--config", str(self._config())], \
            REPO_ROOT


def wait_http(server: _WebMixin, session: requests.Session, timeout: float = 60) -> None:
    """Until QIDO answers 200 (the plugin / web app may come up after C-ECHO)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if session.get(f"http://{LOOPBACK}:{server.http_port}{ROOT}/studies?limit=1",
                           timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise ServerError(f"{server.name}: no DICOMweb answer within {timeout:.0f} s")


def count_studies(server: _WebMixin, session: requests.Session) -> int:
    """Studies in the server, from Orthanc-compatible /statistics."""
    r = session.get(f"http://{LOOPBACK}:{server.http_port}/statistics", timeout=60)
    r.raise_for_status()
    return int(r.json()["CountStudies"])


# -- measuring ----------------------------------------------------------------------------

@dataclass
class Request:
    """One timed HTTP request kind."""

    key: str
    label: str
    path: str  # below the DICOMweb root, with query string
    accept: str = "application/dicom+json"
    gzip: bool = False
    check: Callable[[requests.Response], str | None] | None = None


def timed_get(session: requests.Session, base: str, req: Request) -> tuple[float, int]:
    headers = {"Accept": req.accept,
               "Accept-Encoding": "gzip, deflate" if req.gzip else "identity"}
    t0 = time.perf_counter()
    r = session.get(base + ROOT + req.path, headers=headers, timeout=120)
    body = r.content
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise ServerError(f"{req.key}: HTTP {r.status_code} {body[:200]!r}")
    if req.check is not None:
        problem = req.check(r)
        if problem:
            raise ServerError(f"{req.key}: {problem}")
    return dt, len(body)


def json_count(n_min: int, n_max: int) -> Callable[[requests.Response], str | None]:
    def check(r: requests.Response) -> str | None:
        n = len(r.json())
        return None if n_min <= n <= n_max else f"{n} results, expected {n_min}-{n_max}"
    return check


def min_bytes(n: int) -> Callable[[requests.Response], str | None]:
    def check(r: requests.Response) -> str | None:
        return None if len(r.content) >= n else f"{len(r.content)} bytes, expected >= {n}"
    return check


def measure(servers: dict[str, _WebMixin], sessions: dict[str, requests.Session],
            req: Request, reps: int, warmup: int = 3) -> dict[str, dict]:
    """Warm up, then ``reps`` alternating timed requests per server: times in ms, bytes."""
    out: dict[str, dict] = {}
    bases = {n: f"http://{LOOPBACK}:{s.http_port}" for n, s in servers.items()}
    times: dict[str, list[float]] = {n: [] for n in servers}
    sizes: dict[str, int] = {}
    failed: dict[str, str] = {}
    for name in servers:
        try:
            for _ in range(warmup):
                timed_get(sessions[name], bases[name], req)
        except (ServerError, requests.RequestException, ValueError) as exc:
            failed[name] = str(exc)[:300]
    for rep in range(reps):
        order = list(servers) if rep % 2 == 0 else list(reversed(servers))
        for name in order:
            if name in failed:
                continue
            try:
                dt, size = timed_get(sessions[name], bases[name], req)
            except (ServerError, requests.RequestException, ValueError) as exc:
                failed[name] = str(exc)[:300]
                continue
            times[name].append(dt * 1000)
            sizes[name] = size
    for name in servers:
        t = sorted(times[name])
        if name in failed or not t:
            out[name] = {"error": failed.get(name, "no sample")}
            continue
        out[name] = {"p50": statistics.median(t), "p95": t[min(len(t) - 1, int(0.95 * len(t)))],
                     "min": t[0], "max": t[-1], "n": len(t), "bytes": sizes[name],
                     "samples": t}
    return out


def stow(name: str, server: _WebMixin, session: requests.Session, files: list[Path]) -> dict:
    """POST the files in batches of STOW_BATCH; instances/s over the whole upload."""
    bodies = []
    for i in range(0, len(files), STOW_BATCH):
        boundary = uuid.uuid4().hex
        parts = [b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                 + p.read_bytes() + b"\r\n" for p in files[i:i + STOW_BATCH]]
        bodies.append((boundary, b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"))
    url = f"http://{LOOPBACK}:{server.http_port}{ROOT}/studies"
    t0 = time.perf_counter()
    for boundary, body in bodies:
        r = session.post(url, data=body, timeout=300, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"})
        failed = None
        if r.status_code == 200:
            try:
                failed = (r.json().get("00081198") or {}).get("Value")
            except ValueError:
                failed = "unparsable response"
        if r.status_code != 200 or failed:
            raise ServerError(f"{name} STOW: HTTP {r.status_code} {r.text[:300]}")
    seconds = time.perf_counter() - t0
    return {"inst_s": len(files) / seconds, "seconds": seconds}


def storescu_client(prefix: str, timeout: float) -> tuple[Path, Client]:
    """A run folder and the storescu client that fills the servers from it."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    cfg = root / "storescu.cfg"
    cfg.write_text(STORESCU_CFG)
    return root, Client(root, cfg, timeout=timeout)


def start_servers(classes: dict[str, type], args: argparse.Namespace, root: Path,
                  env: dict[str, str], errors: list[str], startup: dict[str, float],
                  ready: Callable[[Server], None] = lambda srv: None) -> dict[str, Server]:
    """Start each server of ``args.only`` and wait for its C-ECHO (seconds in ``startup``)
    and ``ready``; one that cannot start is noted in ``errors``. ServerError if none did."""
    servers = {}
    for name in args.only:
        srv = classes[name](name=name, root=root, keep=args.keep)
        try:
            srv.start(env)
            startup[name] = srv.wait_ready(timeout=60)
            ready(srv)
            servers[name] = srv
        except (ServerError, OSError) as exc:
            errors.append(f"{name} cannot start: {exc}")
            log.error("%s cannot start: %s", name, exc)
            srv.stop()
    if not servers:
        raise ServerError("no server started")
    return servers


def fill(name: str, server: Server, client: Client, files: list[Path], env: dict,
         record: dict[str, list] | None = None, to: int = 0) -> dict:
    """C-STORE ``files`` over PARALLEL storescu associations; instances/s (also appended,
    with ``to``, the archive size reached, to ``record[name]``)."""
    size = -(-len(files) // PARALLEL)
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    seconds = client.send_parallel(server.port, chunks, env, f"{name}-fill")
    res = {"instances": len(files), "seconds": seconds, "inst_s": len(files) / seconds}
    if record is not None:
        record.setdefault(name, []).append({"to": to, **res})
    return res


# -- report -------------------------------------------------------------------------------

def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def build_table(rows: list[dict]) -> str:
    header = ["metric", "unit", "orthanc", "appliance", "app/orth", "target (appliance)", "met"]
    out = []
    for row in rows:
        o, a = row["orthanc"], row["appliance"]
        ratio = a / o if a is not None and o else None
        met = {True: "yes", False: "NO", None: "?"}[row["met"]] if row["target"] else ""
        out.append([row["label"], row["unit"], _fmt(o), _fmt(a),
                    "-" if ratio is None else f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}",
                    row["target"], met])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *out)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *out]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def evaluate(o: float | None, a: float | None, kind: str) -> bool | None:
    """Target kinds: 'lt10' (a < 10 ms), 'lt10x3' (and o/a >= 3), 'x3', 'x20', 'le', 'ge'."""
    if a is None or (kind != "lt10" and o is None):
        return None
    if kind == "lt10":
        return a < 10
    if kind == "lt10x3":
        return a < 10 and o / a >= 3
    if kind == "x3":
        return o / a >= 3
    if kind == "x20":
        return a < o / 20
    if kind == "le":
        return a <= o
    return a >= o  # "ge": throughput


TARGET_TEXT = {"lt10": "p50 < 10 ms", "lt10x3": "p50 < 10 ms & >= 3x faster",
               "x3": ">= 3x faster", "x20": "< 1/20 of orthanc", "le": "<= orthanc",
               "ge": ">= orthanc"}


# -- main ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.dicomweb_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="2000,20000",
                        help="comma-separated index sizes for QIDO (default 2000,20000)")
    parser.add_argument("--repeat", type=int, default=50,
                        help="timed repetitions per request (default 50; the cine frame and "
                             "whole-study retrieve use at most 15)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of qido, wado, stow (default: all); "
                             "e.g. qido alone to iterate on search speed without the slow parts")
    parser.add_argument("--data", type=Path, default=datagen.DEFAULT_CACHE)
    parser.add_argument("--only", default=",".join(SERVERS))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.studies = sorted({int(x) for x in args.studies.split(",") if x.strip()})
    except ValueError:
        parser.error("--studies: comma-separated integers")
    if not args.studies or args.studies[0] < 1100 or args.studies[-1] > 100_000:
        parser.error("--studies: sizes between 1100 (offset 1000 + limit 100) and 100000")
    if not 5 <= args.repeat <= 500:
        parser.error("--repeat must be 5-500")
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if not args.scenarios or any(s not in SCENARIOS for s in args.scenarios):
        parser.error("--scenarios: comma-separated subset of " + ", ".join(SCENARIOS))
    args.only = [s for s in args.only.split(",") if s]
    if any(s not in SERVERS for s in args.only):
        parser.error("--only: orthanc, appliance")
    return args


def prepare(args: argparse.Namespace, plugins: tuple[str, ...] = ()) -> bool:
    """Logging, and Orthanc (with ``plugins``) installed, else dropped from ``args.only``;
    False when no server is left to measure. Shared with qr_find_bench."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if "orthanc" in args.only:
        try:
            ensure_orthanc()
        except (InstallError, OSError) as exc:
            log.error("Orthanc unavailable: %s", exc)
            args.only.remove("orthanc")
        missing = [p for p in plugins if not Path(p).exists()]
        if missing and "orthanc" in args.only:
            log.error("%s missing: apt-get install orthanc-dicomweb", ", ".join(missing))
            args.only.remove("orthanc")
    return bool(args.only)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare(args, (DICOMWEB_PLUGIN,)):
        return 1

    started = datetime.now()
    t_run = time.perf_counter()
    load_before = os.getloadavg()
    data = datagen.ensure_data(args.data)
    t_gen = time.perf_counter()
    small = ensure_small_studies(args.data / "dicomweb-small", args.studies[-1])
    study20 = ensure_study20(args.data / "dicomweb-study20", data.singles)
    gen_s = time.perf_counter() - t_gen
    warm_page_cache(data)
    for p in [*small, *study20]:
        p.read_bytes()

    root, client = storescu_client("pacs-dwbench-", timeout=900)
    env = base_env(True)  # TCP_NODELAY=1 for servers and storescu alike
    classes = {"orthanc": WebOrthanc, "appliance": WebAppliance}
    servers: dict[str, _WebMixin] = {}
    sessions: dict[str, requests.Session] = {}
    results: dict = {"fill": {}, "qido": {}, "wado": {}, "stow": {}, "startup": {}}
    errors: list[str] = []
    rows: list[dict] = []
    interrupted = False

    def web_ready(srv: _WebMixin) -> None:
        sessions[srv.name] = requests.Session()
        wait_http(srv, sessions[srv.name])

    try:
        servers = start_servers(classes, args, root, env, errors, results["startup"], web_ready)

        # Fixed objects: the 20-instance study and the cine (C-STORE, untimed).
        for name, srv in servers.items():
            client.send(srv.port, study20, env, f"{name}-study20")
            client.send(srv.port, [data.cine], env, f"{name}-cine")

        s20, se20, i20 = uids(study20[0])
        cs, cse, ci = uids(data.cine)
        frame_bytes = datagen.ROWS * datagen.COLUMNS * 3
        filled = 0
        for size in args.studies:
            for name, srv in servers.items():
                res = fill(name, srv, client, small[filled:size], env, results["fill"], size)
                n = count_studies(srv, sessions[name])
                log.info("%s: filled %d -> %d studies at %.0f inst/s (%.0f s); index has %d "
                         "studies", name, filled, size, res["inst_s"], res["seconds"], n)
                if n != size + 2:  # + the 20-instance study and the cine's study
                    errors.append(f"{name}: {n} studies in the index, expected {size + 2}")
            filled = size
            if "qido" not in args.scenarios:
                continue
            # Queries whose answer size is known from the generator.
            pid = "P000500"
            lo = FIRST_DATE + timedelta(days=1000)
            hi = lo + timedelta(days=29)
            rng = f"{lo:%Y%m%d}-{hi:%Y%m%d}"
            in_range = sum(1 for i in range(size)
                           if lo <= datetime.strptime(small_study_fields(i)["StudyDate"],
                                                      "%Y%m%d").date() <= hi)
            q_study = uids(small[size // 2])[0]
            queries = [
                Request("patientid", "QIDO PatientID", f"/studies?PatientID={pid}",
                        check=json_count(2, 2)),
                Request("name_wildcard", "QIDO PatientName=MUELLER* limit=50",
                        "/studies?PatientName=MUELLER*&limit=50", check=json_count(50, 50)),
                Request("date_range", "QIDO 30-day StudyDate limit=100",
                        f"/studies?StudyDate={rng}&limit=100",
                        check=json_count(min(in_range, 100), min(in_range, 100))),
                Request("offset", "QIDO limit=100 offset=1000", "/studies?limit=100&offset=1000",
                        check=json_count(100, 100)),
                Request("study_series", "QIDO /studies/{s}/series", f"/studies/{q_study}/series",
                        check=json_count(1, 1)),
            ]
            for q in queries:
                res = measure(servers, sessions, q, args.repeat)
                results["qido"].setdefault(str(size), {})[q.key] = res
                log.info("%6d studies %-36s %s", size, q.label, "  ".join(
                    f"{n} p50 {r['p50']:.1f} p95 {r['p95']:.1f} ms" if "p50" in r
                    else f"{n} ERROR {r['error']}" for n, r in res.items()))
            results["qido"][str(size)]["date_range_matches"] = in_range

        heavy = min(args.repeat, 15)
        wado = [
            (Request("metadata", "study metadata (20 inst)", f"/studies/{s20}/metadata",
                     check=json_count(STUDY20, STUDY20)), args.repeat),
            (Request("study", "WADO whole study (20 inst)", f"/studies/{s20}", accept=ACCEPT_DICOM,
                     check=min_bytes(sum(p.stat().st_size for p in study20) - 128 * STUDY20)),
             heavy),
            (Request("instance", "WADO one instance, no gzip",
                     f"/studies/{s20}/series/{se20}/instances/{i20}", accept=ACCEPT_DICOM,
                     check=min_bytes(study20[0].stat().st_size - 128)), args.repeat),
            (Request("instance_gzip", "WADO one instance, gzip accepted",
                     f"/studies/{s20}/series/{se20}/instances/{i20}", accept=ACCEPT_DICOM,
                     gzip=True), args.repeat),
            (Request("frame1", "WADO frame 1 of an instance",
                     f"/studies/{s20}/series/{se20}/instances/{i20}/frames/1",
                     accept=ACCEPT_OCTET, check=min_bytes(frame_bytes)), args.repeat),
            (Request("cine_frame75", "WADO frame 75 of 150-frame cine",
                     f"/studies/{cs}/series/{cse}/instances/{ci}/frames/75",
                     accept=ACCEPT_OCTET, check=min_bytes(frame_bytes)), heavy),
        ]
        for req, reps in (wado if "wado" in args.scenarios else []):
            res = measure(servers, sessions, req, reps, warmup=2)
            results["wado"][req.key] = res
            log.info("%-36s %s", req.label, "  ".join(
                f"{n} p50 {r['p50']:.1f} ms ({r['bytes'] / 1e6:.2f} MB)" if "p50" in r
                else f"{n} ERROR {r['error']}" for n, r in res.items()))

        # STOW last: it adds the 200 single frames to the cine's study.
        stowing = servers if "stow" in args.scenarios else {}
        for name in (list(stowing) if len(args.studies) % 2 else list(reversed(stowing))):
            try:
                results["stow"][name] = stow(name, servers[name], sessions[name], data.singles)
                log.info("%s STOW %.0f inst/s", name, results["stow"][name]["inst_s"])
            except (ServerError, requests.RequestException) as exc:
                errors.append(str(exc)[:300])
    except KeyboardInterrupt:
        interrupted = True
        log.error("interrupted; reporting what was measured")
    except (ServerError, OSError) as exc:
        errors.append(f"aborted: {str(exc)[:500]}")
        log.error("aborted: %s", exc)
    finally:
        for srv in servers.values():
            results.setdefault("shutdown", {})[srv.name] = srv.stop()
            srv.cleanup()
        kill_all()
    elapsed = time.perf_counter() - t_run

    def p50(section: dict, key: str, server: str) -> float | None:
        return section.get(key, {}).get(server, {}).get("p50")

    largest = str(args.studies[-1])
    qido_targets = {"patientid": "lt10", "name_wildcard": "lt10x3", "date_range": "lt10x3",
                    "offset": "lt10x3", "study_series": "lt10"}
    for size in map(str, args.studies):
        for key, label in [("patientid", "QIDO PatientID"),
                           ("name_wildcard", "QIDO Name=MUELLER* limit 50"),
                           ("date_range", "QIDO 30-day date limit 100"),
                           ("offset", "QIDO limit 100 offset 1000"),
                           ("study_series", "QIDO /studies/{s}/series")]:
            for stat in ("p50", "p95"):
                vals = [results["qido"].get(size, {}).get(key, {}).get(s, {}).get(stat)
                        for s in SERVERS]
                kind = qido_targets[key] if stat == "p50" and size == largest else None
                rows.append({"metric": f"qido_{key}_{size}_{stat}",
                             "label": f"{label} @{size} {stat}", "unit": "ms",
                             "orthanc": vals[0], "appliance": vals[1],
                             "target": TARGET_TEXT.get(kind or "", ""),
                             "met": evaluate(vals[0], vals[1], kind) if kind else None})
    for key, label, kind in [("metadata", "study metadata 20 inst p50", "x3"),
                             ("instance", "one instance, no gzip p50", "le"),
                             ("instance_gzip", "one instance, gzip accepted p50", None),
                             ("frame1", "frame 1 of an instance p50", None),
                             ("cine_frame75", "frame 75 of 150-frame cine p50", "x20")]:
        o, a = (p50(results["wado"], key, s) for s in SERVERS)
        rows.append({"metric": key, "label": label, "unit": "ms", "orthanc": o, "appliance": a,
                     "target": TARGET_TEXT.get(kind or "", ""),
                     "met": evaluate(o, a, kind) if kind else None})
    study = results["wado"].get("study", {})
    mbps = [study[s]["bytes"] / 1e6 / (study[s]["p50"] / 1000) if "p50" in study.get(s, {})
            else None for s in SERVERS]
    rows.append({"metric": "study_mb_s", "label": "WADO whole study (20 inst, p50)",
                 "unit": "MB/s", "orthanc": mbps[0], "appliance": mbps[1],
                 "target": TARGET_TEXT["ge"], "met": evaluate(mbps[0], mbps[1], "ge")})
    st = [results["stow"].get(s, {}).get("inst_s") for s in SERVERS]
    rows.append({"metric": "stow_inst_s", "label": f"STOW 200 inst, batches of {STOW_BATCH}",
                 "unit": "inst/s", "orthanc": st[0], "appliance": st[1],
                 "target": TARGET_TEXT["ge"], "met": evaluate(st[0], st[1], "ge")})
    for s in SERVERS:
        for f in results["fill"].get(s, []):
            rows.append({"metric": f"fill_{s}_{f['to']}", "label": f"C-STORE fill to {f['to']} "
                         f"({s})", "unit": "inst/s",
                         "orthanc": f["inst_s"] if s == "orthanc" else None,
                         "appliance": f["inst_s"] if s == "appliance" else None,
                         "target": "", "met": None})

    load_after = os.getloadavg()
    print()
    print(f"DICOMweb benchmark, {started:%Y-%m-%d %H:%M}, studies {args.studies}, "
          f"{args.repeat} timed reps (cine frame/whole study {min(args.repeat, 15)}); "
          f"{elapsed:.0f} s (data generation {gen_s:.0f} s); "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(build_table(rows))
    print(f"targets evaluated at {largest} studies; app/orth < 1 = appliance faster for ms, "
          "> 1 = faster for MB/s and inst/s")
    for e in errors:
        print(f"error: {e}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"dicomweb-{started:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"), "seconds": elapsed,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                 "loadavg_after": load_after},
        "versions": versions(), "table": rows, "results": results, "errors": errors,
        "interrupted": interrupted,
    }, indent=2))
    finish(out, root, args.keep)
    if interrupted:
        return 130
    return 0 if any(r["appliance"] is not None or r["orthanc"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
