"""Peers that break the protocol, one named case each (found by tests/fuzz): the real
daemon, a raw socket (tests.fuzz.rawdicom). Every request gets an answer or the
connection is closed in bounded time; nothing an exception in our handlers."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.fuzz import corpus
from tests.fuzz.rawdicom import (
    VERIFICATION, Association, command, item, n_create_command, n_set_command, pdu, ui, uid_item,
    us, user_info, wait_closed,
)
from tests.worklist.helpers import MPPS, start_wl_daemon

SCP_TIMEOUT = 2


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    daemon = start_wl_daemon(tmp_path_factory.mktemp("hostile"), DicomScpTimeout=SCP_TIMEOUT)
    yield daemon
    daemon.stop()


def _handler_exceptions(daemon) -> list[str]:
    return [line for line in daemon.log().splitlines() if "Exception in the handler" in line]


def test_mpps_lists_pydicom_cannot_decode_fail_alone(d):
    """An N-CREATE/N-SET whose list pydicom cannot decode (nesting deeper than its
    recursion, a character set that is not a codec name) gets 0x0110 "... not
    decodable", the association goes on, and no handler raised."""
    enc = corpus.Enc(False, True)
    deep = corpus._nested(enc, 600, defined=False)
    bad_charset = enc.element(0x00080005, "CS", b"ISO_IR\x00192 ")
    assoc = Association(d.dicom_port, [(MPPS, ExplicitVRLittleEndian)])
    cx = assoc.context(MPPS, ExplicitVRLittleEndian)
    uid = corpus.fresh_uid("hostile-mpps")
    for data in (deep, bad_charset):
        assoc.send_message(cx, n_create_command(MPPS, uid, assoc.next_id()), data)
        rsp = assoc.read_response()
        assert (rsp.status, rsp.comment) == (0x0110, "attribute list not decodable")
    assoc.send_message(cx, n_set_command(MPPS, uid, assoc.next_id()), deep)
    rsp = assoc.read_response()
    assert (rsp.status, rsp.comment) == (0x0110, "modification list not decodable")
    # The association goes on: a valid N-CREATE of the same instance is created.
    valid = corpus.encode(corpus._mpps_create(random.Random(1)), ExplicitVRLittleEndian)
    assoc.send_message(cx, n_create_command(MPPS, uid, assoc.next_id()), valid)
    assert assoc.read_response().status == 0x0000
    assoc.release()
    assert d.rows("SELECT count(*) FROM mpps WHERE sop_instance_uid = ?", (uid,)) == [(1,)]
    assert _handler_exceptions(d) == []


def test_cstore_without_a_data_set_cannot_be_understood(d):
    """A C-STORE-RQ whose Command Data Set Type says "no data set" (0x0101) is answered
    0xC000, not a Processing Failure of ours."""
    assoc = Association(d.dicom_port, [(corpus.US_IMAGE, ExplicitVRLittleEndian)])
    cx = assoc.context(corpus.US_IMAGE, ExplicitVRLittleEndian)
    cmd = command([(0x00000002, ui(corpus.US_IMAGE)), (0x00000100, us(0x0001)),
                   (0x00000110, us(1)), (0x00000700, us(0)), (0x00000800, us(0x0101)),
                   (0x00001000, ui("1.2.3.4.5"))])
    assoc.send_message(cx, cmd)
    rsp = assoc.read_response()
    assert rsp.status == 0xC000, hex(rsp.status)
    assert rsp.comment == "C-STORE request without a data set"
    assoc.release()
    assert d.rows("SELECT count(*) FROM instances") == [(0,)]


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


@pytest.mark.parametrize("data", [b"\x01\x00\x00", pdu(0x01, bytes(100), length=1000),
                                  pdu(0x02, bytes(4))[:5]],
                         ids=["3 bytes of a PDU header", "an A-ASSOCIATE-RQ cut short",
                              "5 bytes of an A-ASSOCIATE-AC"])
def test_part_of_a_pdu_then_silence_is_dropped_after_artim(d, data):
    """Before any association, part of a PDU and then nothing: the connection is closed
    once ARTIM (DicomScpTimeout) runs out, not kept for ever by a blocked reader."""
    sock = _connect(d.dicom_port)
    sock.sendall(data)
    closed, _, waited = wait_closed(sock, SCP_TIMEOUT + 4)
    sock.close()
    assert closed, f"still open after {waited:.1f} s"


def test_unknown_pdu_type_is_refused_at_once(d):
    """A PDU type PS3.8 does not define is refused without waiting for the body its
    length announces."""
    sock = _connect(d.dicom_port)
    sock.sendall(pdu(0x08, b"", length=1 << 30))
    started = time.monotonic()
    closed, received, _ = wait_closed(sock, SCP_TIMEOUT + 4)
    sock.close()
    assert received[:1] == b"\x07"  # A-ABORT
    assert closed and time.monotonic() - started < SCP_TIMEOUT + 1


def test_oversized_associate_rq_is_refused_at_once(d):
    """An A-ASSOCIATE-RQ announcing more than 1 MiB is refused (A-ABORT) before the
    server buffers it."""
    sock = _connect(d.dicom_port)
    sock.sendall(pdu(0x01, bytes(64), length=48 << 20))
    closed, received, _ = wait_closed(sock, SCP_TIMEOUT + 4)
    sock.close()
    assert received[:1] == b"\x07" and closed


def test_undecodable_command_set_aborts_without_a_traceback(d):
    """A P-DATA-TF whose command set is not a command: A-ABORT, one log line."""
    assoc = Association(d.dicom_port, [(VERIFICATION, ImplicitVRLittleEndian)])
    cx = assoc.context(VERIFICATION, ImplicitVRLittleEndian)
    garbage = struct.pack("<HHL", 0x0000, 0x0001, 4) + b"junk"  # no Command Field
    assoc.send(pdu(0x04, struct.pack(">LBB", len(garbage) + 2, cx, 0x03) + garbage))
    closed, received, _ = wait_closed(assoc.sock, SCP_TIMEOUT + 4)
    assoc.close()
    assert received[:1] == b"\x07" and closed
    log = d.log()
    assert "undecodable DIMSE message in a P-DATA-TF PDU" in log
    assert "Exception in DUL.run()" not in log


# The fast path's (FastAssociation.run_reactor): stock pynetdicom, which runs no code
# of ours, still leaves such a connection open (PACS_APPLIANCE_STOCK_PYNETDICOM=1 is a
# fallback, with pynetdicom's own behaviour for hostile peers).
@pytest.mark.fast_path_only
def test_malformed_associate_rq_is_closed_and_the_daemon_still_stops(make_daemon):
    """A presentation context without an abstract syntax made pynetdicom's acceptor
    thread raise: the connection stayed open for ever and SIGTERM could not stop the
    daemon. Now the association is aborted and the daemon stops as usual."""
    daemon = make_daemon(DicomScpTimeout=SCP_TIMEOUT)
    broken = item(0x20, bytes([1, 0, 0, 0]) + uid_item(0x40, ImplicitVRLittleEndian))
    body = (struct.pack(">HH", 1, 0) + b"ORTHANC".ljust(16) + b"RAWSCU".ljust(16) + bytes(32)
            + uid_item(0x10, "1.2.840.10008.3.1.1.1") + broken + user_info())
    socks = [_connect(daemon.dicom_port) for _ in range(3)]
    for sock in socks:
        sock.sendall(pdu(0x01, body))
    for sock in socks:
        closed, received, waited = wait_closed(sock, SCP_TIMEOUT + 4)
        sock.close()
        assert closed, f"still open after {waited:.1f} s"
        assert received[:1] == b"\x07"  # A-ABORT
    assoc = Association(daemon.dicom_port, [(VERIFICATION, ImplicitVRLittleEndian)])
    assert assoc.echo() == 0x0000
    assoc.release()
    started = time.monotonic()
    assert daemon.stop(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert "association ended: pynetdicom could not process the peer's request" in daemon.log()
