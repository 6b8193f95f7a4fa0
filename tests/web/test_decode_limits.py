"""A stored object whose pixel attributes announce a giant frame is not decoded.

Compressed pixel data cannot be counted at ingest, so a 2 KB RLE object announcing
65535 x 65535 RGB is stored; before this limit each thumbnail, rendered image, frame
or transcoded copy of it made the daemon allocate about 12 GB for 15-20 s (found by
tests/fuzz). Now they are 406 at once, and real compressed images still decode.
"""

from __future__ import annotations

import http.client
import json
import struct
import time

import pytest

from tests.fuzz import corpus
from tests.fuzz.rawdicom import Association
from tests.support import Daemon, base_config


def _store(port: int, seed_name: str, rows: int, columns: int) -> str:
    seed = next(s for s in corpus.seeds() if s.name == seed_name)
    uid = corpus.fresh_uid("decode-limits", seed_name, rows, columns)
    data, elements = corpus.with_uid(seed, uid)
    enc = corpus.Enc.of(seed.ts)
    for tag, value in ((corpus.COLUMNS, columns), (corpus.ROWS, rows)):
        el = corpus.find(elements, tag)
        data = corpus.splice(data, el, enc.element(tag, "US", struct.pack("<H", value)))
        elements = corpus.judge(data, seed.ts, "").elements
    assoc = Association(port, [(seed.sop_class, seed.ts)])
    assert assoc.store(seed.sop_class, uid, seed.ts, data).status == 0x0000
    assoc.release()
    return uid


def _get(port: int, path: str, accept: str) -> tuple[int, bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.monotonic()
    conn.request("GET", path, headers={"Accept": accept})
    rsp = conn.getresponse()
    body = rsp.read()
    conn.close()
    return rsp.status, body, time.monotonic() - started


def _url(port: int, uid: str) -> str:
    status, body, _ = _get(port, f"/dicom-web/instances?SOPInstanceUID={uid}", "application/json")
    row = json.loads(body)[0]
    return (f"/dicom-web/studies/{row['0020000D']['Value'][0]}/series/"
            f"{row['0020000E']['Value'][0]}/instances/{uid}")


READS = [("/thumbnail", "image/png"), ("/rendered", "image/jpeg"),
         ("/frames/1", 'multipart/related; type="application/octet-stream"'),
         ("", 'multipart/related; type="application/dicom"')]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A daemon holding a giant-announcing RLE object and a normal one: (daemon, urls)."""
    root = tmp_path_factory.mktemp("decode-limits")
    daemon = Daemon(root, base_config(root)).start()
    urls = {size: _url(daemon.http_port, _store(daemon.dicom_port, "SC_rle_2frame", size, size))
            for size in (65535, 100)}
    yield daemon, urls
    daemon.stop()


@pytest.mark.parametrize("path,accept", READS)
def test_a_giant_announced_frame_is_not_decoded(stored, path, accept):
    daemon, urls = stored
    status, body, took = _get(daemon.http_port, urls[65535] + path, accept)
    assert status == 406, (status, body[:200])
    assert b"a decoded frame would take 12884508675 bytes" in body
    assert took < 5


@pytest.mark.parametrize("path,accept", READS)
def test_real_compressed_frames_still_decode(stored, path, accept):
    daemon, urls = stored
    status, body, _ = _get(daemon.http_port, urls[100] + path, accept)
    assert status == 200, (status, body[:200])
