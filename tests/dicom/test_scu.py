"""Outbound associations (appliance.dicom.scu) opened from inside the running daemon,
through Orthanc's ``POST /modalities/{name}/echo``, while an association the daemon
accepted (on its fast path, or stock: tests/dicom/conftest.py) stays open.

The peer is pynetdicom's own SCP in the test process, on a port the OS chose: it
must see an ordinary association (requested with the daemon's AE title and
pynetdicom's implementation, one C-ECHO, released), and the daemon must log no
warning or error for it.
"""

from __future__ import annotations

import re
import socket
import threading

import pytest
import requests
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, evt
from pynetdicom.sop_class import Verification
from pynetdicom.status import Status

from tests.worklist.helpers import poll


@pytest.fixture
def peer():
    """A Verification SCP ("PEERSCP") recording what each association did."""
    seen: list[tuple] = []
    lock = threading.Lock()

    def record(*what) -> None:
        with lock:
            seen.append(what)

    def on_requested(event) -> None:
        rq = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ
        record("requested", rq.calling_ae_title, rq.called_ae_title,
               rq.implementation_class_uid)

    def on_echo(event) -> int:
        record("C-ECHO")
        return Status.SUCCESS

    ae = AE(ae_title="PEERSCP")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_REQUESTED, on_requested), (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_RELEASED, lambda event: record("released")),
        (evt.EVT_ABORTED, lambda event: record("aborted"))])
    yield server.server_address[1], seen
    server.shutdown()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo(daemon, name: str, **kw) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{daemon.http_port}/modalities/{name}/echo",
                         timeout=30, **kw)


def test_echo_from_inside_the_daemon_is_an_ordinary_association(make_daemon, peer):
    port, seen = peer
    d = make_daemon(DicomModalities={"peer": ["PEERSCP", "127.0.0.1", port]})
    held = AE(ae_title="HOLDER")
    held.add_requested_context(Verification)
    accepted = held.associate("127.0.0.1", d.dicom_port, ae_title="ORTHANC")
    assert accepted.is_established
    logged = len(d.log())
    try:
        assert accepted.send_c_echo().Status == Status.SUCCESS
        first = echo(d, "peer")
        second = echo(d, "peer", json={"Timeout": 5})  # Orthanc's optional body
        assert accepted.send_c_echo().Status == Status.SUCCESS
    finally:
        accepted.release()
    assert (first.status_code, first.json()) == (200, {})
    assert (second.status_code, second.json()) == (200, {})
    poll(lambda: len(seen) == 6)
    normal = [("requested", "ORTHANC", "PEERSCP", PYNETDICOM_IMPLEMENTATION_UID),
              ("C-ECHO",), ("released",)]
    assert seen == normal * 2
    new = d.log()[logged:]
    assert len(re.findall(r"C-ECHO to peer \(PEERSCP at 127\.0\.0\.1:\d+\): success", new)) == 2
    assert not re.search(r" (WARNING|ERROR|CRITICAL) ", new), new


@pytest.mark.fast_path_only
def test_echo_failures_answer_as_orthanc(make_daemon):
    d = make_daemon(DicomModalities={"down": ["NOBODY", "127.0.0.1", closed_port()]})
    refused = echo(d, "down", json={"Timeout": 3})
    assert refused.status_code == 500 and "down" in refused.json()["Message"]
    assert echo(d, "no-such-modality").status_code == 404
    assert echo(d, "down", data=b"{not json").status_code == 400
    assert echo(d, "down", json=[]).status_code == 400
    assert echo(d, "down", json={"Timeout": "5"}).status_code == 400
    assert echo(d, "down", json={"CheckFind": True}).status_code == 400
    assert re.search(r"WARNING appliance\.dicom\.scu: C-ECHO to down \(NOBODY at 127\.0\.0\.1:\d+\): "
                     r"cannot connect to 127\.0\.0\.1:\d+: no TCP connection", d.log())
