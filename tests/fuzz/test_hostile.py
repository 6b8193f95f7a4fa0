"""Hostile input campaign (issue 15 point 3): a seeded corpus against the real daemon.

One daemon for the module (``DicomScpTimeout`` 2 s, a worklist folder, MPPS on);
every input a peer controls, built by :mod:`tests.fuzz.corpus` from a seed:
C-STORE data sets (sent as they are, over associations driven byte by byte by
:mod:`tests.fuzz.rawdicom`), STOW-RS bodies, QIDO-RS query strings, worklist
and Q/R C-FIND identifiers, MPPS N-CREATE/N-SET, raw PDUs.

Invariants checked for every case, failures collected and reported together:

* answered within a bounded time (no hang), the daemon process alive;
* HTTP never 5xx; a DIMSE request answered with a status, not an abort, and
  never with an unexpected exception in our code (a traceback through
  ``appliance/`` in the daemon's log);
* every object acknowledged is WHOLE: read back through WADO-RS it is byte for
  byte what was sent (after the File Meta Information), pydicom reads all of
  it, and the harness's own oracle (:mod:`tests.fuzz.structure`) finds it
  complete: no element cut, no overrun, sequences closed, Pixel Data as long
  as its attributes say; and its metadata, rendered image, thumbnail, first
  frame and transcoded copy never answer 5xx. Valid objects (the seeds as
  they are) must be stored;
* the objects visible (QIDO-RS and /statistics) are exactly those acknowledged:
  nothing acknowledged missing, nothing refused or unanswered visible; no
  partial file left in the storage's ``.incoming``; a valid object still
  stores afterwards.

Size and seed (the seed and each failing case are printed on failure):

    PACS_FUZZ_SEED=15       the corpus seed (default 15; "random" picks one and prints it)
    PACS_FUZZ_CASES=800     mutated C-STORE data sets; the other families scale with it

The default run takes about a minute on 2 cores; a long run, e.g.
``PACS_FUZZ_CASES=5000 PACS_FUZZ_SEED=random .venv/bin/python -m pytest tests/fuzz``,
explores more. Rebuild one failing case with
``.venv/bin/python -m tests.fuzz.corpus --seed S --cases N --show CASE`` or ``--dump CASE FILE``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import socket
import struct
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO

import pydicom
import pytest

from tests.fuzz import corpus
from tests.fuzz.corpus import (
    DEFAULT_CASES, DEFAULT_SEED, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, MPPS, MWL_FIND,
    PATIENT_ROOT_FIND, STUDY_ROOT_FIND, StoreCase, fresh_uid,
)
from tests.fuzz.rawdicom import (
    ABORT, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, VERIFICATION, Association,
    Ended, NoAnswer, associate_rq, command, context_item, item, n_create_command,
    n_set_command, pdu, store_command, uid_item, user_info, wait_closed,
)
from tests.fuzz.rawdicom import ui as ui_
from tests.fuzz.rawdicom import us as us_
from tests.fuzz.structure import BROKEN, judge
from tests.support import Daemon, base_config
from tests.worklist.helpers import worklist_dataset, write_wl


def _seed() -> int:
    value = os.environ.get("PACS_FUZZ_SEED", str(DEFAULT_SEED))
    return random.SystemRandom().randrange(1 << 31) if value == "random" else int(value)


SEED = _seed()
CASES = int(os.environ.get("PACS_FUZZ_CASES", str(DEFAULT_CASES)))
SCP_TIMEOUT = 2            # DicomScpTimeout of the daemon under test, seconds
ANSWER_TIMEOUT = 20.0      # a request not answered by then is a hang
TIMEOUT_MARGIN = 4.0       # how late after DicomScpTimeout a silent peer may be dropped
REPRODUCE = (f"seed {SEED}, {CASES} cases: rebuild a case with `.venv/bin/python -m "
             f"tests.fuzz.corpus --seed {SEED} --cases {CASES} --show CASE` (or --dump CASE FILE); "
             f"rerun with PACS_FUZZ_SEED={SEED} PACS_FUZZ_CASES={CASES}")

SUCCESS = 0x0000
# Statuses that say our own code failed, not the input: an unexpected exception
# (pynetdicom answers 0xC211/0xC311/0xC411 when a handler raises, and 0xC2xx/0xC3xx
# for an invalid handler answer), a processing failure, or lack of space.
BUG_STATUSES = {0x0110: "Processing Failure", 0xA700: "Out of Resources",
                0xC211: "handler raised", 0xC212: "handler answer invalid",
                0xC213: "handler answer invalid", 0xC311: "handler raised",
                0xC312: "handler answer invalid", 0xC411: "handler raised"}

ALL_TS = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, corpus.DEFLATED]


@dataclass
class Ack:
    """An object the daemon acknowledged, and what was sent."""

    case: str
    description: str
    ts: str
    data: bytes
    sop_class: str


@dataclass
class Harness:
    daemon: Daemon
    acked: dict[str, Ack] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)   # SOP Instance UID -> case
    failures: list[str] = field(default_factory=list)
    log_offset: int = 0
    verified: set[str] = field(default_factory=set)

    # -- bookkeeping --------------------------------------------------------

    def fail(self, case: str, message: str) -> None:
        self.failures.append(f"{case}: {message}")

    def report(self, what: str) -> None:
        """Fail the test with every collected failure, the seed and how to rebuild cases."""
        failures, self.failures = self.failures, []
        if failures:
            shown = "\n  ".join(failures[:40])
            more = f"\n  ... and {len(failures) - 40} more" if len(failures) > 40 else ""
            pytest.fail(f"{what}: {len(failures)} invariant violations ({REPRODUCE}):\n  "
                        f"{shown}{more}", pytrace=False)

    def alive(self, case: str) -> bool:
        if self.daemon.proc.poll() is not None:
            self.fail(case, f"THE DAEMON DIED (exit {self.daemon.proc.returncode}); log tail:\n"
                      + self.daemon.log()[-3000:])
            return False
        return True

    def new_log_problems(self, what: str) -> None:
        """Tracebacks through our own code since the last look (unexpected exceptions)."""
        log = self.daemon.log()
        fresh, self.log_offset = log[self.log_offset:], len(log)
        # One block per log record: its traceback and the exception's own line with it.
        for block in re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:)", fresh):
            if "Traceback" in block and "/appliance/" in block:
                self.fail(what, "unexpected exception in the daemon:\n" + block[-2500:])

    # -- HTTP ---------------------------------------------------------------

    def http(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None,
             timeout: float = ANSWER_TIMEOUT) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.daemon.http_port, timeout=timeout)
        try:
            chunked = (headers or {}).get("Transfer-Encoding") == "chunked"
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            rsp = conn.getresponse()
            return rsp.status, {k.lower(): v for k, v in rsp.getheaders()}, rsp.read()
        finally:
            conn.close()

    def visible(self) -> dict[str, tuple[str, str]]:
        """{SOP Instance UID: (study, series)} of every instance QIDO-RS sees."""
        out: dict[str, tuple[str, str]] = {}
        while True:
            status, _, body = self.http("GET",
                                        f"/dicom-web/instances?limit=10000&offset={len(out)}")
            assert status in (200, 204), (status, body[:300])
            rows = json.loads(body) if status == 200 else []
            for row in rows:
                uid = row["00080018"]["Value"][0]
                out[uid] = (row["0020000D"]["Value"][0], row["0020000E"]["Value"][0])
            if len(rows) < 10000:
                return out

    # -- invariants -----------------------------------------------------------

    def record(self, uid: str, case: str, description: str, *, ts: str, data: bytes,
               sop_class: str, stored: bool) -> None:
        if stored:
            self.acked[uid] = Ack(case, description, ts, data, sop_class)
            self.refused.pop(uid, None)
        elif uid not in self.acked:
            self.refused[uid] = case

    def check_whole(self) -> None:
        """Every acknowledged object not yet checked: visible, byte for byte what was
        sent, readable by pydicom to its end, not broken by the oracle."""
        seen = self.visible()
        for uid, ack in self.acked.items():
            if uid in self.verified:
                continue
            self.verified.add(uid)
            verdict = judge(ack.data, ack.ts, ack.sop_class)
            if verdict.kind == BROKEN:
                self.fail(ack.case, f"ACKNOWLEDGED A BROKEN DATA SET ({verdict}): "
                                    f"{ack.description}")
            where = seen.get(uid)
            if where is None:
                self.fail(ack.case, f"acknowledged but not visible: {uid}")
                continue
            status, headers, body = self.http(
                "GET", f"/dicom-web/studies/{where[0]}/series/{where[1]}/instances/{uid}",
                headers={"Accept": "application/dicom; transfer-syntax=*"})
            if status != 200:
                self.fail(ack.case, f"WADO-RS of an acknowledged object answered {status}")
                continue
            if "multipart" in headers.get("content-type", ""):
                self.fail(ack.case, "WADO-RS answered multipart to a single-part Accept")
                continue
            stored = _dataset_of(body)
            if stored != ack.data:
                self.fail(ack.case, f"stored data set differs from what was sent "
                                    f"({len(stored)} vs {len(ack.data)} bytes): {ack.description}")
                continue
            if verdict.depth <= 40:  # pydicom reads nested sequences recursively
                problem = _pydicom_problem(body)
                if problem:
                    self.fail(ack.case, f"pydicom cannot read the stored object: {problem}")
            self.read_paths(ack, f"/dicom-web/studies/{where[0]}/series/{where[1]}/instances/{uid}")

    def read_paths(self, ack: Ack, url: str) -> None:
        """What an EMR or viewer asks of a stored object never answers 5xx, however odd
        the object the daemon took (duplicated tags, implicit VR elements, deep nesting)."""
        for path, accept in [
            ("", "multipart/related; type=\"application/dicom\""),  # transcoded to explicit LE
            ("/metadata", "application/dicom+json"),
            ("/frames/1", "multipart/related; type=\"application/octet-stream\""),
            ("/rendered", "image/jpeg"),
            ("/thumbnail", "image/png"),
        ]:
            try:
                status, _, body = self.http("GET", url + path, headers={"Accept": accept})
            except (TimeoutError, socket.timeout):
                self.fail(ack.case, f"NO ANSWER to GET {path or 'the instance'} in "
                                    f"{ANSWER_TIMEOUT} s: {ack.description}")
                continue
            except (http.client.IncompleteRead, ConnectionError) as e:
                # A transcoded copy streams frame by frame: a frame found undecodable
                # after the first (a damaged one, or fewer than announced) can only end
                # the stream (appliance.dicomfile.pixels). Anything else must not break off.
                if path:
                    self.fail(ack.case, f"GET {path} broke off ({e!r}): {ack.description}")
                continue
            if status >= 500:
                self.fail(ack.case, f"GET {path or 'the instance'} ({accept}) answered "
                                    f"{status}: {body[:200]!r}: {ack.description}")

    def check_archive(self, what: str) -> None:
        """The global invariants: alive, no partial file, visible == acknowledged."""
        if not self.alive(what):
            return
        deadline = time.monotonic() + 10
        while self.daemon.incoming_files() and time.monotonic() < deadline:
            time.sleep(0.05)
        partial = self.daemon.incoming_files()
        if partial:
            self.fail(what, f"partial files left in .incoming: {[p.name for p in partial]}")
        seen = set(self.visible())
        for uid in sorted(seen - set(self.acked)):
            case = self.refused.get(uid, "not sent by the harness")
            self.fail(what, f"visible but never acknowledged: {uid} ({case})")
        for uid in sorted(set(self.acked) - seen):
            self.fail(what, f"acknowledged but missing: {uid} ({self.acked[uid].case})")
        status, _, body = self.http("GET", "/statistics")
        if status != 200:
            self.fail(what, f"/statistics answered {status}")
        elif json.loads(body)["CountInstances"] != len(self.acked):
            self.fail(what, f"/statistics counts {json.loads(body)['CountInstances']} instances, "
                            f"{len(self.acked)} acknowledged")
        self.new_log_problems(what)

    def valid_still_stores(self, what: str) -> None:
        seed = next(s for s in corpus.seeds() if s.name == "US_rgb")
        uid = fresh_uid(SEED, "afterwards", what)
        data, _ = corpus.with_uid(seed, uid)
        try:
            assoc = connect(self.daemon.dicom_port, [(seed.sop_class, seed.ts)])
            status = assoc.store(seed.sop_class, uid, seed.ts, data).status
            assoc.release()
        except (OSError, Ended, NoAnswer) as e:
            self.fail(what, f"a valid object no longer stores: {e!r}")
            return
        self.record(uid, f"{what}/afterwards", "a valid US image after the campaign", ts=seed.ts,
                    data=data, sop_class=seed.sop_class, stored=status == SUCCESS)
        if status != SUCCESS:
            self.fail(what, f"a valid object no longer stores: status {status:#06x}")


def connect(port: int, contexts: list[tuple[str, str]], **kw) -> Association:
    """An association; retried for a while when the server is at its association limit
    (A-ASSOCIATE-RJ transient: the raw-PDU cases keep many connections open at once)."""
    deadline = time.monotonic() + 2 * _silence_bound()
    while True:
        try:
            return Association(port, contexts, timeout=ANSWER_TIMEOUT, **kw)
        except Ended as e:
            transient = e.kind == ASSOCIATE_RJ and len(e.body) >= 2 and e.body[1] == 2
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _dataset_of(part10: bytes) -> bytes:
    """The bytes after the File Meta Information of a Part-10 file."""
    if part10[128:132] != b"DICM":
        return b"<not a Part-10 file>"
    group_length = struct.unpack_from("<L", part10, 140)[0]
    return part10[144 + group_length:]


def _pydicom_problem(part10: bytes) -> str | None:
    """Why pydicom cannot read all of a file, or None."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(BytesIO(part10))
            for elem in ds.iterall():
                _ = elem.value
        for w in caught:
            text = str(w.message).lower()
            if any(s in text for s in ("end of file", "eof", "premature", "truncat")):
                return str(w.message)
    except Exception as e:  # noqa: BLE001 - any failure to read is the finding
        return f"{type(e).__name__}: {e}"
    return None


@pytest.fixture(scope="module")
def h(tmp_path_factory) -> Harness:
    root = tmp_path_factory.mktemp("fuzz")
    folder = root / "worklists"
    folder.mkdir()
    for n, (name, pid) in enumerate([("DOE^JANE", "P1"), ("Ζαχαρίας^Γιάννης", "P2"),
                                     ("A%B^C_D", "P%1"), ("SMITH^JOHN", "P4")]):
        write_wl(folder, f"item{n}.wl", worklist_dataset(
            patient_name=name, patient_id=pid, accession=f"A{n}",
            study_uid=fresh_uid("wl", n), station=["US1", "US2"][n % 2]))
    config = base_config(root, DicomScpTimeout=SCP_TIMEOUT, DicomThreadsCount=24,
                         Worklists={"Enable": True, "Database": str(folder)},
                         Mpps={"Enable": True}, DicomAlwaysAllowFind=True)
    daemon = Daemon(root, config).start()
    harness = Harness(daemon)
    yield harness
    daemon.stop()


# -- C-STORE data sets -------------------------------------------------------------


def _store_contexts() -> list[tuple[str, str]]:
    pairs = {(s.sop_class, ts) for s in corpus.seeds() for ts in ALL_TS}
    pairs |= {(s.sop_class, s.ts) for s in corpus.seeds()}
    return sorted(pairs) + [(VERIFICATION, IMPLICIT_LE)]


def _store_all(h: Harness, cases: list[StoreCase]) -> None:
    """Send every case over as few associations as survive; record the outcomes."""
    contexts = _store_contexts()
    assoc: Association | None = None
    for case in cases:
        if assoc is not None and time.monotonic() - assoc.last_activity > SCP_TIMEOUT / 2:
            assoc.release()  # idle too long: the daemon may be timing it out
            assoc = None
        if assoc is None:
            assoc = connect(h.daemon.dicom_port, contexts)
        described = case.describe()
        try:
            rsp = assoc.store(case.sop_class, case.sop_uid, case.ts, case.data)
        except NoAnswer:
            h.fail(case.name, f"NO C-STORE RESPONSE within {ANSWER_TIMEOUT} s: {described}")
            h.record(case.sop_uid, case.name, described, ts=case.ts, data=case.data,
                     sop_class=case.sop_class, stored=False)
            assoc.close()
            assoc = None
            continue
        except (Ended, OSError) as e:
            h.fail(case.name, f"association ended ({e}) instead of a C-STORE status: {described}")
            h.record(case.sop_uid, case.name, described, ts=case.ts, data=case.data,
                     sop_class=case.sop_class, stored=False)
            assoc.close()
            assoc = None
            if not h.alive(case.name):
                return
            continue
        status = rsp.status
        stored = status == SUCCESS or status & 0xF000 == 0xB000  # Success or Warning
        h.record(case.sop_uid, case.name, described, ts=case.ts, data=case.data,
                 sop_class=case.sop_class, stored=stored)
        if status in BUG_STATUSES:
            h.fail(case.name, f"status {status:#06x} ({BUG_STATUSES[status]}: "
                              f"{rsp.comment!r}): {described}")
        if case.must_store and not stored:
            h.fail(case.name, f"a valid object refused: {status:#06x} {rsp.comment!r}: {described}")
    if assoc is not None:
        assoc.release()


def test_cstore_corpus(h):
    cases = corpus.store_cases(SEED, CASES)
    started = time.monotonic()
    # Three associations at once: parallel receives take other paths than one alone
    # (no writer thread, shared group commits).
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda k: _store_all(h, cases[k::3]), range(3)))
    sent = time.monotonic() - started
    h.check_whole()
    h.check_archive("after the C-STORE corpus")
    h.valid_still_stores("cstore")
    h.check_whole()
    acked = sum(1 for c in cases if c.sop_uid in h.acked)
    print(f"\nC-STORE corpus: {len(cases)} data sets, {acked} acknowledged, "
          f"{len(cases) - acked} refused, {sent:.1f} s")
    h.report("C-STORE corpus")


# -- STOW-RS ------------------------------------------------------------------------


def _post_raw(port: int, body: bytes, content_type: str, length: int) -> tuple[int | None, bytes]:
    """POST with a Content-Length that lies; (status or None if closed unanswered, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
    try:
        head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: {content_type}\r\nAccept: application/dicom+json\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        closed, received, _ = wait_closed(sock, ANSWER_TIMEOUT)
        if not closed and not received:
            raise NoAnswer("STOW-RS request not answered")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", received)
        return (int(m.group(1)) if m else None), received
    finally:
        sock.close()


def _pieces(data: bytes, sizes: list[int]):
    pos = 0
    for n in sizes:
        yield data[pos:pos + n]
        pos += n


def test_stow_corpus(h):
    bodies = corpus.stow_bodies(SEED, max(CASES // 4, 10))
    for body in bodies:
        described = body.describe()
        try:
            if body.raw_length is not None:
                status, raw = _post_raw(h.daemon.http_port, body.body, body.content_type,
                                        body.raw_length)
                payload = b""
            elif body.chunks is not None:
                status, _, payload = h.http(
                    "POST", "/dicom-web/studies", _pieces(body.body, body.chunks),
                    {"Content-Type": body.content_type, "Accept": "application/dicom+json",
                     "Transfer-Encoding": "chunked"})
            else:
                status, _, payload = h.http(
                    "POST", "/dicom-web/studies", body.body,
                    {"Content-Type": body.content_type, "Accept": "application/dicom+json"})
        except (NoAnswer, TimeoutError, socket.timeout):
            h.fail(body.name, f"NO STOW-RS ANSWER within {ANSWER_TIMEOUT} s: {described}")
            continue
        except (ConnectionError, http.client.HTTPException) as e:
            h.fail(body.name, f"connection failed without an answer ({e!r}): {described}")
            continue
        if not h.alive(body.name):
            break
        if status is not None and status >= 500:
            h.fail(body.name, f"HTTP {status}: {described}: {payload[:300]!r}")
        acked: list[str] = []
        if status in (200, 202, 409):
            try:
                answer = json.loads(payload)
                acked = [row["00081155"]["Value"][0]
                         for row in answer.get("00081199", {}).get("Value", [])]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                h.fail(body.name, f"STOW-RS answer not a Store Instances Response ({e!r}): "
                                  f"{payload[:300]!r}")
        for uid in acked:
            part = next((p for p in body.parts if p.sop_uid == uid), None) or next(
                (p for p in body.parts if uid.encode() in p.data), None)
            if part is None:
                h.fail(body.name, f"STOW-RS stored {uid}, which the body should not have "
                                  f"given: {described}")
                h.acked[uid] = Ack(body.name, described, EXPLICIT_LE, b"<unknown>", "")
                continue
            h.record(uid, body.name, f"{described}: part {part.describe()}", ts=part.ts,
                     data=part.data, sop_class=part.sop_class, stored=True)
        for part in body.parts:
            if part.sop_uid not in acked:
                h.record(part.sop_uid, body.name, described, ts=part.ts, data=part.data,
                         sop_class=part.sop_class, stored=False)
                if part.must_store:
                    h.fail(body.name, f"a valid part was not stored (HTTP {status}): "
                                      f"{part.describe()}; body {described}; {payload[:300]!r}")
    h.check_whole()
    h.check_archive("after the STOW-RS corpus")
    h.valid_still_stores("stow")
    print(f"\nSTOW-RS corpus: {len(bodies)} bodies")
    h.report("STOW-RS corpus")


# -- QIDO-RS ------------------------------------------------------------------------


def test_qido_parameters(h):
    queries = corpus.qido_queries(SEED, CASES)
    total = len(h.visible())
    for name, target in queries:
        try:
            status, headers, body = h.http("GET", target)
        except (TimeoutError, socket.timeout):
            h.fail(name, f"NO QIDO-RS ANSWER within {ANSWER_TIMEOUT} s: {target[:300]}")
            continue
        except (ConnectionError, http.client.HTTPException) as e:
            h.fail(name, f"no HTTP answer ({e!r}): {target[:300]}")
            continue
        if status >= 500:
            h.fail(name, f"HTTP {status} for {target[:300]!r}: {body[:300]!r}")
        elif status == 200:
            try:
                rows = json.loads(body)
                assert isinstance(rows, list)
            except (ValueError, AssertionError):
                h.fail(name, f"200 without a JSON array for {target[:300]!r}: {body[:200]!r}")
                continue
            if "/instances" in target and len(rows) > total:
                h.fail(name, f"{len(rows)} instances found, {total} stored: {target[:300]!r}")
        if not h.alive(name):
            break
    h.check_archive("after the QIDO-RS queries")
    print(f"\nQIDO-RS: {len(queries)} queries")
    h.report("QIDO-RS parameters")


def _store_named(h: Harness, label: str, **attrs) -> str:
    """Store a small valid US image with the given attributes; its SOP Instance UID."""
    seed = next(s for s in corpus.seeds() if s.name == "US_mono_implicit")
    ds = pydicom.dcmread(BytesIO(corpus.file_meta(seed.sop_class, "1.2.3", seed.ts) + seed.plain))
    ds.SOPInstanceUID = fresh_uid(SEED, "like", label)
    ds.StudyInstanceUID = fresh_uid(SEED, "like-study", label)
    ds.SeriesInstanceUID = fresh_uid(SEED, "like-series", label)
    for key, value in attrs.items():
        setattr(ds, key, value)
    data = corpus.encode(ds, seed.ts)
    assoc = connect(h.daemon.dicom_port, [(seed.sop_class, seed.ts)])
    status = assoc.store(seed.sop_class, ds.SOPInstanceUID, seed.ts, data).status
    assoc.release()
    h.record(ds.SOPInstanceUID, f"like/{label}", f"LIKE test object {attrs}", ts=seed.ts,
             data=data, sop_class=seed.sop_class, stored=status == SUCCESS)
    assert status == SUCCESS, (label, hex(status))
    return ds.SOPInstanceUID


def test_qido_like_metacharacters_match_literally(h):
    """A % or _ in a QIDO value is that character, not a LIKE wildcard (and [ not a GLOB
    class), on index columns and on attributes matched in the stored metadata."""
    objs = {}
    for label, name, physician, pid, institution in [
        ("pct", "LIKE%B^X", "DR%P", "ID%1", "INST%1"),
        ("x", "LIKEXB^X", "DRXP", "IDX1", "INSTX1"),
        ("und", "LIKE_B^X", "DR_P", "ID_1", "INST_1"),
        ("brk", "LIKE[B^X", "DR[P", "ID[1", "INST[1"),
        ("greek", "ΖΑ%Β^Χ", "ΔΡ%Π", "ΙΔ%1", "ΙΝ%1"),
        ("greekx", "ΖΑXΒ^Χ", "ΔΡXΠ", "ΙΔX1", "ΙΝX1"),
    ]:
        objs[label] = _store_named(h, label, PatientName=name, ReferringPhysicianName=physician,
                                   PatientID=pid, InstitutionName=institution,
                                   PerformingPhysicianName=physician)

    def found(key: str, value: str) -> set[str]:
        query = urllib.parse.urlencode({key: value, "limit": "10000"}, quote_via=urllib.parse.quote)
        status, _, body = h.http("GET", f"/dicom-web/instances?{query}")
        assert status in (200, 204), (key, value, status, body[:300])
        uids = {row["00080018"]["Value"][0] for row in json.loads(body)} if status == 200 else set()
        return {label for label, uid in objs.items() if uid in uids}

    expectations = [
        ("PatientName", "LIKE%B^X", {"pct"}), ("PatientName", "like%b^x", {"pct"}),
        ("PatientName", "LIKE_B^X", {"und"}), ("PatientName", "LIKE%*", {"pct"}),
        ("PatientName", "LIKE_*", {"und"}), ("PatientName", "LIKE[*", {"brk"}),
        ("PatientName", "LIKE[B^X", {"brk"}),
        ("PatientName", "LIKE?B^X", {"pct", "x", "und", "brk"}),
        ("PatientName", "ζα%β^χ", {"greek"}), ("PatientName", "ΖΑ%*", {"greek"}),
        ("ReferringPhysicianName", "DR%P", {"pct"}), ("ReferringPhysicianName", "dr_p", {"und"}),
        ("PatientID", "ID%1", {"pct"}), ("PatientID", "ID_1", {"und"}),
        ("PatientID", "ID%*", {"pct"}), ("PatientID", "ID[*", {"brk"}),
        ("PatientID", "ΙΔ%1", {"greek"}),
        ("InstitutionName", "INST%1", {"pct"}), ("InstitutionName", "INST_*", {"und"}),
        ("InstitutionName", "INST[1", {"brk"}),
        ("PerformingPhysicianName", "DR%P", {"pct"}), ("PerformingPhysicianName", "dr_*", {"und"}),
        ("PerformingPhysicianName", "δρ%π", {"greek"}),
    ]
    for key, value, expected in expectations:
        got = found(key, value)
        if got != expected:
            h.fail(f"like {key}={value}", f"matched {sorted(got)}, expected {sorted(expected)}")
    h.check_archive("after the LIKE metacharacter test")
    h.report("QIDO-RS LIKE metacharacters")


# -- Modality Worklist and Q/R C-FIND --------------------------------------------------


def _status_problem(status: int) -> str | None:
    return BUG_STATUSES.get(status)


def _find_campaign(h, sop_class: str, cases, label: str) -> None:
    """Send every identifier as a C-FIND of ``sop_class``: each must end with a final
    status (no hang, no abort, no status that means a bug), every Pending answer a
    whole data set; the archive unchanged and the daemon alive afterwards."""
    contexts = [(sop_class, ts) for ts in (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)]
    assoc: Association | None = None
    answered = 0
    for case in cases:
        if assoc is not None and time.monotonic() - assoc.last_activity > SCP_TIMEOUT / 2:
            assoc.release()
            assoc = None
        if assoc is None:
            assoc = connect(h.daemon.dicom_port, contexts)
        try:
            responses = assoc.find(sop_class, case.ts, case.data)
        except NoAnswer:
            h.fail(case.name, f"NO C-FIND RESPONSE within {ANSWER_TIMEOUT} s: {case.describe()}")
            assoc.close()
            assoc = None
            continue
        except (Ended, OSError) as e:
            h.fail(case.name, f"association ended ({e}) instead of a C-FIND status: "
                              f"{case.describe()}")
            assoc.close()
            assoc = None
            if not h.alive(case.name):
                break
            continue
        answered += 1
        final = responses[-1]
        if problem := _status_problem(final.status):
            h.fail(case.name, f"final status {final.status:#06x} ({problem}, "
                              f"{final.comment!r}): {case.describe()}")
        for rsp in responses[:-1]:
            verdict = judge(rsp.data, case.ts, "")
            if verdict.kind == BROKEN:
                h.fail(case.name, f"a Pending answer is not a whole data set ({verdict}): "
                                  f"{case.describe()}")
    if assoc is not None:
        assoc.release()
    h.check_archive(f"after the {label} identifiers")
    print(f"\n{label}: {len(cases)} identifiers, {answered} answered with a status")
    h.report(f"{label} identifiers")


def test_worklist_find_identifiers(h):
    _find_campaign(h, MWL_FIND, corpus.worklist_identifiers(SEED, max(CASES // 3, 10)),
                   "Modality Worklist C-FIND")


@pytest.mark.parametrize("sop_class", [STUDY_ROOT_FIND, PATIENT_ROOT_FIND],
                         ids=["study-root", "patient-root"])
def test_query_retrieve_find_identifiers(h, sop_class):
    """Q/R C-FIND (the harness lets any AE query): hostile identifiers at every level,
    against whatever the C-STORE cases left in the archive."""
    _find_campaign(h, sop_class, corpus.qr_identifiers(sop_class, SEED, max(CASES // 4, 10)),
                   f"Q/R C-FIND ({'Study' if sop_class == STUDY_ROOT_FIND else 'Patient'} Root)")


# -- MPPS -------------------------------------------------------------------------------


def test_mpps_requests(h):
    cases = corpus.mpps_requests(SEED, max(CASES // 4, 10))
    contexts = [(MPPS, ts) for ts in (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)]
    assoc: Association | None = None
    created: dict[str, str] = {}      # SOP Instance UID -> case that created it
    for case in cases:
        if assoc is not None and time.monotonic() - assoc.last_activity > SCP_TIMEOUT / 2:
            assoc.release()
            assoc = None
        if assoc is None:
            assoc = connect(h.daemon.dicom_port, contexts)
        cx = assoc.context(MPPS, case.ts)
        if case.action == "create":
            cmd = n_create_command(MPPS, case.sop_uid, assoc.next_id())
        else:
            cmd = n_set_command(MPPS, case.sop_uid or "", assoc.next_id())
        try:
            assoc.send_message(cx, cmd, case.data)
            rsp = assoc.read_response()
        except NoAnswer:
            h.fail(case.name, f"NO MPPS RESPONSE within {ANSWER_TIMEOUT} s: {case.describe()}")
            assoc.close()
            assoc = None
            continue
        except (Ended, OSError) as e:
            if not case.may_abort:
                h.fail(case.name, f"association ended ({e}) instead of a status: "
                                  f"{case.describe()}")
            assoc.close()
            assoc = None
            if not h.alive(case.name):
                break
            continue
        status = rsp.status
        if status in (0xC211, 0xC212, 0xC213, 0xC311, 0xC411):  # our handler raised
            h.fail(case.name, f"status {status:#06x} ({BUG_STATUSES[status]}): {case.describe()}")
        if case.action == "create" and status == SUCCESS:
            # A UID is compared as its value: trailing NUL padding, surrounding spaces off.
            uid = (case.sop_uid or rsp.command.get(0x00001000, b"").decode()).strip("\0 ")
            if uid in created:
                h.fail(case.name, f"a second N-CREATE of {uid} answered Success")
            created[uid] = case.name
    if assoc is not None:
        assoc.release()
    rows = {uid for (uid,) in h.daemon.rows("SELECT sop_instance_uid FROM mpps")}
    for uid in sorted(set(created) - rows):
        h.fail(created[uid], f"N-CREATE answered Success but {uid!r} is not in the index")
    for uid in sorted(rows - set(created)):
        h.fail("mpps", f"an MPPS instance {uid!r} is in the index, no N-CREATE succeeded for it")
    h.check_archive("after the MPPS requests")
    print(f"\nMPPS: {len(cases)} requests, {len(created)} created")
    h.report("MPPS N-CREATE/N-SET")


# -- raw PDUs on the DICOM port -------------------------------------------------------

US_RGB_CX = (corpus.US_IMAGE, EXPLICIT_LE)
ECHO_CX = (VERIFICATION, IMPLICIT_LE)


def _rq(**kw) -> bytes:
    contexts = kw.pop("contexts", [(1, VERIFICATION, [IMPLICIT_LE]),
                                   (3, corpus.US_IMAGE, [EXPLICIT_LE])])
    return associate_rq(contexts, **kw)


def _silence_bound() -> float:
    return SCP_TIMEOUT + TIMEOUT_MARGIN


@dataclass
class PduCase:
    """One connection's worth of raw bytes; ``run`` returns a problem or None."""

    name: str
    detail: str
    run: object            # (Harness, PduCase) -> str | None
    uids: list[str] = field(default_factory=list)   # objects it starts sending
    acked: dict[str, bytes] = field(default_factory=dict)  # of those, answered Success: data


def _open(h: Harness) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", h.daemon.dicom_port), timeout=ANSWER_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send_then_expect_end(data: bytes, *, bound: float | None = None):
    """Send ``data`` and go silent: the server must answer or close within ``bound``."""
    def run(h: Harness, case: PduCase) -> str | None:
        sock = _open(h)
        try:
            if data:
                sock.sendall(data)
            closed, received, waited = wait_closed(sock, bound or _silence_bound())
            if not closed:
                kinds = received[:1].hex() or "nothing"
                return (f"connection still open after {waited:.1f} s of silence "
                        f"(DicomScpTimeout {SCP_TIMEOUT} s; received {kinds})")
            return None
        finally:
            sock.close()
    return run


def _associate_then(script):
    """Associate (US image + Verification), then run ``script(assoc, case)``."""
    def run(h: Harness, case: PduCase) -> str | None:
        assoc = connect(h.daemon.dicom_port, [ECHO_CX, US_RGB_CX])
        try:
            return script(assoc, case)
        except NoAnswer as e:
            return f"no answer: {e}"
        finally:
            assoc.close()
    return run


def _answered_then_closed(assoc: Association, case: PduCase | None = None,
                          sent: tuple[str, bytes] | None = None) -> str | None:
    """After a hostile request: the server answers (any DIMSE response, A-ABORT, or a
    close), or says nothing and drops us within DicomScpTimeout once we are silent.
    A Success answer to the C-STORE ``sent`` (uid, data) is recorded as acknowledged."""
    try:
        rsp = assoc.read_response(ANSWER_TIMEOUT)
        if sent is not None and case is not None and rsp.status == SUCCESS:
            case.acked[sent[0]] = sent[1]
        if rsp.status in BUG_STATUSES:
            return f"answered {rsp.status:#06x} ({BUG_STATUSES[rsp.status]}, {rsp.comment!r})"
    except Ended:
        return None
    except NoAnswer:
        pass  # kept silent: allowed if it then times the association out
    closed, _, waited = wait_closed(assoc.sock, _silence_bound())
    if not closed:
        return f"association neither answered nor closed within {waited:.1f} s"
    return None


def _store_head(assoc: Association, uid: str, fraction: float = 0.5) -> tuple[int, bytes]:
    """Send a C-STORE command and the start of a valid data set (not its last fragment)."""
    seed = next(s for s in corpus.seeds() if s.name == "US_rgb")
    data, _ = corpus.with_uid(seed, uid)
    cx = assoc.context(*US_RGB_CX)
    assoc.send_message(cx, store_command(seed.sop_class, uid, assoc.next_id()))
    head = data[:int(len(data) * fraction)]
    assoc.send(struct.pack(">BBLLBB", P_DATA, 0, len(head) + 6, len(head) + 2, cx, 0x00) + head)
    return cx, data


def _rq_item_cases() -> list[tuple[str, bytes]]:
    """A-ASSOCIATE-RQs with broken items (PS3.8 9.3.2)."""
    ctx_v = context_item(1, VERIFICATION, [IMPLICIT_LE])
    app = uid_item(0x10, "1.2.840.10008.3.1.1.1")

    def raw_rq(items: bytes, *, version: int = 1, called: bytes = b"ORTHANC",
               calling: bytes = b"FUZZSCU", length: int | None = None) -> bytes:
        body = (struct.pack(">HH", version, 0) + called.ljust(16)[:16] + calling.ljust(16)[:16]
                + bytes(32) + items)
        return pdu(0x01, body, length)

    ui = user_info()
    return [
        ("protocol version 2", raw_rq(app + ctx_v + ui, version=2)),
        ("protocol version 0", raw_rq(app + ctx_v + ui, version=0)),
        ("calling AE with NULs and non-ASCII",
         raw_rq(app + ctx_v + ui, calling=b"\0\xff\xfe\x01ZZ")),
        ("called AE all spaces", raw_rq(app + ctx_v + ui, called=b" " * 16)),
        ("no application context", raw_rq(ctx_v + ui)),
        ("another application context", raw_rq(uid_item(0x10, "1.2.3.4") + ctx_v + ui)),
        ("application context of 1000 characters", raw_rq(uid_item(0x10, "1." * 500) + ctx_v + ui)),
        ("no presentation context", raw_rq(app + ui)),
        ("presentation context item overruns the PDU",
         raw_rq(app + item(0x20, ctx_v[4:], length=0xFFFF) + ui)),
        ("abstract syntax missing",
         raw_rq(app + item(0x20, bytes([1, 0, 0, 0]) + uid_item(0x40, IMPLICIT_LE)) + ui)),
        ("transfer syntax missing",
         raw_rq(app + item(0x20, bytes([1, 0, 0, 0]) + uid_item(0x30, VERIFICATION)) + ui)),
        ("context ID 0", raw_rq(app + context_item(0, VERIFICATION, [IMPLICIT_LE]) + ui)),
        ("even context ID", raw_rq(app + context_item(2, VERIFICATION, [IMPLICIT_LE]) + ui)),
        ("duplicate context IDs", raw_rq(app + ctx_v + ctx_v + ui)),
        ("200 presentation contexts",
         raw_rq(app + b"".join(context_item((2 * i + 1) % 256, VERIFICATION, [IMPLICIT_LE])
                               for i in range(200)) + ui)),
        ("a context with 300 transfer syntaxes",
         raw_rq(app + context_item(1, VERIFICATION, [IMPLICIT_LE] * 300) + ui)),
        ("no user information", raw_rq(app + ctx_v)),
        ("maximum PDU length 0 (unlimited)", raw_rq(app + ctx_v + user_info(0))),
        ("maximum PDU length 1", raw_rq(app + ctx_v + user_info(1))),
        ("maximum PDU length 0xFFFFFFFF", raw_rq(app + ctx_v + user_info(0xFFFFFFFF))),
        ("maximum length sub-item of 2 bytes",
         raw_rq(app + ctx_v + item(0x50, item(0x51, b"\0\1")))),
        ("implementation class UID of 1000 characters",
         raw_rq(app + ctx_v + item(0x50, item(0x51, struct.pack(">L", 16384))
                                   + uid_item(0x52, "1." * 500)))),
        ("user identity garbage", raw_rq(app + ctx_v + user_info(extra=item(0x58, b"\x07" * 9)))),
        ("user identity claims more than it holds",
         raw_rq(app + ctx_v + user_info(extra=item(0x58, b"\x01\x00\xff\xffab")))),
        ("SCP/SCU role selection garbage",
         raw_rq(app + ctx_v + user_info(extra=item(0x54, b"\xff\xff" + b"x" * 5)))),
        ("extended negotiation garbage",
         raw_rq(app + ctx_v + user_info(extra=item(0x56, b"\x00\x05ab")))),
        ("asynchronous operations window 65535/0",
         raw_rq(app + ctx_v + user_info(extra=item(0x53, b"\xff\xff\x00\x00")))),
        ("unknown item type 0x99", raw_rq(app + ctx_v + ui + item(0x99, b"junk"))),
        ("user sub-item overruns its item",
         raw_rq(app + ctx_v + item(0x50, item(0x51, b"\0\0@\0", length=0x4000)))),
        ("PDU length shorter than its items", raw_rq(app + ctx_v + ui, length=80)),
        ("PDU length longer than its items (then silence)", raw_rq(app + ctx_v + ui, length=2000)),
        ("an A-ASSOCIATE-RQ of 1 MB", raw_rq(app + ctx_v + ui + item(0x99, b"j" * 60000) * 17)),
    ]


def _rq_case(data: bytes):
    """An A-ASSOCIATE-RQ: answered (AC, RJ, A-ABORT or close) in time; an association
    accepted serves a C-ECHO on a context it accepted, and is released cleanly."""
    def run(h: Harness, case: PduCase) -> str | None:
        sock = _open(h)
        try:
            sock.sendall(data)
            sock.settimeout(_silence_bound())
            try:
                head = sock.recv(6)
            except TimeoutError:
                return f"A-ASSOCIATE-RQ unanswered after {_silence_bound():.0f} s"
            except ConnectionResetError:
                return None
            if not head or head[0] in (ASSOCIATE_RJ, ABORT):
                closed, _, waited = wait_closed(sock, _silence_bound())
                return None if closed else f"not closed {waited:.1f} s after a reject"
            if head[0] != ASSOCIATE_AC:
                return f"answered PDU type {head[0]:#x} to an A-ASSOCIATE-RQ"
            # Accepted: take the rest of the AC, then release.
            closed, _, waited = _release_raw(sock)
            return None if closed else \
                f"accepted association not closed {waited:.1f} s after release"
        finally:
            sock.close()
    return run


def _release_raw(sock: socket.socket):
    try:
        sock.sendall(pdu(0x05, bytes(4)))
    except OSError:
        return True, b"", 0.0
    return wait_closed(sock, _silence_bound())


def _pdu_cases(seed: int) -> list[PduCase]:
    rng = random.Random(f"{seed}:pdu")
    cases: list[PduCase] = []

    def add(detail, run, uids=()):
        cases.append(PduCase(f"pdu-{len(cases):04d}", detail, run, list(uids)))

    # Before any association.
    for n in (1, 5, 6, 100, 4096, 70000):
        junk = bytes(rng.getrandbits(8) for _ in range(n))
        add(f"{n} random bytes", _send_then_expect_end(junk))
    add("nothing at all (connect, then silence)", _send_then_expect_end(b""))
    add("3 bytes of a PDU header, then silence", _send_then_expect_end(b"\x01\x00\x00"))
    add("A-ASSOCIATE-RQ claiming 1000 bytes, 100 sent, then silence",
        _send_then_expect_end(pdu(0x01, bytes(100), length=1000)))
    add("A-ASSOCIATE-RQ of length 0xFFFFFFFF, then silence",
        _send_then_expect_end(pdu(0x01, bytes(10), length=0xFFFFFFFF)))
    add("A-ASSOCIATE-RQ of length 0", _send_then_expect_end(pdu(0x01, b"")))
    for kind in (0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x7F, 0xFF):
        add(f"PDU type {kind:#04x} before any association",
            _send_then_expect_end(pdu(kind, bytes(4 if kind != 0x04 else 12))))
    add("two A-ASSOCIATE-RQs back to back", _rq_case(_rq() + _rq()))
    for detail, data in _rq_item_cases():
        add(f"A-ASSOCIATE-RQ: {detail}", _rq_case(data))

    # Inside an association.
    def silent(assoc, case):
        closed, _, waited = wait_closed(assoc.sock, _silence_bound())
        return None if closed else f"idle association kept {waited:.1f} s"
    add("association, then silence", _associate_then(silent))

    def half_pdu(length):
        def script(assoc, case):
            assoc.send(pdu(0x04, bytes(100), length=length))
            closed, _, waited = wait_closed(assoc.sock, _silence_bound())
            return None if closed else f"kept {waited:.1f} s waiting for the rest of a PDU"
        return script
    add("P-DATA claiming 16 KiB, 100 bytes sent, then silence", _associate_then(half_pdu(16384)))
    add("P-DATA claiming 60 MiB, 100 bytes sent, then silence", _associate_then(half_pdu(60 << 20)))
    add("P-DATA of length 0xFFFFFFFF", _associate_then(half_pdu(0xFFFFFFFF)))

    def store_then(after):
        uid = fresh_uid(seed, "pdu-store", len(cases))

        def script(assoc, case):
            cx, data = _store_head(assoc, uid)
            return after(assoc, cx, data, case, uid)
        return script, uid

    def then_silence(assoc, cx, data, case, uid):
        closed, _, waited = wait_closed(assoc.sock, _silence_bound())
        return None if closed else f"half-received C-STORE kept {waited:.1f} s"

    def then_abort(assoc, cx, data, case, uid):
        assoc.abort()
        return None

    def then_reset(assoc, cx, data, case, uid):
        assoc.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assoc.close()
        return None

    def then_release(assoc, cx, data, case, uid):
        assoc.send(pdu(0x05, bytes(4)))
        return _answered_then_closed(assoc)

    def then_another_command(assoc, cx, data, case, uid):
        assoc.send_message(cx, store_command(corpus.US_IMAGE, "1.2.3.4", assoc.next_id()), data)
        return _answered_then_closed(assoc)

    def then_garbage_pdu(assoc, cx, data, case, uid):
        assoc.send(bytes(rng.getrandbits(8) for _ in range(64)))
        return _answered_then_closed(assoc)

    def then_other_context(assoc, cx, data, case, uid):
        other = assoc.context(*ECHO_CX)
        rest = data[len(data) // 2:]
        assoc.send(struct.pack(">BBLLBB", P_DATA, 0, len(rest) + 6, len(rest) + 2, other, 0x02)
                   + rest)
        return _answered_then_closed(assoc, case, (uid, data))

    def then_associate_rq(assoc, cx, data, case, uid):
        assoc.send(_rq())
        return _answered_then_closed(assoc)

    for detail, after in [("silence", then_silence), ("A-ABORT", then_abort),
                          ("a TCP reset", then_reset), ("A-RELEASE-RQ", then_release),
                          ("another C-STORE command", then_another_command),
                          ("64 random bytes", then_garbage_pdu),
                          ("the rest on another context", then_other_context),
                          ("an A-ASSOCIATE-RQ", then_associate_rq)]:
        script, uid = store_then(after)
        add(f"half a C-STORE data set, then {detail}", _associate_then(script), [uid])

    def raw_pdv(payload: bytes, item_length: int | None = None, cx: int | None = None,
                control: int = 0x03):
        def script(assoc, case):
            c = cx if cx is not None else assoc.context(*ECHO_CX)
            n = len(payload) + 2 if item_length is None else item_length
            body = struct.pack(">LBB", n, c, control) + payload
            assoc.send(pdu(0x04, body))
            return _answered_then_closed(assoc)
        return script

    add("PDV item length 0", _associate_then(raw_pdv(b"", item_length=0)))
    add("PDV item length 1", _associate_then(raw_pdv(b"", item_length=1)))
    add("PDV on context ID 255 (never proposed)",
        _associate_then(raw_pdv(corpus.Enc(True, True).element(0, "UL", bytes(4)), cx=255)))
    add("a command set of random bytes",
        _associate_then(raw_pdv(bytes(rng.getrandbits(8) for _ in range(40)))))
    add("a command with CommandField 0x0FFF",
        _associate_then(raw_pdv(command([(0x00000002, ui_(VERIFICATION)), (0x00000100, us_(0x0FFF)),
                                          (0x00000110, us_(1)), (0x00000800, us_(0x0101))]))))
    add("a C-ECHO command without its Message ID",
        _associate_then(raw_pdv(command([(0x00000002, ui_(VERIFICATION)),
                                          (0x00000100, us_(0x0030)), (0x00000800, us_(0x0101))]))))
    add("a command set whose group length lies",
        _associate_then(raw_pdv(struct.pack("<HHLL", 0, 0, 4, 0xFFFFFF) + bytes(20))))
    add("a data set fragment before any command",
        _associate_then(raw_pdv(b"\x08\x00\x18\x00UI\x04\x001.2\0", control=0x02)))

    def store_without_dataset(assoc, case):
        cx = assoc.context(*US_RGB_CX)
        cmd = command([(0x00000002, ui_(corpus.US_IMAGE)), (0x00000100, us_(0x0001)),
                       (0x00000110, us_(assoc.next_id())), (0x00000700, us_(0)),
                       (0x00000800, us_(0x0101)), (0x00001000, ui_("1.2.3.4.5"))])
        assoc.send_message(cx, cmd)
        try:
            rsp = assoc.read_response()
        except Ended:
            return None
        if rsp.status == SUCCESS:
            return "a C-STORE without a data set answered Success"
        if rsp.status in BUG_STATUSES:
            return (f"a C-STORE without a data set answered {rsp.status:#06x} "
                    f"({BUG_STATUSES[rsp.status]})")
        return None
    add("a C-STORE command that says it has no data set", _associate_then(store_without_dataset))
    for kind in (0x01, 0x02, 0x06, 0x08, 0xFF):
        add(f"PDU type {kind:#04x} inside an association",
            _associate_then(lambda assoc, case, kind=kind: (
                assoc.send(pdu(kind, _rq()[6:] if kind == 0x01 else bytes(4))),
                _answered_then_closed(assoc))[1]))
    return cases


def test_raw_pdus(h):
    cases = _pdu_cases(SEED)
    started = time.monotonic()

    def one(case: PduCase) -> tuple[PduCase, str | None]:
        try:
            return case, case.run(h, case)
        except (OSError, Ended, NoAnswer) as e:
            return case, f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        for case, problem in pool.map(one, cases):
            for uid in case.uids:
                if uid in case.acked:
                    h.record(uid, case.name, case.detail, ts=EXPLICIT_LE, data=case.acked[uid],
                             sop_class=corpus.US_IMAGE, stored=True)
                else:
                    h.refused.setdefault(uid, case.name)
            if problem:
                h.fail(case.name, f"{problem}: {case.detail}")
    elapsed = time.monotonic() - started
    h.alive("raw PDUs")
    # The server still works: an echo, a store.
    assoc = connect(h.daemon.dicom_port, [ECHO_CX])
    assert assoc.echo() == SUCCESS
    assoc.release()
    h.valid_still_stores("pdu")
    h.check_whole()
    h.check_archive("after the raw PDUs")
    print(f"\nraw PDUs: {len(cases)} connections, {elapsed:.1f} s")
    h.report("raw PDUs")
