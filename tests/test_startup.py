"""Start-up stays light (issue 11 point 8): the pixel stack loads on the first request
that needs pixels, not before, and deferring it changes nothing pydicom answers.

What a process has loaded is read from outside, in ``/proc/PID/maps``: a deferred
package (numpy, Pillow, GDCM, pylibjpeg's codecs) maps its shared objects only once
its code has run, whatever ``sys.modules`` holds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE

from appliance import lazyimports
from appliance.dicom.commitment import CommitmentScp
from appliance.dicom.handlers import DicomHandlers
from appliance.dicom.qr_find import FindLimits, QueryRetrieveFind
from appliance.dicom.retrieve import RetrieveDimse
from appliance.dicom.services import UNCOMPRESSED, DimseService, ServiceRegistry
from tests.support import scu_store

# Folders under site-packages whose shared objects say that the package's code ran.
HEAVY = {
    "numpy": ("numpy/", "numpy.libs/"),
    "Pillow": ("PIL/", "pillow.libs/"),
    "GDCM": ("_gdcm/", "python_gdcm.libs/"),
    "openjpeg": ("openjpeg/", "_openjpeg."),
    "pylibjpeg-rle": ("rle/",),
}
REPO = Path(__file__).resolve().parents[1]


def loaded_heavy(pid: int) -> set[str]:
    """The HEAVY packages mapped into process ``pid``."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            _, sep, inside = (fields[5] if len(fields) == 6 else "").partition("site-packages/")
            if not sep:
                continue
            found.update(name for name, prefixes in HEAVY.items() if inside.startswith(prefixes))
    return found


def http_get(daemon, path: str, accept: str = "application/dicom+json") -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}{path}",
                                     headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200
        return r.read()


def c_echo(daemon) -> None:
    """One C-ECHO on an association of its own, answered Success."""
    ae = AE(ae_title="STARTUP")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", daemon.dicom_port, ae_title="ORTHANC")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_ready_daemon_has_not_loaded_the_pixel_stack(daemon):
    """C-ECHO, a C-STORE, QIDO-RS and metadata need no pixels: nothing heavy is loaded.
    The first rendered frame loads numpy, Pillow and a JPEG codec (so the check can fail)."""
    c_echo(daemon)
    assert http_get(daemon, "/system", "application/json")
    assert loaded_heavy(daemon.proc.pid) == set()

    jpeg = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))  # JPEG Baseline, RGB
    assert scu_store(daemon.dicom_port, [jpeg]) == [0]
    ds = dcmread(jpeg, stop_before_pixels=True)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    found = json.loads(http_get(daemon, f"/dicom-web/studies?StudyInstanceUID={study}"))
    assert len(found) == 1
    assert json.loads(http_get(daemon, f"/dicom-web/studies/{study}/metadata"))
    assert loaded_heavy(daemon.proc.pid) == set()

    body = http_get(daemon, f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
                            "/rendered", "image/jpeg")
    assert body[:2] == b"\xff\xd8"
    assert {"numpy", "Pillow"} <= loaded_heavy(daemon.proc.pid)


# Everything pydicom says about its pixel coders, as a JSON string.
_CODERS = """
import json, sys
from appliance import lazyimports
if sys.argv[1] == "deferred":
    lazyimports.install()
from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS
from pydicom.pixels.encoders.base import _PIXEL_DATA_ENCODERS
before = lazyimports.loaded()
coders = [c for c, _ in [*_PIXEL_DATA_DECODERS.values(), *_PIXEL_DATA_ENCODERS.values()]]
print(json.dumps({
    "loaded_at_import": before,
    "coders": [[str(c.UID), c.__doc__, list(c.available_plugins), c.missing_dependencies]
               for c in coders],
}))
"""


def fresh_interpreter(script: str, mode: str, **env: str) -> dict:
    """What ``script`` prints as JSON, run as ``python -c script mode`` in a fresh
    interpreter importing this checkout (``env``: more environment variables)."""
    env = dict(os.environ, **env,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120, check=True)
    return json.loads(out.stdout)


def coders(mode: str) -> dict:
    return fresh_interpreter(_CODERS, mode)


def test_deferred_plugins_answer_as_eager_ones():
    """With the pixel stack deferred pydicom's coders have the same plugins, available or
    not (with the same missing dependencies), and the same docstrings, as stock pydicom;
    and importing them loads none of the deferred modules."""
    eager, deferred = coders("eager"), coders("deferred")
    assert deferred["loaded_at_import"] == []
    assert deferred["coders"] == eager["coders"]
    assert any(plugins for _, _, plugins, _ in eager["coders"])  # the comparison compares



def first_reads(loader_type, module_path: Path, name: str, threads: int = 8) -> list:
    """What ``threads`` threads read at once from a module loaded lazily by ``loader_type``."""
    spec = importlib.util.spec_from_file_location(name, module_path)
    spec.loader = loader_type(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        barrier, results = threading.Barrier(threads), []

        def first_use():
            barrier.wait()
            try:
                results.append(module.value)
            except AttributeError as e:
                results.append(repr(e))

        workers = [threading.Thread(target=first_use) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        return results
    finally:
        del sys.modules[name]


def test_threads_first_reading_a_deferred_module_all_get_it_whole(tmp_path):
    """Eight threads read a deferred module at once while it takes 0.3 s to execute: one
    executes it, the others wait and none sees it half-initialised. Python 3.11's own
    LazyLoader, run the same way, lets them read the empty module (the control)."""
    slow = tmp_path / "slow_module.py"
    slow.write_text("import time\ntime.sleep(0.3)\nvalue = 6\n")
    assert first_reads(lazyimports._LazyLoader, slow, "slow_ours") == [6] * 8
    if sys.version_info < (3, 12):
        assert first_reads(importlib.util.LazyLoader, slow, "slow_stock") != [6] * 8


# An HTTPS round trip through aiohttp's default TLS contexts, in a fresh interpreter
# whose only trusted CA is SSL_CERT_FILE (the test's self-signed certificate).
_TLS = """
import asyncio, json, ssl, sys
from appliance import lazyimports
if sys.argv[1] == "deferred":
    lazyimports.install()
from aiohttp import ClientConnectorCertificateError, ClientSession, connector, web
cert, key = sys.argv[2], sys.argv[3]

async def main():
    pending_at_import = lazyimports.tls_pending(connector)
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="hello"))
    runner = web.AppRunner(app)
    await runner.setup()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=served)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    await plain.start()
    async with ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{plain._server.sockets[0].getsockname()[1]}/") as r:
            plain_body = await r.text()
        pending_after_http = lazyimports.tls_pending(connector)
        async with session.get(f"https://127.0.0.1:{port}/") as r:
            body = await r.text()
        try:  # the certificate names 127.0.0.1, not localhost: a verifying client refuses
            async with session.get(f"https://localhost:{port}/") as r:
                wrong_name = "accepted"
        except ClientConnectorCertificateError:
            wrong_name = "refused"
        async with session.get(f"https://localhost:{port}/", ssl=False) as r:
            unverified = await r.text()
    await runner.cleanup()
    print(json.dumps({"pending_at_import": pending_at_import, "plain": plain_body,
                      "pending_after_http": pending_after_http, "body": body,
                      "wrong_name": wrong_name, "unverified": unverified,
                      "pending_after": lazyimports.tls_pending(connector)}))

asyncio.run(main())
"""


def https_round_trip(mode: str, tmp_path: Path) -> dict:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, check=True, timeout=60)
    env = dict(os.environ, SSL_CERT_FILE=str(cert), SSL_CERT_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _TLS, mode, str(cert), str(key)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_aiohttp_tls_contexts_load_their_cas_on_first_https_request(tmp_path):
    """Served, aiohttp's import builds its two TLS client contexts without reading the
    CA bundle, and a plain http:// request leaves it unread; the first HTTPS request
    loads it, and the client then verifies as stock aiohttp does: the trusted
    certificate is accepted, a wrong host name refused, and ssl=False still connects.
    Stock aiohttp has loaded them at import (the control)."""
    contexts = ["_SSL_CONTEXT_VERIFIED", "_SSL_CONTEXT_UNVERIFIED"]
    eager, deferred = https_round_trip("eager", tmp_path), https_round_trip("deferred", tmp_path)
    assert eager["pending_at_import"] == []
    assert deferred["pending_at_import"] == deferred["pending_after_http"] == contexts
    assert deferred["pending_after"] == []
    for run in (eager, deferred):
        assert (run["plain"], run["body"], run["wrong_name"], run["unverified"]) == (
            "hello", "hello", "refused", "hello")


def contexts_via_ae(registry: ServiceRegistry) -> list:
    """The contexts pynetdicom's AE.add_supported_context builds for ``registry`` (one per
    SOP class, the first service declaring it wins): what the server took before."""
    ae, seen = AE(), set()
    for service in registry.services:
        for uid in service.sop_classes:
            if uid not in seen:
                seen.add(uid)
                ae.add_supported_context(uid, list(service.transfer_syntaxes),
                                         scu_role=service.scu_role, scp_role=service.scp_role)
    return ae.supported_contexts


def described(contexts: list) -> list:
    return [(c.abstract_syntax, c.transfer_syntax, c.scu_role, c.scp_role, c.context_id, str(c))
            for c in contexts]


def test_server_contexts_are_the_ones_pynetdicom_builds():
    """The server's contexts, built once per service and copied for its other SOP
    classes, are those AE.add_supported_context gives (170 storage classes, Q/R with
    C-GET's roles, commitment, a SOP class declared twice), each with its own list of
    transfer syntaxes."""
    echo = lambda event, caller: 0  # noqa: E731 - a handler never called here
    twice = DimseService("Second", ("1.2.840.10008.1.1", "1.2.3.4"), UNCOMPRESSED, (), {"e": echo})
    served = DicomHandlers(  # every service but those that need the worklist's folder
        archive=None, policy=None, incoming=None,
        find=QueryRetrieveFind(None, FindLimits()),
        retrieve=RetrieveDimse(None, our_aet="STARTUP", scu_timeout=10),
        commitment=CommitmentScp(None)).registry
    for registry in (served, ServiceRegistry((*served.services, twice))):
        ours = registry.contexts()
        assert len(ours) > 170
        assert described(ours) == described(contexts_via_ae(registry))
        assert len({id(c.transfer_syntax) for c in ours}) == len(ours)
        ours[1].transfer_syntax = ["1.2.840.10008.1.2"]  # as negotiation narrows a copy
        assert len(ours[2].transfer_syntax) > 1


# pynetdicom's status tables as its users read them: every code's membership and value,
# len, iteration, equality with a plain dict; then a removal and an insert.
_STATUS = """
import json, sys
from appliance import lazyimports
if sys.argv[1] != "eager":
    lazyimports.install()
import pynetdicom
from pynetdicom import association, service_class, status
tables = {name: value for name, value in vars(status).items()
          if name.isupper() and isinstance(value, dict)}
report = {name: {
    "type": type(table).__name__,
    "codes": [[code, list(table[code]), list(table.get(code))]
              for code in range(0x10000) if code in table],
    "len": len(table), "iterated": sorted(table), "plain": table == dict(table.items()),
} for name, table in tables.items()}
storage = status.STORAGE_SERVICE_CLASS_STATUS
used = [association.STORAGE_SERVICE_CLASS_STATUS is storage,
        service_class.StorageServiceClass.statuses is storage]
del storage[0xC001]
storage[0xC002] = ("Failure", "ours")
copied = storage.copy()
print(json.dumps({"tables": report, "used": used, "after": [
    0xC001 in storage, storage.get(0xC001), list(storage[0xC002]), list(storage[0xC003]),
    len(storage), 0xC001 in copied, list(copied[0xC002]), copied == storage]}))
"""


def status_tables(mode: str) -> dict:
    return fresh_interpreter(_STATUS, mode, **{
        lazyimports.STOCK_PYNETDICOM_ENV: "1" if mode == "stock" else ""})


def test_pynetdicom_status_tables_answer_as_stock_ones():
    """Served, pynetdicom's ranged status tables (Cxxx, A7xx, A9xx) hold their ranges as
    spans, and answer every code 0x0000-0xFFFF, len, iteration and equality as the stock
    tables; the modules that use them get them; a removal and an insert behave as on the
    stock dict. With PACS_APPLIANCE_STOCK_PYNETDICOM=1 they are stock dicts."""
    eager, deferred, stock = status_tables("eager"), status_tables("deferred"), status_tables("stock")
    spans = sorted(name for name, t in deferred["tables"].items() if t["type"] == "_StatusTable")
    assert len(spans) == 7 and "STORAGE_SERVICE_CLASS_STATUS" in spans
    assert all(t["type"] == "dict" for t in eager["tables"].values())
    assert all(t["type"] == "dict" for t in stock["tables"].values())
    for name, table in eager["tables"].items():
        assert {**deferred["tables"][name], "type": "dict"} == table, name
    assert eager["tables"]["QR_FIND_SERVICE_CLASS_STATUS"]["len"] > 4096  # ranges counted
    assert deferred["used"] == eager["used"] == [True, True]
    assert deferred["after"] == eager["after"]


# pydicom's private dictionaries as its users read and extend them, in a fresh interpreter.
_PRIVATE = """
import json, sys
from appliance import lazyimports
if sys.argv[1] == "deferred":
    lazyimports.install()
from pydicom import datadict
from pydicom.dataset import Dataset
at_import = "pydicom._private_dict" in sys.modules
ds = Dataset()
ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
ds.add_new(0x00291008, "CS", "IMAGE NUM 4")
answers = [ds[0x00291008].name, datadict.private_dictionary_VR(0x00291010, "SIEMENS CSA HEADER")]
try:
    datadict.get_private_entry(0x00291010, "NOBODY")
except KeyError as e:
    answers.append(str(e))
datadict.add_private_dict_entries("ACME 1", {0x00410001: ("US", "1", "Test One", "")})
answers.append(datadict.get_private_entry(0x00410001, "ACME 1"))
from pydicom._private_dict import private_dictionaries
print(json.dumps({"at_import": at_import, "answers": answers,
                  "one_dict": private_dictionaries is datadict.private_dictionaries,
                  "creators": sorted(private_dictionaries), "acme": private_dictionaries["ACME 1"],
                  "loaded": lazyimports.private_dictionaries_loaded()}))
"""




def test_private_dictionaries_load_on_first_use_and_answer_as_eager_ones():
    """Served, pydicom's private dictionaries are not read at import; the first private
    tag lookup reads them, and names, VRs, a missing creator, an added entry and the
    module's own dict are what stock pydicom gives (which reads them at import)."""
    eager, deferred = fresh_interpreter(_PRIVATE, "eager"), fresh_interpreter(_PRIVATE, "deferred")
    assert eager["at_import"] is True and deferred["at_import"] is False
    assert {**deferred, "at_import": True} == eager
    assert deferred["one_dict"] and deferred["loaded"] and len(deferred["creators"]) > 400


# pydicom's and pynetdicom's versions, and importlib.metadata itself, in a fresh interpreter.
_VERSIONS = """
import json, sys
from appliance import lazyimports
if sys.argv[1] == "deferred":
    lazyimports.install()
import pydicom, pynetdicom
at_import = "importlib.metadata" in sys.modules
import importlib.metadata
print(json.dumps({"at_import": at_import,
                  "versions": [pydicom.__version__, pynetdicom.__version__],
                  "metadata": [importlib.metadata.version("pydicom"),
                               importlib.metadata.version("pynetdicom")],
                  "real": hasattr(importlib.metadata, "distribution")}))
"""


def test_package_versions_are_read_without_importlib_metadata():
    """Served, pydicom and pynetdicom learn their versions from their dist-info without
    importing importlib.metadata (~9 ms of every start); the versions are the ones it
    gives, and a later ``import importlib.metadata`` gets the real module."""
    eager, deferred = fresh_interpreter(_VERSIONS, "eager"), fresh_interpreter(_VERSIONS, "deferred")
    assert eager["at_import"] is True and deferred["at_import"] is False
    assert deferred["versions"] == eager["versions"] == eager["metadata"]
    assert deferred["metadata"] == eager["metadata"] and deferred["real"]


def test_a_version_the_dist_info_does_not_give_comes_from_importlib_metadata(tmp_path):
    """No dist-info beside the package, or two of them: the real importlib.metadata answers."""
    from appliance.lazyimports import _dist_version

    assert _dist_version(str(tmp_path), "pydicom") is None
    for version in ("3.0.2", "3.0.3"):
        info = tmp_path / f"pydicom-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pydicom\nVersion: {version}\n")
        assert _dist_version(str(tmp_path), "pydicom") == ("3.0.2" if version == "3.0.2" else None)


def imported(daemon) -> set[str]:
    """The modules a daemon started with PYTHONPROFILEIMPORTTIME=1 has imported so far
    (Python logs one line per import to its stderr, the daemon's log)."""
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", daemon.log(), re.M))


def test_served_daemon_has_not_read_the_private_dictionaries(make_daemon):
    """C-ECHO, a C-STORE of an object with private tags, QIDO-RS and its metadata do not
    read pydicom's private dictionaries (the import log shows datadict, not them)."""
    daemon = make_daemon(env={"PYTHONPROFILEIMPORTTIME": "1"})
    c_echo(daemon)
    private = Path(get_testdata_file("CT_small.dcm"))  # GEMS private groups
    ds = dcmread(private, stop_before_pixels=True)
    assert any(element.tag.is_private for element in ds)
    assert scu_store(daemon.dicom_port, [private]) == [0]
    assert json.loads(http_get(daemon, f"/dicom-web/studies?StudyInstanceUID={ds.StudyInstanceUID}"))
    assert json.loads(http_get(daemon, f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata"))
    modules = imported(daemon)
    assert {"pydicom.datadict", "pynetdicom.status"} <= modules
    assert "pydicom._private_dict" not in modules


# The start's garbage collection as `serve` runs it: held from before the imports, then
# settled once (collected, frozen, back on).
_GC = """
import gc, json, sys, weakref
from appliance.ops import memory
memory.hold_collection()
import appliance.daemon

class Node:
    pass

cycle = Node()
cycle.me = cycle
gone = weakref.ref(cycle)
del cycle
junk = [[i] for i in range(20_000)]  # allocations that would have started collections
held = [gc.isenabled(), gone() is not None]
memory.settle_after_start()
print(json.dumps({"held": held, "collected": gone() is None, "enabled": gc.isenabled(),
                  "frozen": gc.get_freeze_count()}))
"""


def test_start_runs_without_cyclic_gc_then_collects_once_and_freezes():
    """Held, the collector is off through the imports and a cycle made meanwhile stays;
    settled, the cycle is collected, the survivors (the modules' objects) frozen and the
    collector on again."""
    state = fresh_interpreter(_GC, "serve")
    assert state["held"] == [False, True]
    assert state["collected"] and state["enabled"] and state["frozen"] > 50_000


# A verb other than serve, run as the console script runs it, then asked what it loaded.
_VERB = """
import json, sys
from appliance import cli, lazyimports
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": lazyimports.loaded(),
                  "numpy": type(sys.modules.get("numpy")).__name__}))
"""


def test_cli_verbs_do_not_load_the_pixel_stack(tmp_path):
    """`queue list` (which opens the index through the store, so imports pydicom) answers
    without executing numpy or Pillow: the deferral is installed for every verb."""
    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps({"StorageDirectory": str(tmp_path / "db"),
                                  "IndexDirectory": str(tmp_path / "db")}))
    out = subprocess.run([sys.executable, "-c", _VERB, "queue", "list", "--config", str(config)],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["code"] == 0
    assert "nothing queued" in out.stdout
    assert result["loaded"] == []
    assert result["numpy"] == "_LazyModule"  # found (pydicom saw it installed), never run
