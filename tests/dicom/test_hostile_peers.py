"""Peers that break the protocol, one named case each (found by tests/fuzz): the real
daemon, a raw socket (tests.fuzz.rawdicom). Every request gets an answer or the
connection is closed in bounded time; nothing an exception in our handlers."""

from __future__ import annotations

import random
import socket
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.fuzz import corpus
from tests.fuzz.rawdicom import (
    VERIFICATION, Association, command, n_create_command, n_set_command, ui, us, wait_closed,
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
