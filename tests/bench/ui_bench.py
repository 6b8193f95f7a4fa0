"""Web UI benchmark: the study list and the first thumbnail, pacs-appliance against
Orthanc 1.10.1 (what Orthanc Explorer 2 asks it for), same data, same run.

Run from the repository root with the venv's interpreter::

    .venv/bin/python -m tests.bench.ui_bench [--studies 20000] [--repeat 30] [--browser 10]

Both servers are started once (fresh data folders, free loopback ports, the Orthanc-format
config of tests/bench/dicomweb_bench.py, auth off) and filled by C-STORE (DCMTK storescu,
4 associations) with the 20-instance study (640x480 RGB US, datagen) and ``--studies``
small one-instance studies (dicomweb_bench's generator: 20 surnames, dates over 10 years).
Then, with a keep-alive ``requests.Session``, warmed up, alternating between the servers:

* study list, first page: ours ``GET {root}/studies?orderby=-StudyDate&limit=51`` (what
  the UI's Studies page asks: 50 newest and one more for "next page"); Orthanc Explorer
  2's ``POST /tools/find {"Level": "Study", "Query": {}, "Expand": true, "Limit": 50}``
  (Orthanc 1.10 cannot order: its first 50, unsorted);
* study list, name search: ``PatientName=*mueller*`` (case-insensitive, both);
* study list, a deep page: offset 10,000 (Orthanc: ``"Since": 10000``);
* time to first thumbnail of the 20-image study, as each UI gets it: ours the series
  search then ``.../series/{s}/thumbnail?viewport=128,128``; Orthanc Explorer 2's
  ``/tools/find`` of the study's series (Expand) then ``/instances/{first}/preview``.

With ``--browser N`` (default 10; 0: off) headless Chromium also times the appliance's
pages as a person sees them: navigation to the Studies page until its 50 rows are drawn,
and to the study page until the first thumbnail is decoded (there is no Orthanc Explorer
2 in Debian's Orthanc 1.10.1 to compare with in a browser).

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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests  # noqa: E402

from tests.bench import datagen  # noqa: E402
from tests.bench.dicomweb_bench import (  # noqa: E402
    DICOMWEB_PLUGIN, ROOT, RESULTS_DIR, WebAppliance, WebOrthanc, count_studies,
    ensure_small_studies, ensure_study20, fill, uids, wait_http,
)
from tests.bench.orthanc_install import InstallError, ensure_orthanc  # noqa: E402
from tests.bench.run import STORESCU_CFG, Client, versions  # noqa: E402
from tests.bench.servers import LOOPBACK, ServerError, base_env, finish, kill_all  # noqa: E402

log = logging.getLogger("bench.ui")
PAGE = 50
TARGET_MS = 300.0

Timed = Callable[[requests.Session, str], object]


def _ok(r: requests.Response, what: str) -> requests.Response:
    if r.status_code != 200:
        raise ServerError(f"{what}: HTTP {r.status_code} {r.text[:200]}")
    return r


def _count(n: int, what: str) -> Callable[[list], None]:
    def check(rows: list) -> None:
        if len(rows) != n:
            raise ServerError(f"{what}: {len(rows)} results, expected {n}")
    return check


# -- the requests each UI makes -----------------------------------------------------------

def ours_list(query: str, n: int) -> Timed:
    def run(s: requests.Session, base: str) -> object:
        rows = _ok(s.get(f"{base}{ROOT}/studies?orderby=-StudyDate&includefield=StudyDescription"
                         f"&limit={PAGE + 1}{query}", headers={"Accept": "application/dicom+json"},
                         timeout=60), "study list").json()
        _count(n, "appliance study list")(rows)
        return rows
    return run


def orthanc_list(query: dict, since: int, n: int) -> Timed:
    def run(s: requests.Session, base: str) -> object:
        body = {"Level": "Study", "Query": query, "Expand": True, "Limit": PAGE}
        if since:
            body["Since"] = since
        rows = _ok(s.post(f"{base}/tools/find", data=json.dumps(body), timeout=60),
                   "tools/find").json()
        _count(n, "orthanc tools/find")(rows)
        return rows
    return run


def ours_thumbnail(study: str) -> Timed:
    def run(s: requests.Session, base: str) -> object:
        series = _ok(s.get(f"{base}{ROOT}/studies/{study}/series?includefield=SeriesDescription",
                           headers={"Accept": "application/dicom+json"}, timeout=60), "series").json()
        suid = series[0]["0020000E"]["Value"][0]
        r = _ok(s.get(f"{base}{ROOT}/studies/{study}/series/{suid}/thumbnail?viewport=128,128",
                      headers={"Accept": "image/jpeg"}, timeout=60), "thumbnail")
        return len(r.content)
    return run


def orthanc_thumbnail(study: str) -> Timed:
    def run(s: requests.Session, base: str) -> object:
        series = _ok(s.post(f"{base}/tools/find", data=json.dumps(
            {"Level": "Series", "Query": {"StudyInstanceUID": study}, "Expand": True}),
            timeout=60), "tools/find series").json()
        first = series[0]["Instances"][0]
        r = _ok(s.get(f"{base}/instances/{first}/preview", headers={"Accept": "image/jpeg"},
                      timeout=60), "preview")
        return len(r.content)
    return run


def measure(runs: dict[str, Timed], bases: dict[str, str], sessions: dict[str, requests.Session],
            reps: int, warmup: int = 3) -> dict[str, dict]:
    """Warm up, then ``reps`` alternating timed runs per server: ms percentiles."""
    times: dict[str, list[float]] = {n: [] for n in runs}
    errors: dict[str, str] = {}
    for name, run in runs.items():
        try:
            for _ in range(warmup):
                run(sessions[name], bases[name])
        except (ServerError, requests.RequestException, ValueError, LookupError) as exc:
            errors[name] = str(exc)[:300]
    for rep in range(reps):
        for name in (list(runs) if rep % 2 == 0 else list(reversed(runs))):
            if name in errors:
                continue
            t0 = time.perf_counter()
            try:
                runs[name](sessions[name], bases[name])
            except (ServerError, requests.RequestException, ValueError, LookupError) as exc:
                errors[name] = str(exc)[:300]
                continue
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: ({"error": errors[name]} if name in errors or not times[name] else _stats(times[name]))
            for name in runs}


def _stats(samples: list[float]) -> dict:
    t = sorted(samples)
    return {"p50": statistics.median(t), "p95": t[min(len(t) - 1, int(0.95 * len(t)))],
            "min": t[0], "max": t[-1], "n": len(t)}


# -- the appliance's pages in a browser ---------------------------------------------------

def browser_times(base: str, study: str, reps: int) -> dict[str, dict]:
    """Navigation to the drawn study list and to the first decoded thumbnail (ms)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    pages = {
        "list": ("#/studies", f"return document.querySelectorAll('tr.study-row').length === {PAGE}"),
        "thumbnail": (f"#/study/{study}", "const i = document.querySelector('img.thumb');"
                                          "return !!(i && i.complete && i.naturalWidth > 0)"),
    }
    out: dict[str, dict] = {}
    try:
        for key, (fragment, done) in pages.items():
            samples = []
            for rep in range(reps + 1):
                driver.get("about:blank")
                t0 = time.perf_counter()
                driver.get(f"{base}/{fragment}")
                WebDriverWait(driver, 60, poll_frequency=0.005).until(lambda d: d.execute_script(done))
                if rep:  # the first one warms the browser's cache of the page's own files
                    samples.append((time.perf_counter() - t0) * 1000)
            out[key] = _stats(samples)
    finally:
        driver.quit()
    return out


# -- main ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=30, help="timed requests per server and query")
    p.add_argument("--browser", type=int, default=10, help="browser page loads per page (0: off)")
    p.add_argument("--data", type=Path, default=datagen.DEFAULT_CACHE)
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    names = ["orthanc", "appliance"]
    try:
        ensure_orthanc()
        if not Path(DICOMWEB_PLUGIN).exists():
            raise InstallError(f"{DICOMWEB_PLUGIN} missing")
    except (InstallError, OSError) as exc:
        log.error("Orthanc unavailable (%s): measuring the appliance alone", exc)
        names.remove("orthanc")
    started, t_run, load_before = datetime.now(), time.perf_counter(), os.getloadavg()
    data = datagen.ensure_data(args.data)
    small = ensure_small_studies(args.data / "dicomweb-small", args.studies)
    study20 = ensure_study20(args.data / "dicomweb-study20", data.singles)
    s20 = uids(study20[0])[0]
    root = Path(tempfile.mkdtemp(prefix="pacs-uibench-"))
    (root / "storescu.cfg").write_text(STORESCU_CFG)
    client = Client(root, root / "storescu.cfg", timeout=1800)
    env = base_env(True)
    classes = {"orthanc": WebOrthanc, "appliance": WebAppliance}
    servers, sessions, results, errors = {}, {}, {"fill": {}, "http": {}, "browser": {}}, []
    try:
        for name in names:
            srv = classes[name](name=name, root=root, keep=args.keep)
            srv.start(env)
            srv.wait_ready(timeout=60)
            sessions[name] = requests.Session()
            wait_http(srv, sessions[name])
            servers[name] = srv
        for name, srv in servers.items():
            client.send(srv.port, study20, env, f"{name}-study20")
            results["fill"][name] = fill(name, srv, client, small, env)
            n = count_studies(srv, sessions[name])
            log.info("%s: %d studies (%.0f inst/s)", name, n, results["fill"][name]["inst_s"])
            if n != args.studies + 1:
                errors.append(f"{name}: {n} studies, expected {args.studies + 1}")
        bases = {n: f"http://{LOOPBACK}:{s.http_port}" for n, s in servers.items()}
        mueller = sum(1 for i in range(args.studies) if i % 20 == 0)  # SURNAMES[0]
        scenarios = {
            "list_first_page": {"appliance": ours_list("", PAGE + 1),
                                "orthanc": orthanc_list({}, 0, PAGE)},
            "list_name_search": {"appliance": ours_list("&PatientName=*mueller*", min(mueller, PAGE + 1)),
                                 "orthanc": orthanc_list({"PatientName": "*mueller*"}, 0, min(mueller, PAGE))},
            "list_offset_10000": {"appliance": ours_list("&offset=10000", PAGE + 1),
                                  "orthanc": orthanc_list({}, 10000, PAGE)},
            "first_thumbnail_20": {"appliance": ours_thumbnail(s20), "orthanc": orthanc_thumbnail(s20)},
        }
        for key, runs in scenarios.items():
            runs = {n: r for n, r in runs.items() if n in servers}
            res = measure(runs, bases, sessions, args.repeat)
            results["http"][key] = res
            log.info("%-20s %s", key, "  ".join(
                f"{n} p50 {r['p50']:.1f} p95 {r['p95']:.1f} ms" if "p50" in r else f"{n} ERROR {r['error']}"
                for n, r in res.items()))
        if args.browser and "appliance" in servers:
            results["browser"] = browser_times(bases["appliance"], s20, args.browser)
            log.info("browser (appliance): %s", {k: f"p50 {v['p50']:.0f} p95 {v['p95']:.0f} ms"
                                                 for k, v in results["browser"].items()})
    except (ServerError, OSError) as exc:
        errors.append(f"aborted: {str(exc)[:500]}")
        log.error("aborted: %s", exc)
    finally:
        for srv in servers.values():
            srv.stop()
            srv.cleanup()
        kill_all()

    table = _table(results)
    print(table)
    for e in errors:
        print("ERROR:", e)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"ui-{started:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"started": started.isoformat(), "seconds": time.perf_counter() - t_run,
                               "args": {k: str(v) for k, v in vars(args).items()},
                               "versions": versions(), "load_before": load_before,
                               "load_after": os.getloadavg(), "results": results,
                               "table": table, "errors": errors}, indent=1))
    print(f"results: {out}")
    finish(RESULTS_DIR, root, args.keep)
    return 0 if results["http"] else 1


def _table(results: dict) -> str:
    lines = [f"{'metric':<34}{'orthanc p50/p95':>18}{'appliance p50/p95':>20}{'orth/app':>10}  target"]
    for key, res in results["http"].items():
        o, a = res.get("orthanc", {}), res.get("appliance", {})
        cell = lambda r: f"{r['p50']:.1f}/{r['p95']:.1f}" if "p50" in r else "-"  # noqa: E731
        ratio = f"{o['p50'] / a['p50']:.1f}x" if "p50" in o and "p50" in a else "-"
        target = (f"< {TARGET_MS:.0f} ms and faster: "
                  f"{'yes' if 'p50' in a and a['p50'] < TARGET_MS and ('p50' not in o or a['p50'] < o['p50']) else 'NO'}"
                  if key.startswith("list") else "")
        lines.append(f"{key + ' (ms)':<34}{cell(o):>18}{cell(a):>20}{ratio:>10}  {target}")
    for key, r in results.get("browser", {}).items():
        cell = f"{r['p50']:.0f}/{r['p95']:.0f}"
        lines.append(f"{'browser ' + key + ' (ms)':<34}{'-':>18}{cell:>20}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
