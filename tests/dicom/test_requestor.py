"""A requestor's response is never taken by pynetdicom's reactor thread
(appliance.dicom.requestor): the soak's silent association, made deterministic.

The race needs three threads to be scheduled in one order that a busy machine
produces now and then: the reactor slow to come out of its checkpoint after
the previous response (so the stale ``_is_paused`` lets the next request go),
then polling its queue just as the response lands, while the sending thread
is slower to look for it. Here the association's reactor is made to do exactly
that (its checkpoint's wait returns late, its non-blocking poll waits a while
for a message, the sender looks 0.1 s late), which only changes timing that
threads may have anyway.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from appliance.dicom.requestor import ReactorGate, pause_reactor
from tests.support import pydicom_file
from tests.worklist.helpers import poll

pytestmark = pytest.mark.fast_path_only   # the client's race: the daemon's mode plays no part

DIMSE_TIMEOUT = 2.0


def _unlucky_scheduling(assoc) -> None:
    """Make the association's threads take the order that loses a response."""
    reactor = assoc  # the association object is the reactor thread
    checkpoint_wait = assoc._reactor_checkpoint.wait

    def late_wait(*args, _wait=checkpoint_wait, **kwargs):
        result = _wait(*args, **kwargs)
        if threading.current_thread() is reactor:
            time.sleep(0.05)          # descheduled before it says it runs again
        return result

    dimse = assoc.dimse
    get_msg = dimse.get_msg

    def get(block=False, _get=get_msg):
        if threading.current_thread() is reactor and not block:
            try:                      # polling at the instant the response lands
                return dimse.msg_queue.get(timeout=1.0)   # (a slow daemon still answers in it)
            except queue.Empty:
                return None, None
        if block:
            time.sleep(0.1)           # the sender looks for it a little later
        return _get(block)

    dimse.get_msg = get
    assoc._reactor_checkpoint.wait = late_wait


def _store(daemon, *, pause: bool) -> list:
    """Three C-STOREs over one association under the unlucky scheduling; their statuses."""
    ds = dcmread(pydicom_file("CT_small.dcm"))
    ae = AE(ae_title="RACE")
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    ae.dimse_timeout = DIMSE_TIMEOUT
    assoc = ae.associate("127.0.0.1", daemon.dicom_port, ae_title="ORTHANC")
    assert assoc.is_established
    if pause:
        # Swap in the gate first, so that the late wait wraps the gate's.
        assoc._reactor_checkpoint = ReactorGate()
    _unlucky_scheduling(assoc)
    statuses = []
    try:
        for _ in range(3):
            ds.SOPInstanceUID = generate_uid()
            if pause:
                assert pause_reactor(assoc)
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if "Status" in rsp else None)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def test_paused_requestor_gets_every_response(daemon):
    assert _store(daemon, pause=True) == [0x0000] * 3


def test_the_trigger_loses_a_response_without_the_pause(daemon):
    """The trigger is real: pynetdicom's own pause loses a response under it (if this
    ever passes, the scheduling above no longer reproduces the race and the test
    above proves nothing)."""
    statuses = _store(daemon, pause=False)
    assert None in statuses, statuses


def test_pause_refuses_an_association_the_peer_aborted_while_the_reactor_slept():
    """The peer aborts between two requests, and the reactor is parked before it has
    looked: pause_reactor says so (nothing is sent to wait out the DIMSE timeout) and
    lets the reactor go, which ends the association."""
    accepted = []
    scp = AE(ae_title="PEER")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_ESTABLISHED, lambda e: accepted.append(e.assoc))])
    try:
        ae = AE(ae_title="RACE")
        ae.add_requested_context(Verification)
        ae.dimse_timeout = DIMSE_TIMEOUT
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="PEER")
        assert assoc.is_established
        assert pause_reactor(assoc)
        assert assoc.send_c_echo().Status == 0x0000
        # As a busy machine may order it: the reactor parked before the A-ABORT comes.
        assert assoc._reactor_checkpoint.shut_and_park(5.0)
        accepted[0].abort()
        poll(lambda: assoc.acse.is_aborted(), timeout=5)
        assert assoc.is_established          # pynetdicom has not noticed yet
        assert pause_reactor(assoc) is False
        poll(lambda: assoc.is_aborted and not assoc.is_established, timeout=5)
    finally:
        server.shutdown()
